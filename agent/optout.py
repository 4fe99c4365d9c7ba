"""Patients' choices: the site's opt-out list, as keyed tokens, and what a dataset is matched by.

The list the trust's opt-out check returns (hospital Patient IDs or NHS numbers) is never kept
as written: each identifier becomes an HMAC token under the site key, so the state database can
say whether a patient opted out without holding who did. An instance is matched by its Patient
ID, its Other Patient IDs and the Patient IDs in its Other Patient IDs Sequence (an NHS number
usually lives there); a clinical row by its patient ID column.

Identifiers are compared after `normalise`: case, spaces and hyphens are not told apart, so
"943 476 5919" and "9434765919" are one NHS number. Two IDs that differ only in those are
taken as one: a match too many excludes data, a match too few would send it.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from agent.errors import AgentError
from agent.keys import SiteKey

MAX_IDENTIFIER = 64  # a Patient ID is LO: 64 characters
_DOMAIN = b"nmip-agent/opt-out v1\0"
_IGNORED = re.compile(r"[\s\-\u2010-\u2015\u2212\x00]+")  # spaces, hyphens and dashes, NUL padding
_FIELD_SEPARATORS = re.compile(r"[,;\t|]")
_HEADER_WORDS = re.compile(r"(nhs|patient|hospital|number|identifier|\bids?\b|mrn|opt)", re.IGNORECASE)
#: Patient IDs a PACS gives patients it does not know. Two studies with one of these are not one
#: patient's: an opt-out found in one never reaches the other through it.
_PLACEHOLDERS = frozenset({"UNKNOWN", "UNK", "ANON", "ANONYMOUS", "NONE", "NULL", "NA", "N/A", "TEMP", "TEST", "NOID",
                           "NOPID", "NOTKNOWN", "NOTGIVEN", "EMERGENCY", "TRAUMA"})


class OptOutListError(AgentError):
    """An opt-out file that cannot be taken as it is (the old list stays in force)."""


def normalise(identifier: str) -> str:
    """Case, spaces, hyphens and dashes, quotes, NUL padding and a spreadsheet's text apostrophe
    are not told apart."""
    return _IGNORED.sub("", identifier.strip().strip("\x00").strip('"').strip().lstrip("'")).upper()


def is_placeholder(patient_id: str) -> bool:
    """A Patient ID that does not name one patient: empty, a word for unknown, or one character
    repeated (0000000000)."""
    value = normalise(patient_id)
    return len(value) < 3 or value in _PLACEHOLDERS or len(set(value)) == 1


def token(key: SiteKey, identifier: str) -> str:
    """The keyed token of one identifier ("" for an empty one)."""
    value = normalise(identifier)
    if not value:
        return ""
    return hmac.new(key.secret, _DOMAIN + value.encode("utf-8"), hashlib.sha256).hexdigest()


def tokens(key: SiteKey, identifiers: Iterable[str]) -> frozenset[str]:
    return frozenset(t for t in (token(key, i) for i in identifiers) if t)


def matcher(key: SiteKey, listed: frozenset[str], links: frozenset[str] = frozenset(),
            link_of: Callable[[str], str] | None = None) -> Callable[[str], bool]:
    """Is an identifier on the list (`listed`: its tokens), or the Patient ID of a patient with a
    study found opted out (`links`, by `link_of`: its pseudonym)? Read once for a whole file."""
    def opted_out(identifier: str) -> bool:
        if listed and token(key, identifier) in listed:
            return True
        return bool(links) and link_of is not None and not is_placeholder(identifier) and link_of(identifier) in links
    return opted_out


class IdentifiersUnreadable(Exception):
    """A patient identifier element that cannot be read: whether the patient opted out cannot be told."""


def identifiers_of(ds: Dataset) -> set[str]:
    """Every patient identifier an instance carries; IdentifiersUnreadable when one of the
    elements cannot be read (an NHS number may be in it: not knowing is not "not listed")."""
    found: set[str] = set()
    for keyword in ("PatientID", "OtherPatientIDs"):
        found.update(_values(ds, keyword))
    try:
        items = ds.get("OtherPatientIDsSequence") or []
        for item in items:
            found.update(_values(item, "PatientID"))
    except IdentifiersUnreadable:
        raise
    except Exception:  # a damaged sequence: its Patient IDs cannot be read
        raise IdentifiersUnreadable("Other Patient IDs Sequence") from None
    return {value for value in found if normalise(value)}


def _values(ds: Dataset, keyword: str) -> list[str]:
    try:
        value = ds.get(keyword)
    except Exception:  # a value that does not decode
        raise IdentifiersUnreadable(keyword) from None
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


@dataclass(frozen=True)
class OptOutFile:
    """What an opt-out file held: its identifiers (in memory only), and how it was read."""

    identifiers: frozenset[str]
    lines: int
    header_skipped: bool


def read_list(path: Path) -> OptOutFile:
    """Identifiers one per line, as a trust's opt-out check returns them. Blank lines are
    skipped, and a first line with no digit in it that names a column (NHS Number, Patient ID)
    is a header. A line of several fields (a CSV) gives each field: a field too many can only
    exclude more. Problems name the line, never its content."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OptOutListError(f"{path}: cannot read ({exc.strerror})") from None
    # Excel's "Unicode text" is UTF-16: taken as Windows-1252 its identifiers would hold NULs,
    # match nobody, and every patient on the list would be sent.
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    text = None
    for encoding in ("utf-16",) if utf16 else ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if text is None:
        raise OptOutListError(f"{path}: not text (UTF-8, UTF-16 or Windows-1252 expected)")
    if "\x00" in text:
        raise OptOutListError(f"{path}: holds NUL characters: not a text file of identifiers "
                              "(UTF-16 without a byte order mark?)")
    found: set[str] = set()
    header_skipped = False
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        fields = [f.strip().strip('"').strip() for f in _FIELD_SEPARATORS.split(line)]
        fields = [f for f in fields if f]
        if not fields:
            continue
        if not found and not header_skipped and _is_header(fields):
            header_skipped = True
            continue
        if len(fields) > 1 and not all(_identifier_like(f) for f in fields):
            raise OptOutListError(f"{path}, line {number}: a column that is not an identifier (a flag, a date, a "
                                  "name?): every field of a line is taken as an identifier, so export the "
                                  "identifiers alone; nothing was imported, the list in force stays")
        for value in fields:
            problem = _unusable(value)
            if problem:
                raise OptOutListError(f"{path}, line {number}: {problem}; nothing was imported, the list in force "
                                      "stays")
            found.add(value)
    return OptOutFile(frozenset(found), len(lines), header_skipped)


