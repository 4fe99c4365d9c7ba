"""The identifying values of a source instance, as search patterns, in every form they are written.

Used twice: cleaning removes them from text it keeps, and the release gate searches the
de-identified output for them (beside the detectors of `agent.detectors`, which do not depend on
the source). Each value is searched whole and in its other written forms: each part of a
hyphenated or multi-word name, initials with the surname, the institution's distinctive
sub-phrases, dates in 20 written forms, and near misses (one character changed, values of 5+
characters). The values themselves never leave this object: matches are reported by label
(`patient_name`, `birth_date`, ...) only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import date

from pydicom.dataset import Dataset
from rapidfuzz import process as fuzzy_process
from rapidfuzz.distance import Levenshtein

from agent.deidentify.dates import parse_da

# Words that are not identifying however often they appear in a name field (and that our own
# dummy values use): searching for them would quarantine clean output.
_NOT_IDENTIFYING = {
    "ANONYMIZED", "ANONYMISED", "ANONYMOUS", "ANON", "UNKNOWN", "NONE", "NULL", "NAME", "TEST",
    "PATIENT", "DOCTOR", "DR", "MR", "MRS", "MS", "MISS",
}  # fmt: skip
_MIN_COMPONENT = 3  # shorter ASCII name parts ("Li", "Ng") are searched within the full name only
_MIN_ID = 4  # shorter IDs would match instance numbers; the gate compares them attribute by attribute
_DATE_FORMATS = (
    "%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y", "%m/%d/%Y",
    "%d %b %Y", "%d-%b-%Y", "%b %d, %Y", "%d %B %Y", "%B %d, %Y", "%d/%m/%y", "%d%m%Y", "%m%d%Y",
    "%d-%m-%y", "%d.%m.%y", "%d %b %y", "%d-%b-%y", "%b %Y", "%B %Y",
)  # fmt: skip
_NEAR_MISS_MIN = 5  # values this long are also found with one character changed
_SUBSTRING_ID = 6  # IDs this long are also found inside longer words
_REMOVED_MIN = 6  # values the profile removed are searched elsewhere when this long
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME_SPLIT = re.compile(r"[\s\-'\u2019.,]+")
_WORD = re.compile(r"[^\W_]+")
_SEPARATOR = re.compile(r"[\s\-_.,'^]+")
_SEPARATORS = r"[\s\-_.,'^]+"  # between the words of a value, any run of these matches
# Scripts written without spaces between words: their names are searched without word boundaries,
# a one-character surname included.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# Words of an institution's name that say what it is, not which one: not searched on their own.
_GENERIC_INSTITUTION_WORDS = {
    "THE", "OF", "AND", "AT", "FOR", "NHS", "TRUST", "FOUNDATION", "UNIVERSITY", "UNIVERSITIES", "HOSPITAL",
    "HOSPITALS", "GENERAL", "ROYAL", "INFIRMARY", "TEACHING", "COUNTY", "DISTRICT", "COMMUNITY", "CENTRE",
    "CENTER", "MEDICAL", "HEALTH", "HEALTHCARE", "CARE", "CLINIC", "CLINICS", "IMAGING", "RADIOLOGY",
    "DEPARTMENT", "DEPT", "SERVICES", "SERVICE", "NATIONAL", "REGIONAL", "CHILDREN", "CHILDRENS", "WOMEN",
    "WOMENS", "INSTITUTE", "SAINT", "ST", "MEMORIAL", "CITY", "NORTH", "SOUTH", "EAST", "WEST", "CENTRAL",
    "NEW", "OLD", "PARTNERSHIP", "GROUP", "LTD", "PLC", "INC", "CANCER", "HEART", "EYE", "DENTAL", "SCANNING",
    "DIAGNOSTIC", "DIAGNOSTICS", "UNIT", "WARD", "ROAD", "STREET", "LANE", "AVENUE",
}  # fmt: skip

#: Patient-level attributes whose values are always identifying, whatever the profile keeps.
PATIENT_NAMES = (0x00100010, 0x00101001, 0x00101005, 0x00101060)  # name, other, birth, mother's birth
PATIENT_IDS = {
    0x00100020: "patient_id", 0x00101000: "other_patient_id", 0x00080050: "accession",
    0x00101090: "medical_record_locator", 0x00380010: "admission_id", 0x00402016: "placer_order",
    0x00402017: "filler_order", 0x00401001: "requested_procedure_id", 0x00200010: "study_id",
}  # fmt: skip
BIRTH_DATE = 0x00100030
ADDRESS = 0x00101040
PHONE = 0x00102154
STUDY_DATES = (0x00080020, 0x00080021, 0x00080022, 0x00080023)  # study, series, acquisition, content
OTHER_PATIENT_IDS_SEQUENCE = 0x00101002
INSTITUTION_NAME = 0x00080080
INSTITUTION_ADDRESS = 0x00080081
INSTITUTION_DEPARTMENT = 0x00081040


@dataclass
class SourceIdentifiers:
    """Labelled identifying strings of one source instance, compiled into patterns on demand."""

    values: dict[str, str] = field(default_factory=dict)  # lower-cased text -> label
    exact_ids: dict[str, str] = field(default_factory=dict)  # short IDs, compared whole
    # Original UIDs differ in every instance: searched as plain substrings, so that the patterns
    # above stay the same for all instances of a patient and `re` compiles them once.
    uids: set[str] = field(default_factory=set)
    _text: re.Pattern[str] | None = None
    _unspaced: re.Pattern[str] | None = None
    _unspaced_built: bool = False
    ids: set[str] = field(default_factory=set)  # lower-cased IDs searched as substrings
    _ids: re.Pattern[str] | None = None
    _ids_built: bool = False
    _fuzzy: dict[str, str] | None = None

    def add(self, label: str, text: str | None) -> None:
        """Add one identifying string (ignored when empty or not identifying on its own)."""
        if not text:
            return
        text = text.strip().strip("\x00").strip()
        if not text or text.upper() in _NOT_IDENTIFYING:
            return
        lowered = text.lower()
        if lowered not in self.values:
            self.values[lowered] = label
            self._text = self._unspaced = None
            self._unspaced_built = False
            self._fuzzy = None

    def copy(self) -> SourceIdentifiers:
        """A copy to which one instance adds its own values (its UIDs, the names met in its walk)."""
        copied = SourceIdentifiers(values=dict(self.values), exact_ids=dict(self.exact_ids), uids=set(self.uids),
                                   ids=set(self.ids))
        copied._fuzzy = dict(self._near_miss_choices())  # worked out once per study, like the values
        return copied

    def add_uid(self, uid: str) -> None:
        self.uids.add(uid)

    def add_id(self, label: str, text: str | None) -> None:
        """An identifier; a damaged one (control characters inside) also without them and in parts."""
        if not text or not text.strip(" \x00"):
            return
        text = text.strip(" \x00")
        if len(text) < _MIN_ID:
            self.exact_ids[text.lower()] = label
        else:
            self.add(label, text)
            if len(text) >= _SUBSTRING_ID:
                self.ids.add(text.lower())
        if _CONTROL.search(text):
            self.add_id(label, _CONTROL.sub("", text))
            for part in _CONTROL.split(text):
                if len(part) >= _MIN_ID:
                    self.add_id(label, part)

    def add_removed(self, text: str) -> None:
        """A text value the profile removed or replaced: searched whole (6+ characters) elsewhere."""
        text = text.strip(" \x00")
        if len(text) >= _REMOVED_MIN and not text.replace(".", "").replace(" ", "").isdigit():
            for single in text.split("\\"):
                if len(single.strip()) >= _REMOVED_MIN:
                    self.add("removed_value", single)

    @property
    def id_pattern(self) -> re.Pattern[str] | None:
        """IDs of 6+ characters anywhere, even inside a longer word: a damaged length can glue an
        ID to the bytes around it (`HOSP123456\xfe\xff` decodes as letters in Latin-1)."""
        if not self._ids_built:
            # An ID of digits only must not be part of a longer number (a UID, a measurement).
            digits = [i for i in self.ids if i.isdigit()]
            others = [i for i in self.ids if not i.isdigit()]
            parts = ([rf"(?<!\d)(?:{self._alternation(digits)})(?!\d)"] if digits else []) + (
                [self._alternation(others)] if others else [])
            self._ids = re.compile("|".join(parts), re.IGNORECASE) if parts else None
            self._ids_built = True
        return self._ids

    def add_person_name(self, label: str, value: object) -> None:
        """A PN value: the whole name, each part (hyphenated and multi-word parts split too) and
        initials with the surname, in every representation (alphabetic, ideographic, phonetic)."""
        for single in value if isinstance(value, (list, tuple)) else [value]:
            text = str(single)
            if not text.strip("^= "):
                continue
            self.add(label, text)
            for group in text.split("="):
                self.add(label, group)
                self.add(label, group.replace("^", " ").strip())
                components = [c.strip() for c in group.split("^")]
                for part in components[:3]:  # prefix and suffix (Dr, Jr) are not identifying
                    self._add_name_part(label, part)
                    for piece in _NAME_SPLIT.split(part):
                        self._add_name_part(label, piece)
                self._add_initials(label, components)

    def _add_name_part(self, label: str, part: str) -> None:
        part = part.strip()
        if not part:
            return
        if _UNSPACED.search(part) or (not part.isascii() and len(part) >= 2) or len(part) >= _MIN_COMPONENT:
            self.add(label, part)

    def _add_initials(self, label: str, components: list[str]) -> None:
        """`P Smith`, `P. Smith`, `Smith P`, `Smith, P.`: how staff write a name in notes."""
        if len(components) < 2 or not components[0] or not components[1] or not components[1][0].isalpha():
            return
        family, initial = components[0], components[1][0]
        if _UNSPACED.search(family):
            return
        for form in (f"{initial} {family}", f"{initial}. {family}", f"{initial}.{family}", f"{family} {initial}",
                     f"{family}, {initial}", f"{family},{initial}"):
            self.add(label, form)

    def add_institution(self, value: object) -> None:
        """The institution's name, and each run of its words that says which one it is."""
        for single in value if isinstance(value, (list, tuple)) else [value]:
            text = str(single or "").strip()
            if not text:
                continue
            self.add("institution", text)
            words = _WORD.findall(text)
            distinctive = [w for w in words if w.upper() not in _GENERIC_INSTITUTION_WORDS and not w.isdigit()]
            for word in distinctive:
                if len(word) >= 4:
                    self.add("institution", word)
            for start in range(len(words)):
                for end in range(start + 2, len(words) + 1):
                    phrase = words[start:end]
                    if any(w.upper() not in _GENERIC_INSTITUTION_WORDS for w in phrase):
                        self.add("institution", " ".join(phrase))

    def add_date(self, label: str, value: str | None) -> None:
        """A DA value in every common written form."""
        for form in _written_forms(value or ""):
            self.add(label, form)

    def _alternation(self, values: list[str]) -> str:
        return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))

    @property
    def text_pattern(self) -> re.Pattern[str] | None:
        """Any identifying value as a whole word (not inside a longer word or number), any case.

        Between two words any run of spaces and punctuation matches, so `Smith  John` and
        `SMITH-JOHN` are the name `Smith John`.
        """
        if self._text is None and self.values:
            self._text = _compile_words(frozenset(self.values))
        return self._text

    @property
    def unspaced_pattern(self) -> re.Pattern[str] | None:
        """Values in scripts without spaces (CJK, Hangul), searched anywhere, one character included."""
        if not self._unspaced_built:
            unspaced = [v for v in self.values if _UNSPACED.search(v)]
            self._unspaced = re.compile(self._alternation(unspaced)) if unspaced else None
            self._unspaced_built = True
        return self._unspaced

    def label_of(self, matched: str) -> str:
        """The label of a matched value (for reports: never the value itself)."""
        key = re.sub(r"[\s\-_.,'^]+", " ", matched.lower())
        label = self.values.get(matched.lower())
        if label is None:
            for value, candidate in self.values.items():
                if re.sub(r"[\s\-_.,'^]+", " ", value) == key:
                    return candidate
        return label or "identifier"

    def _near_miss_choices(self) -> dict[str, str]:
        """Single-word values of 5+ characters, for the one-character-changed search."""
        if self._fuzzy is None:
            # Dates are left out: a shifted date one digit away from the original is not a leak.
            self._fuzzy = {
                v: label for v, label in self.values.items()
                if len(v) >= _NEAR_MISS_MIN and _WORD.fullmatch(v) and not label.endswith("_date")
                and (not v.isdigit() or len(v) >= 6)
            }
        return self._fuzzy

    def spans(self, text: str, *, near_misses: bool = True) -> list[tuple[int, int, str]]:
        """Every identifying value in `text`: (start, end, label), exact forms and near misses.

        `near_misses=False` for values that are not text (numbers, codes, dates, UIDs).
        """
        found: list[tuple[int, int, str]] = []
        pattern = self.text_pattern
        if pattern is not None:
            found.extend((m.start(), m.end(), self.label_of(m.group(0))) for m in pattern.finditer(text))
        ids = self.id_pattern
        if ids is not None:
            found.extend((m.start(), m.end(), self.label_of(m.group(0))) for m in ids.finditer(text))
        unspaced = self.unspaced_pattern if not text.isascii() else None
        if unspaced is not None:
            found.extend((m.start(), m.end(), self.label_of(m.group(0))) for m in unspaced.finditer(text))
        if near_misses and self._near_miss_choices():
            for m in _WORD.finditer(text):
                label = self.near_miss(m.group(0))
                if label is not None:
                    found.append((m.start(), m.end(), label))
        if self.uids and len(text) >= 7 and "." in text:
            for uid in self.uids:
                start = text.find(uid)
                if start >= 0 and _holds_uid(text, uid):
                    found.append((start, start + len(uid), "uid"))
        return found

    def near_miss(self, word: str) -> str | None:
        """`near_miss_<label>` when `word` is one character away from a source identifier."""
        choices = self._near_miss_choices()
        word = word.lower()
        if len(word) < _NEAR_MISS_MIN or not choices or word in choices:
            return None
        best = fuzzy_process.extractOne(word, choices.keys(), scorer=Levenshtein.distance, score_cutoff=1)
        return None if best is None else "near_miss_" + choices[best[0]]

    def holds_uid(self, text: str) -> bool:
        """Whether `text` holds one of the source's original UIDs as a whole UID."""
        return any(uid in text and _holds_uid(text, uid) for uid in self.uids)

    def find_in_text(self, text: str) -> str | None:
        """The label of the first identifying value in `text`, or None."""
        found = self.spans(text)
        return min(found)[2] if found else None

    def redact(self, text: str) -> str:
        """`text` with every identifying value replaced by `*`."""
        from agent.detectors.scan import redact

        return redact(text, [(start, end) for start, end, _ in self.spans(text)])


