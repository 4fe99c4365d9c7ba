"""Pixel rules: which rectangles of an image hold burned-in text, decided from its header alone.

The rules are deid's `%filter graylist` sections (its `deid.dicom` library, many from CTP's
per-manufacturer regions, plus a site's own), in deid's recipe language. Only rectangles count:
a graylist rule without coordinates only flags, and whitelist and blacklist rules never make an
instance pass; nothing here decides that an image is clean, it only says where text is known to
be. Conditions are evaluated on the source's top-level header, case-insensitively, as deid does,
except that lines joined by `||` or `+` combine left to right (deid ANDs every line).

`coordinates` and `ctpcoordinates` mask a rectangle (or `all`); `keepcoordinates` takes a
rectangle (or `from:SequenceOfUltrasoundRegions`, each region) back out of the same rule's mask,
so an ultrasound is masked everywhere but its calibrated regions.
"""

from __future__ import annotations

import re
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from agent.errors import ProfileError

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1: columns x0..x1-1, rows y0..y1-1
ALL = "all"
_REGIONS = "SequenceOfUltrasoundRegions"
_TESTS = {"contains", "notcontains", "equals", "notequals", "missing", "present", "empty"}
_PRESENCE_TESTS = {"missing", "present", "empty"}
#: A line deid understands inside a %filter section; deid drops any other line without a word,
#: and a rule that lost its conditions would match every image.
_FILTER_LINE = re.compile(r"^\s*(?:(?:\+|\|\|)\s*)?(?:" + "|".join(sorted(_TESTS)) +
                          r")\s+\S|^\s*(?:ctp)?(?:keep)?coordinates\s+\S|^\s*LABEL\b|^\s*%|^\s*FORMAT\b", re.IGNORECASE)
_MAX_VALUE_CHARS = 1024  # a longer header value is not matched (a hostile value costs nothing)


@dataclass(frozen=True)
class Condition:
    """One test of one attribute (`contains Manufacturer GE`)."""

    test: str
    tag: int | None  # None: a name the dictionary does not know, never present
    pattern: re.Pattern[str] | None
    value: str

    def holds(self, ds: Dataset, seen: _Seen) -> bool:
        key = (self.test, self.tag, self.value)  # the same test in many rules is worked out once
        if key not in seen.results:
            seen.results[key] = self._holds(*seen.values(ds, self.tag))
        return seen.results[key]

    def _holds(self, present: bool, values: list[str]) -> bool:
        if self.test == "missing":
            return not present or not values
        if self.test == "present":
            return present and bool(values)
        if self.test == "empty":
            return present and not any(v.strip() for v in values)
        if self.test in ("contains", "notcontains"):
            assert self.pattern is not None
            found = any(self.pattern.search(v) for v in values)
            return found if self.test == "contains" else not found
        equal = any(v.strip().lower() == self.value.strip().lower() for v in values)
        return equal if self.test == "equals" else not equal


@dataclass(frozen=True)
class Line:
    """A line of a rule: conditions joined by `||` or `+`, and how the line joins the ones before."""

    joiner: str  # "and" | "or" (the first line's is ignored)
    conditions: tuple[Condition, ...]
    operators: tuple[str, ...]  # between the conditions, len(conditions) - 1

    def holds(self, ds: Dataset, seen: _Seen) -> bool:
        return _lazily([partial(c.holds, ds, seen) for c in self.conditions], self.operators)


@dataclass(frozen=True)
class Coordinates:
    """`mask` (coordinates) or keep (keepcoordinates): a rectangle, `all`, or `from:` a sequence."""

    keep: bool
    rect: Rect | None = None
    everything: bool = False
    regions: bool = False


@dataclass(frozen=True)
class RegionRule:
    """One graylist LABEL with rectangles: where its devices burn text in."""

    label: str
    source: str  # the rule file's name, for the report
    lines: tuple[Line, ...]
    coordinates: tuple[Coordinates, ...]
    modalities: frozenset[str] = frozenset()  # the manifest's scope for the rule's file; empty: any

    def matches(self, ds: Dataset, seen: _Seen | None = None) -> bool:
        seen = seen or _Seen()
        if self.modalities and seen.modality(ds) not in self.modalities:
            return False
        if not self.lines:
            return True
        return _lazily([partial(line.holds, ds, seen) for line in self.lines],
                       tuple(line.joiner for line in self.lines[1:]))


