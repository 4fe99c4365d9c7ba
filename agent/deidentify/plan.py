"""A profile's recipes compiled once into a lookup from attribute to action.

deid parses the recipe language; this module turns the parsed lines into a `Plan` that answers,
for any attribute at any depth, which action applies, in O(1) for public tags. Pure: no files,
no keys, no clock. See profiles/README.md for the language and the precedence rules.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from pydicom.datadict import tag_for_keyword


class Op(enum.Enum):
    """What happens to an attribute; the PS3.15 action code it implements in brackets."""

    REMOVE = "remove"  # X
    BLANK = "blank"  # Z
    KEEP = "keep"  # K
    DUMMY = "dummy"  # D
    UID = "uid"  # U
    CLEAN = "clean"  # C
    SHIFT = "shift"  # C for dates (Retain Longitudinal Temporal Information, Modified Dates)
    VOCABULARY = "vocabulary"  # C for short descriptors: only imaging vocabulary survives
    PATIENT_PSEUDONYM = "patient_pseudonym"
    ACCESSION_PSEUDONYM = "accession_pseudonym"
    LITERAL = "literal"


_FUNCS = {
    "func:dummy": Op.DUMMY,
    "func:uid": Op.UID,
    "func:clean": Op.CLEAN,
    "func:vocabulary": Op.VOCABULARY,
    "func:shift_date": Op.SHIFT,
    "func:patient_pseudonym": Op.PATIENT_PSEUDONYM,
    "func:accession_pseudonym": Op.ACCESSION_PSEUDONYM,
}


@dataclass(frozen=True)
class Action:
    """One compiled recipe line: the operation, its literal value if any, and where it came from."""

    op: Op
    source: str
    value: str | None = None

    @property
    def label(self) -> str:
        """Short text for reports, e.g. `remove [deid.basic]`."""
        shown = self.op.value if self.op is not Op.LITERAL else f"set '{self.value}'"
        return f"{shown} [{self.source}]"


class RecipeLineError(ValueError):
    """A recipe line the compiler cannot use; the message says which and why."""


_EXACT = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$", re.I)
_MASK = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$", re.I)
_PRIVATE = re.compile(r'^\(([0-9A-F]{4}),"(.*)",([0-9A-F]{2})\)$', re.I)
_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_SELECT_VR = re.compile(r"^select:VR:([A-Z]{2})$", re.I)


@dataclass
class Plan:
    """The compiled profile: where each kind of field lives and how specific it is."""

    exact: dict[int, Action] = field(default_factory=dict)
    private_by_creator: dict[tuple[int, str, int], Action] = field(default_factory=dict)
    masks: list[tuple[int, int, Action]] = field(default_factory=list)
    private_default: Action | None = None
    by_vr: dict[str, Action] = field(default_factory=dict)
    additions: list[tuple[int, str, Action]] = field(default_factory=list)
    kept_blocks: frozenset[tuple[int, str]] = frozenset()

    def public_action(self, tag: int) -> Action | None:
        """The action for a public (even group) tag, or None when the profile does not name it."""
        action = self.exact.get(tag)
        if action is not None:
            return action
        for mask, value, masked in self.masks:
            if tag & mask == value:
                return masked
        return None

    def vr_action(self, vr: str) -> Action | None:
        """The action of a `select:VR:..` line, for an attribute no more specific line names."""
        return self.by_vr.get(vr)

    def private_action(self, tag: int, creator: str | None) -> Action | None:
        """The action for a private element, given its block's private creator (None if missing)."""
        action = self.exact.get(tag)
        if action is not None:
            return action
        if creator is not None:
            action = self.private_by_creator.get((tag >> 16, creator.strip(), tag & 0xFF))
            if action is not None:
                return action
        for mask, value, masked in self.masks:
            if tag & mask == value:
                return masked
        return self.private_default

    def keeps_private_block(self, group: int, creator: str) -> bool:
        """Whether any element of this private block can survive, so its creator must stay."""
        if self.private_default is not None and self.private_default.op is not Op.REMOVE:
            return True
        return (group, creator.strip()) in self.kept_blocks