@functools.lru_cache(maxsize=256)
def _compile_words(values: frozenset[str]) -> re.Pattern[str] | None:
    """The whole-word pattern of a set of values; cached, as every instance of a patient has the same."""
    spaced = [v for v in values if not _UNSPACED.search(v)]
    alternation = "|".join(
        _SEPARATORS.join(re.escape(w) for w in _SEPARATOR.split(v) if w) or re.escape(v)
        for v in sorted(spaced, key=len, reverse=True)
    )
    return re.compile(rf"(?<![^\W_])(?:{alternation})(?![^\W_])", re.IGNORECASE) if alternation else None


@functools.lru_cache(maxsize=4096)
def _written_forms(value: str) -> tuple[str, ...]:
    """A date's common written forms; cached, as every instance of a study repeats its dates."""
    day = parse_da(value)
    if day is None or day < date(1850, 1, 1):
        return ()
    return tuple(day.strftime(fmt) for fmt in _DATE_FORMATS)


def _holds_uid(text: str, uid: str) -> bool:
    """`uid` occurs in `text` as a whole UID, not as the start of a longer one."""
    start = text.find(uid)
    while start >= 0:
        end = start + len(uid)
        before_ok = start == 0 or not (text[start - 1].isdigit() or text[start - 1] == ".")
        after_ok = end == len(text) or not (text[end].isdigit() or (text[end] == "." and text[end + 1 : end + 2].isdigit()))
        if before_ok and after_ok:
            return True
        start = text.find(uid, start + 1)
    return False


