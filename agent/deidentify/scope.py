"""Scope: which instances a profile takes at all, decided from the header before any other work.

An instance outside the scope is *excluded*: never sent and never quarantined, only counted and
recorded. That is not a failure to close: nothing of it leaves, and nobody has to look at it.
Two things put an instance outside: a SOP class the profile does not accept (`out_of_scope`),
and a rule of the manifest's `exclude:` list that its header matches (`excluded_by_rule`), for
objects that come in an accepted class but are not what the programme collects (a dose screen
capture that GE stores as a CT image). A SOP Class UID that is missing or is not a UID at all is
damage, not scope: that instance is refused by the gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from agent.errors import ProfileError
from agent.quarantine import Reason, Refusal

#: A matched value is cut to this many characters first: rules look at descriptors, and a hostile
#: 10 MB value must not cost a regular expression its length.
_MATCHED_CHARACTERS = 1024
_MATCHED_VALUES = 64  # and only so many values of a multi-valued attribute
#: A value longer than this is not decoded to be matched: scope is decided before the limits are
#: checked, and decoding a hostile 10 MB value (or splitting it into a million values) costs what
#: the limits are there to bound.
_MATCHED_RAW_BYTES = 65_536
_RULE_KEYS = {"attribute", "pattern"}
_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)?$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


@dataclass(frozen=True)
class ExclusionRule:
    """`exclude:` in a manifest: an attribute, and a pattern searched in each of its values."""

    tag: int
    pattern: re.Pattern[str]

    @property
    def name(self) -> str:
        """How a record names the rule: the attribute and the pattern as the profile wrote them
        (never the value that matched, which may be anything the sender typed)."""
        keyword = keyword_for_tag(self.tag) or f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"
        return f"{keyword} ~ {self.pattern.pattern}"

    def matches(self, ds: Dataset) -> bool:
        raw = ds.get_item(self.tag) if self.tag in ds else None
        if raw is None or (getattr(raw, "length", 0) or 0) > _MATCHED_RAW_BYTES:
            return False  # absent, or too long for a descriptor: not decoded here (the limits refuse it)
        element = ds.get(self.tag)
        if element is None or element.VR == "SQ":
            return False
        values = element.value if isinstance(element.value, (list, MultiValue)) else [element.value]
        return any(self.pattern.search(str(v)[:_MATCHED_CHARACTERS]) for v in values[:_MATCHED_VALUES]
                   if v is not None)


def parse_rules(value: Any, manifest: Path) -> tuple[ExclusionRule, ...]:
    """The manifest's `exclude:` list; every problem names the file, the key and the rule."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProfileError(f"{manifest}: exclude: a list of rules, each with keys attribute and pattern")
    return tuple(_rule(item, f"exclude[{index}]", manifest) for index, item in enumerate(value))


def _rule(item: Any, where: str, manifest: Path) -> ExclusionRule:
    if not isinstance(item, dict) or set(item) != _RULE_KEYS:
        raise ProfileError(f"{manifest}: {where}: a mapping with exactly the keys attribute and pattern")
    attribute, pattern = str(item["attribute"]).strip(), item["pattern"]
    tag = _tag(attribute)
    if tag is None:
        raise ProfileError(f"{manifest}: {where}.attribute: {attribute!r} is not a keyword pydicom knows or a tag (gggg,eeee)")
    try:
        if dictionary_VR(tag) == "SQ":
            raise ProfileError(f"{manifest}: {where}.attribute: {attribute} is a sequence; rules match values")
    except KeyError:
        pass  # a private or unknown tag: matched on whatever value it holds
    if not isinstance(pattern, str) or not pattern:
        raise ProfileError(f"{manifest}: {where}.pattern: a regular expression (a non-empty string)")
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ProfileError(f"{manifest}: {where}.pattern: not a valid regular expression ({exc.msg})") from None
    return ExclusionRule(tag, compiled)


def _tag(attribute: str) -> int | None:
    match = _TAG.match(attribute)
    if match:
        return int(match.group(1), 16) << 16 | int(match.group(2), 16)
    return tag_for_keyword(attribute)


def exclusion(ds: Dataset, sop_classes: frozenset[str], rules: tuple[ExclusionRule, ...],
              profile_name: str) -> Refusal | None:
    """Why `ds` is outside the profile's scope, or None when it is inside (or damaged: the gate's)."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if not _UID.match(sop_class):
        return None  # no class to judge by: refused by the gate as unknown_sop_class
    if sop_class not in sop_classes:
        return Refusal(Reason.OUT_OF_SCOPE, f"SOP class {sop_class} is not accepted by profile {profile_name}")
    for index, rule in enumerate(rules):
        if rule.matches(ds):
            return Refusal(Reason.EXCLUDED_BY_RULE, f"exclude[{index}]: {rule.name}")
    return None
