"""The identifying values of a source instance, as search patterns.

Used twice: `func:clean` removes them from descriptors it keeps, and the release gate searches the
de-identified output for them. The values themselves never leave this object: matches are
reported by label (`patient_name`, `birth_date`, ...) only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import date

from pydicom.dataset import Dataset

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
    "%d %b %Y", "%d-%b-%Y", "%b %d, %Y", "%d %B %Y", "%B %d, %Y", "%d/%m/%y",
)  # fmt: skip

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


@dataclass
class SourceIdentifiers:
    """Labelled identifying strings of one source instance, compiled into patterns on demand."""

    values: dict[str, str] = field(default_factory=dict)  # lower-cased text -> label
    exact_ids: dict[str, str] = field(default_factory=dict)  # short IDs, compared whole
    # Original UIDs differ in every instance: searched as plain substrings, so that the patterns
    # above stay the same for all instances of a patient and `re` compiles them once.
    uids: set[str] = field(default_factory=set)
    _text: re.Pattern[str] | None = None
    _bytes: re.Pattern[bytes] | None = None
    _needles: list[bytes] | None = None

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
            self._text = self._bytes = self._needles = None

    def add_uid(self, uid: str) -> None:
        self.uids.add(uid)

    def add_id(self, label: str, text: str | None) -> None:
        if not text or not text.strip():
            return
        text = text.strip()
        if len(text) < _MIN_ID:
            self.exact_ids[text.lower()] = label
        else:
            self.add(label, text)

    def add_person_name(self, label: str, value: object) -> None:
        """A PN value: the whole name and each family/given/middle part, in every representation."""
        for single in value if isinstance(value, (list, tuple)) else [value]:
            text = str(single)
            if not text.strip("^= "):
                continue
            self.add(label, text)
            for group in text.split("="):
                self.add(label, group)
                self.add(label, group.replace("^", " ").strip())
                for part in group.split("^")[:3]:  # prefix and suffix (Dr, Jr) are not identifying
                    part = part.strip()
                    if len(part) >= _MIN_COMPONENT or (part and not part.isascii() and len(part) >= 2):
                        self.add(label, part)

    def add_date(self, label: str, value: str | None) -> None:
        """A DA value in every common written form."""
        for form in _written_forms(value or ""):
            self.add(label, form)

    def _alternation(self) -> str:
        return "|".join(re.escape(v) for v in sorted(self.values, key=len, reverse=True))

    @property
    def text_pattern(self) -> re.Pattern[str] | None:
        """Any identifying value as a whole word (not inside a longer word or number), any case."""
        if self._text is None and self.values:
            self._text = re.compile(rf"(?<![^\W_])(?:{self._alternation()})(?![^\W_])", re.IGNORECASE)
        return self._text

    @property
    def bytes_pattern(self) -> re.Pattern[bytes] | None:
        """The same words in UTF-8 and Latin-1 bytes, for scanning encoded datasets."""
        if self._bytes is None and self.values:
            encoded = set()
            for value in self.values:
                for variant in {value, value.upper(), value.title()}:
                    encoded.add(variant.encode("utf-8"))
                    try:
                        encoded.add(variant.encode("latin-1"))
                    except UnicodeEncodeError:
                        pass
            alternation = b"|".join(re.escape(v) for v in sorted(encoded, key=len, reverse=True))
            self._bytes = re.compile(rb"(?<![A-Za-z0-9])(?:" + alternation + rb")(?![A-Za-z0-9])", re.IGNORECASE)
        return self._bytes

    def label_of(self, matched: str | bytes) -> str:
        """The label of a matched value (for reports: never the value itself)."""
        text = matched.decode("utf-8", "replace") if isinstance(matched, bytes) else matched
        label = self.values.get(text.lower())
        if label is None and isinstance(matched, bytes):
            label = self.values.get(matched.decode("latin-1").lower())
        return label or "identifier"

    def find_in_text(self, text: str) -> str | None:
        """The label of the first identifying value in `text`, or None."""
        pattern = self.text_pattern
        match = pattern.search(text) if pattern else None
        if match:
            return self.label_of(match.group(0))
        return "uid" if any(_holds_uid(text, uid) for uid in self.uids if uid in text) else None

    def find_in_bytes(self, data: bytes) -> bool:
        """Whether `data` may hold an identifying value: a fast, over-eager pre-filter for the gate.

        Plain substring tests on the lower-cased bytes (ASCII case only, so UTF-8 and Latin-1
        forms are tested as they are); only a hit makes the caller walk the decoded elements.
        """
        if self._needles is None:
            needles = set()
            for value in self.values:
                needles.add(value.encode("utf-8"))
                try:
                    needles.add(value.encode("latin-1"))
                except UnicodeEncodeError:
                    pass
            self._needles = sorted(needles)
        lowered = data.lower()
        if any(needle in lowered for needle in self._needles):
            return True
        return any(uid.encode("ascii", "replace") in data for uid in self.uids)

    def redact(self, text: str) -> str:
        """`text` with every identifying value replaced by `*`."""
        pattern = self.text_pattern
        return pattern.sub("*", text) if pattern else text


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


def collect(ds: Dataset, *, include_dates: bool) -> SourceIdentifiers:
    """The patient-level identifying values of a source dataset (top level and Other Patient IDs).

    Nested names and original UIDs are added while the plan is applied, as they are met.
    """
    found = SourceIdentifiers()
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
        address = str(_value(ds, ADDRESS) or "")
        found.add("address", address)
        for part in re.split(r"[,^\n\r]", address):
            if len(part.strip()) >= 5 and any(c.isdigit() for c in part):
                found.add("address", part)
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