_COLLECTED_TAGS = (INSTITUTION_NAME, INSTITUTION_DEPARTMENT, INSTITUTION_ADDRESS, *PATIENT_NAMES, *PATIENT_IDS,
                   OTHER_PATIENT_IDS_SEQUENCE, BIRTH_DATE, ADDRESS, PHONE, *STUDY_DATES)
_collected: dict[tuple[object, ...], SourceIdentifiers] = {}
_COLLECTED_LIMIT = 256


def collect(ds: Dataset, *, include_dates: bool, include_institution: bool = True) -> SourceIdentifiers:
    """The patient-level identifying values of a source dataset (top level and Other Patient IDs).

    Nested names and original UIDs are added while the plan is applied, as they are met. The
    institution is left out where the profile keeps it (Retain Institution Identity). Every
    instance of a study repeats these values: their forms are worked out once and copied.
    """
    key = (include_dates, include_institution, *(_raw_bytes(ds, tag) for tag in _COLLECTED_TAGS))
    base = _collected.get(key)
    if base is None:
        if len(_collected) >= _COLLECTED_LIMIT:
            _collected.clear()
        base = _collected[key] = _collect(ds, include_dates=include_dates, include_institution=include_institution)
    return base.copy()


def _raw_bytes(ds: Dataset, tag: int) -> object:
    """What the element holds, as it came (a sequence by its items' values); None when absent."""
    if tag not in ds:
        return None
    value = getattr(ds.get_item(tag), "value", None)
    if isinstance(value, (bytes, str)):
        return value
    return repr(_value(ds, tag))