class _Seen:
    """One image's attribute values and condition results, worked out once for all the rules
    (a hundred rules ask for Modality and Manufacturer a hundred times)."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, int | None, str], bool] = {}
        self._values: dict[int | None, tuple[bool, list[str]]] = {}

    def values(self, ds: Dataset, tag: int | None) -> tuple[bool, list[str]]:
        if tag not in self._values:
            self._values[tag] = _values(ds, tag)
        return self._values[tag]

    def modality(self, ds: Dataset) -> str:
        present, values = self.values(ds, 0x00080060)
        return values[0].strip().upper() if values else ""


@dataclass(frozen=True)
class RegionMatch:
    """What the rules say of one image: the mask (True = text to cover) and the rules that made it."""

    mask: np.ndarray  # bool, rows x columns
    labels: tuple[str, ...]  # the rules whose rectangles are in the mask
    ignored: tuple[str, ...] = ()  # rules left out because their file would cover the whole image

    @property
    def covers_anything(self) -> bool:
        return bool(self.labels)

    @property
    def boxes(self) -> list[Rect]:
        """The masked area as rectangles, row band by row band (for reports and the preview)."""
        return mask_boxes(self.mask)


def match(ds: Dataset, rules: Iterable[RegionRule], rows: int, columns: int) -> RegionMatch | None:
    """The mask of every rule whose conditions hold; None if none of them covers anything.

    Within one rule file, rules apply in order as deid applies them: `coordinates` cover,
    `keepcoordinates` uncover (so deid's ultrasound file covers everything, then uncovers the
    regions). Files are joined by union, so one file's keep never uncovers another's rectangle.
    A file whose rules would cover the whole image is left out (`ignored`): a black image is of
    no use to anyone, and the image is left to OCR instead.
    """
    masks: dict[str, np.ndarray] = {}
    labels: dict[str, list[str]] = {}
    seen = _Seen()
    for rule in rules:
        if not rule.matches(ds, seen):
            continue
        mask = masks.setdefault(rule.source, np.zeros((rows, columns), dtype=bool))
        for coordinates in rule.coordinates:
            for x0, y0, x1, y1 in _rectangles(ds, coordinates, rows, columns):
                mask[y0:y1, x0:x1] = not coordinates.keep
        labels.setdefault(rule.source, []).append(f"{rule.source}: {rule.label}")
    total = np.zeros((rows, columns), dtype=bool)
    used: list[str] = []
    ignored: list[str] = []
    for source, mask in masks.items():
        if mask.all():
            ignored.extend(labels[source])
        elif mask.any():
            total |= mask
            used.extend(labels[source])
    if not used:
        return RegionMatch(total, (), tuple(ignored)) if ignored else None
    return RegionMatch(total, tuple(used), tuple(ignored))


def mask_boxes(mask: np.ndarray) -> list[Rect]:
    """Cover a boolean mask with rectangles: runs of identical rows, each split into column runs."""
    boxes: list[Rect] = []
    rows = mask.shape[0]
    y = 0
    while y < rows:
        end = y + 1
        while end < rows and np.array_equal(mask[end], mask[y]):
            end += 1
        row = mask[y]
        if row.any():
            edges = np.flatnonzero(np.diff(np.concatenate(([0], row.view(np.int8), [0]))))
            boxes.extend((int(a), y, int(b), end) for a, b in zip(edges[::2], edges[1::2]))
        y = end
    return boxes


def load(path: Path, modalities: frozenset[str] = frozenset()) -> tuple[RegionRule, ...]:
    """The graylist rules with rectangles of one deid filter file; other sections are ignored."""
    from agent.deidentify.profile import parse_deid  # deferred: the profile loader imports this module

    _check_lines(path)
    recipe = parse_deid(path)
    filters: dict[str, Any] = recipe.get_filters() or {}
    rules = []
    for item in filters.get("graylist", []):
        label = str(item.get("name", "")).replace("LABEL", "", 1).strip()
        coordinates = tuple(_coordinates(c, path, label) for c in item.get("coordinates", []))
        if not coordinates:
            continue  # a flag only: says nothing about where the text is
        lines = tuple(_line(group, index, path, label) for index, group in enumerate(item.get("filters", [])))
        rules.append(RegionRule(label, path.name, lines, coordinates, modalities))
    return tuple(rules)


def _check_lines(path: Path) -> None:
    """Every line of a %filter section must be one deid reads: a misspelt test is an error here."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot be read ({type(exc).__name__})") from None
    in_filter = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("%"):
            in_filter = line.lower().startswith("%filter")
        if in_filter and line and not _FILTER_LINE.match(line):
            raise ProfileError(f"{path}:{number}: not a line deid reads in a %filter section "
                               f"(LABEL, a test such as `+ contains Modality US`, or coordinates)")