_SHORTENED_NUMBER = re.compile(r"\d(\.\d*)?E\+?\d+", re.IGNORECASE)
_DECIMAL_NUMBER = re.compile(r"\d+\.0+|\d+(\.\d+)+")  # 9434765919.0 (a float export), 943.476.5919
_DATE = re.compile(r"\d{1,4}[/.\-]\d{1,2}[/.\-]\d{1,4}")


def _unusable(value: str) -> str | None:
    """Why a field cannot be taken as one identifier (it would match nobody: that patient's data
    would be sent), or None. Said without the value."""
    if len(normalise(value)) > MAX_IDENTIFIER:
        return f"longer than a patient identifier ({MAX_IDENTIFIER} characters): one identifier per line is expected"
    if _SHORTENED_NUMBER.fullmatch(value.strip()):
        return "a number a spreadsheet shortened (as 9.43E+09): export the column as text"
    if _DECIMAL_NUMBER.fullmatch(value.strip()):
        return "a number with a decimal point (as 9434765919.0): export the column as text"
    parts = value.split()
    if len(parts) > 1 and any(part.isalpha() and len(part) >= 4 for part in parts):
        return ("two values separated by a space (an identifier and a name?): one identifier per line, or "
                "fields separated by commas")
    return None


def _identifier_like(field: str) -> bool:
    """A field of a several-column line that can be an identifier: digits in it, five characters
    at least, not a date (a Y/N flag or an opt-out date would exclude patients who did not)."""
    value = normalise(field)
    return len(value) >= 5 and any(ch.isdigit() for ch in value) and not _DATE.fullmatch(field.strip())


def _is_header(fields: list[str]) -> bool:
    return all(not any(ch.isdigit() for ch in f) and _HEADER_WORDS.search(f) for f in fields)


@dataclass(frozen=True)
class OptOutPolicy:
    """Whether delivery needs a current opt-out list: the profile says whether it is mandatory
    (`optout: required`), the configuration how old it may be (`optout.max_age_days`)."""

    required: bool
    max_age_days: int

    def problem(self, imported_at: float | None, now: float | None = None) -> str | None:
        """Why delivery is held, or None."""
        if not self.required:
            return None
        if imported_at is None:
            return ("the profile makes the opt-out list mandatory and none was imported: "
                    "`nmip-agent optout import FILE`")
        age_days = ((time.time() if now is None else now) - imported_at) / 86_400
        if age_days > self.max_age_days:
            return (f"the opt-out list is {age_days:.0f} days old, more than optout.max_age_days "
                    f"({self.max_age_days}): import the trust's current list")
        return None