def _collect(ds: Dataset, *, include_dates: bool, include_institution: bool) -> SourceIdentifiers:
    found = SourceIdentifiers()
    if include_institution:
        for tag in (INSTITUTION_NAME, INSTITUTION_DEPARTMENT):
            if tag in ds:
                found.add_institution(_value(ds, tag))
        if INSTITUTION_ADDRESS in ds:
            _add_address(found, "institution", str(_value(ds, INSTITUTION_ADDRESS) or ""))
    for tag in PATIENT_NAMES:
        if tag in ds:
            found.add_person_name("patient_name", _value(ds, tag))
    for tag, label in PATIENT_IDS.items():
        if tag in ds:
            for value in _as_list(_value(ds, tag)):
                found.add_id(label, str(value))
    if OTHER_PATIENT_IDS_SEQUENCE in ds:
        for item in ds[OTHER_PATIENT_IDS_SEQUENCE].value or []:
            if 0x00100020 in item:
                found.add_id("other_patient_id", str(item[0x00100020].value or ""))
    if BIRTH_DATE in ds:
        found.add_date("birth_date", str(_value(ds, BIRTH_DATE) or ""))
    if ADDRESS in ds:
        _add_address(found, "address", str(_value(ds, ADDRESS) or ""))
    if PHONE in ds:
        for phone in _as_list(_value(ds, PHONE)):
            found.add("phone", str(phone))
            digits = re.sub(r"\D", "", str(phone))
            if len(digits) >= 6:
                found.add("phone", digits)
    if include_dates:
        for tag in STUDY_DATES:
            if tag in ds:
                found.add_date("study_date", str(_value(ds, tag) or ""))
    return found