def _parse_field(text: str) -> tuple[str, object]:
    """Classify a recipe field: ('exact', tag), ('private', key), ('mask', (mask, value)) or ('all_private', None)."""
    if text.lower() == "private":
        return "all_private", None
    if m := _SELECT_VR.match(text):
        return "vr", m[1].upper()
    if m := _EXACT.match(text):
        return "exact", int(m[1] + m[2], 16)
    if m := _PRIVATE.match(text):
        return "private", (int(m[1], 16), m[2].strip(), int(m[3], 16))
    if m := _MASK.match(text):
        digits = (m[1] + m[2]).upper()
        mask = int("".join("0" if c == "X" else "F" for c in digits), 16)
        value = int(digits.replace("X", "0"), 16)
        return "mask", (mask, value)
    if _KEYWORD.match(text) and (tag := tag_for_keyword(text)) is not None:
        return "exact", int(tag)
    raise RecipeLineError(
        f"field {text!r} is not a tag; name attributes by tag, e.g. (0010,0010), (60XX,3000),"
        ' (0019,"GEMS_ACQU_01",23), select:VR:PN or private'
    )


def _action(line: Mapping[str, str], source: str) -> Action:
    verb = line["action"].upper()
    value = (line.get("value") or "").strip() or None
    if verb == "REMOVE" and value is None:
        return Action(Op.REMOVE, source)
    if verb == "BLANK":
        return Action(Op.BLANK, source)
    if verb == "KEEP":
        return Action(Op.KEEP, source)
    if verb in ("REPLACE", "ADD") and value is not None:
        if value.startswith("func:"):
            if value not in _FUNCS:
                raise RecipeLineError(f"{verb} {line['field']}: unknown function {value}; known: {', '.join(_FUNCS)}")
            return Action(_FUNCS[value], source)
        return Action(Op.LITERAL, source, value)
    raise RecipeLineError(f"{verb} {line['field']}: not supported here (REMOVE, BLANK, KEEP, REPLACE, ADD are)")


def compile_plan(recipes: Iterable[tuple[str, list[Mapping[str, str]]]]) -> Plan:
    """Compile (source name, parsed header lines) pairs in order; a later line overrides an earlier one."""
    plan = Plan()
    masks: dict[tuple[int, int], Action] = {}
    for source, lines in recipes:
        for line in lines:
            field_text = line["field"]
            try:
                kind, key = _parse_field(field_text)
                action = _action(line, source)
            except RecipeLineError as exc:
                raise RecipeLineError(f"{source}: {exc}") from None
            if line["action"].upper() == "ADD":
                if kind != "exact":
                    raise RecipeLineError(f"{source}: ADD {field_text}: ADD needs a single public tag")
                plan.additions = [a for a in plan.additions if a[0] != key]
                plan.additions.append((key, action.value or "", action))  # type: ignore[arg-type]
                plan.exact[key] = action  # type: ignore[index]
            elif kind == "exact":
                plan.exact[key] = action  # type: ignore[index]
            elif kind == "private":
                plan.private_by_creator[key] = action  # type: ignore[index]
            elif kind == "mask":
                masks[key] = action  # type: ignore[index]
            elif kind == "vr":
                plan.by_vr[key] = action  # type: ignore[index]
            else:
                plan.private_default = action
    # Narrower masks (more fixed bits) first, so (60XX,3000) beats (60XX,XXXX).
    plan.masks = sorted(
        ((mask, value, action) for (mask, value), action in masks.items()),
        key=lambda item: -bin(item[0]).count("1"),
    )
    plan.kept_blocks = frozenset(
        (group, creator) for (group, creator, _), action in plan.private_by_creator.items()
        if action.op is not Op.REMOVE
    )
    return plan