def _line(group: dict[str, Any], index: int, path: Path, label: str) -> Line:
    tests, fields, values = group.get("action", []), group.get("field", []), list(group.get("value", []))
    conditions = []
    for position, test in enumerate(tests):
        test = str(test).lower().strip()
        if test not in _TESTS:
            raise ProfileError(f"{path}: LABEL {label}: unknown test {test!r} (expected one of {sorted(_TESTS)})")
        field = str(fields[position]) if position < len(fields) else ""
        value = ""
        if test not in _PRESENCE_TESTS:  # deid lists values only for the tests that take one
            if not values:
                raise ProfileError(f"{path}: LABEL {label}: {test} {field} needs a value")
            value = str(values.pop(0))
        pattern = None
        if test in ("contains", "notcontains"):
            try:
                pattern = re.compile(value, re.IGNORECASE)
            except re.error as exc:
                raise ProfileError(f"{path}: LABEL {label}: {field}: not a regular expression ({exc})") from None
        conditions.append(Condition(test, _tag(field, path, label), pattern, value))
    operators = tuple(str(o) for o in group.get("InnerOperators", []))[: max(0, len(conditions) - 1)]
    if len(operators) != len(conditions) - 1:
        raise ProfileError(f"{path}: LABEL {label}: a line's conditions are not joined by || or +")
    joiner = str(group.get("operator") or "and")
    return Line(joiner if index else "and", tuple(conditions), operators)


def _tag(field: str, path: Path, label: str) -> int | None:
    """The attribute's tag; None for a name the dictionary does not know (deid's own library
    names repeating-group attributes, such as OverlayDescription): such an attribute is never
    present, as deid treats it."""
    if field.lower().startswith("0x"):
        try:
            return int(field, 16)
        except ValueError:
            raise ProfileError(f"{path}: LABEL {label}: {field!r} is not a 0xGGGGEEEE tag") from None
    if not field.strip():
        raise ProfileError(f"{path}: LABEL {label}: a condition names no attribute")
    tag = tag_for_keyword(field)
    return None if tag is None else int(tag)


def _coordinates(raw: Any, path: Path, label: str) -> Coordinates:
    keep = bool(raw[0])
    value = str(raw[1]).strip()
    if value.lower() == ALL:
        return Coordinates(keep, everything=True)
    if value.startswith("from:"):
        if value[5:].strip() != _REGIONS:
            raise ProfileError(f"{path}: LABEL {label}: coordinates can come from {_REGIONS} only")
        return Coordinates(keep, regions=True)
    try:
        x0, y0, x1, y1 = (int(v) for v in value.split(","))
    except ValueError:
        raise ProfileError(f"{path}: LABEL {label}: coordinates must be four integers x0,y0,x1,y1") from None
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise ProfileError(f"{path}: LABEL {label}: coordinates {value} are not a rectangle")
    return Coordinates(keep, rect=(x0, y0, x1, y1))


def _rectangles(ds: Dataset, coordinates: Coordinates, rows: int, columns: int) -> list[Rect]:
    if coordinates.everything:
        return [(0, 0, columns, rows)]
    if coordinates.rect is not None:
        return [coordinates.rect]
    found = []
    for region in ds.get(_REGIONS) or []:
        try:
            # RegionLocationMax is the last pixel of the region, so the rectangle ends one past it.
            found.append((int(region.RegionLocationMinX0), int(region.RegionLocationMinY0),
                          int(region.RegionLocationMaxX1) + 1, int(region.RegionLocationMaxY1) + 1))
        except (AttributeError, TypeError, ValueError):
            continue  # a damaged region keeps nothing back: its area stays masked
    return found


def _lazily(flags: list[Callable[[], bool]], operators: tuple[str, ...]) -> bool:
    """Left to right, as written; a term whose operand cannot change the result is not evaluated."""
    result = flags[0]() if flags else False
    for operator, flag in zip(operators, flags[1:]):
        if operator == "or":
            result = result or flag()
        else:
            result = result and flag()
    return result


def _values(ds: Dataset, tag: int | None) -> tuple[bool, list[str]]:
    """(present, its values as text): multi-valued attributes give one string per value."""
    if tag is None or tag not in ds:
        return False, []
    try:
        value = ds[tag].value
    except Exception:  # a damaged value matches nothing; the gate judges the rest
        return True, []
    if value is None:
        return True, []
    items = list(value) if isinstance(value, (list, tuple, MultiValue, Sequence)) else [value]
    texts = []
    for item in items:
        if hasattr(item, "keys"):  # a sequence item: tested for presence only
            texts.append("item")
            continue
        text = str(item)
        if len(text) <= _MAX_VALUE_CHARS:
            texts.append(text)
    return True, texts