def _add_address(found: SourceIdentifiers, label: str, address: str) -> None:
    """An address whole, each line of it that holds a number (a street, a postcode), and the street
    without its number or its type ("14 Acacia Avenue": "Acacia Avenue", "14 Acacia").

    A town alone is not searched: the patient and the hospital are often in the same one.
    """
    found.add(label, address)
    for part in re.split(r"[,^\n\r]", address):
        part = part.strip()
        if len(part) < 5 or not any(c.isdigit() for c in part):
            continue
        found.add(label, part)
        words = part.split()
        if len(words) >= 3 and words[0].isdigit():
            found.add(label, " ".join(words[1:]))
            found.add(label, " ".join(words[:2]))


def _value(ds: Dataset, tag: int) -> object:
    """The value, decoded straight from raw bytes when they are plain ASCII (most of the time)."""
    raw = ds.get_item(tag)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes) and value.isascii() and b"\x1b" not in value:
        text = value.decode("ascii").strip("\x00 ")
        return text.split("\\") if "\\" in text else text
    try:
        return ds[tag].value
    except Exception:  # a malformed value: nothing to search for, the element is handled by the plan
        return None


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [v for v in value]  # type: ignore[attr-defined]
    return [value]


__all__ = ["SourceIdentifiers", "collect"]
