"""Recognisers for identifiers written in text, whatever the source's own attributes held.

Each recogniser returns the spans of what it found. They are the release gate's second opinion
(they do not depend on the source's structured identifiers) and drive cleaning too. Every one
is built to be cheap on text that holds nothing: a regular expression, and a library check
(NHS checksum, phone numbering plan) only where the expression matched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date

import phonenumbers
from stdnum.gb import nhs

Span = tuple[int, int]

# NHS numbers (and Scottish CHI numbers, which share the modulus 11 check): ten digits, any spacing.
_NHS = re.compile(r"(?<![\d.])(\d{3})[ \-]?(\d{3})[ \-]?(\d{4})(?![^\W_])")
_DIGITS = re.compile(r"\d")

# UK postcodes: a real postcode area, a district, then the inward code (PS: no C, I, K, M, O, V).
_POSTCODE_AREAS = (
    "AB AL B BA BB BD BF BH BL BN BR BS BT CA CB CF CH CM CO CR CT CV CW DA DD DE DG DH DL DN DT DY E EC EH "
    "EN EX FK FY G GL GU GY HA HD HG HP HR HS HU HX IG IM IP IV JE KA KT KW KY L LA LD LE LL LN LS LU M ME "
    "MK ML N NE NG NN NP NR NW OL OX PA PE PH PL PO PR RG RH RM S SA SE SG SK SL SM SN SO SP SR SS ST SW SY "
    "TA TD TF TN TQ TR TS TW UB W WA WC WD WF WN WR WS WV YO ZE"
).split()
_POSTCODE = re.compile(
    r"(?<![A-Za-z0-9])(?:GIR ?0AA|(?:" + "|".join(sorted(_POSTCODE_AREAS, key=len, reverse=True))
    + r")\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2})(?![A-Za-z0-9])",
    re.IGNORECASE,
)

_EMAIL = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")

# A label that introduces an identifier ("MRN: 1234", "DOB 12/03/61", "Hosp No. RX123").
_LABELLED = re.compile(
    r"\b(?:MRN|NHS\s*(?:No|Number|#)|Hosp(?:ital)?\s*(?:No|Number|#|ID)|Patient\s*(?:ID|No|Number)|"
    r"Case\s*(?:No|Number)|Unit\s*(?:No|Number)|CHI(?:\s*No)?|DOB|D\.O\.B|Date\s+of\s+birth|"
    r"Born|Acc(?:ession)?\s*(?:No|Number|#)|Ref(?:erence)?\s*(?:No|Number|#)|Tel(?:ephone)?|Mob(?:ile)?|Phone)"
    r"(?:[.:#=\-]|\s)+(?=[A-Za-z0-9]*\d)[A-Za-z0-9/.\-]{3,}",
    re.IGNORECASE,
)

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9,
    "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH = r"(Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
_DATES = (
    # 12/03/1961, 12-03-61, 12.3.1961 (day first, or month first)
    ("dmy", re.compile(r"(?<![\d.])(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})(?![\d])")),
    # 1961-03-12, 1961/3/12
    ("ymd", re.compile(r"(?<![\d.])(\d{4})[/.\-](\d{1,2})[/.\-](\d{1,2})(?![\d])")),
    # 12 March 1961, 12th of Mar 61, 12-Mar-1961
    ("d_mon_y", re.compile(rf"(?<![\d])(\d{{1,2}})(?:st|nd|rd|th)?[\s\-/.]*(?:of\s+)?{_MONTH}\.?[\s\-/.,]*(\d{{4}}|\d{{2}})(?![\d])", re.I)),
    # March 12, 1961; Mar 12th 1961
    ("mon_d_y", re.compile(rf"\b{_MONTH}\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})(?![\d])", re.I)),
    # March 1961 (a birth month and year is identifying enough)
    ("mon_y", re.compile(rf"\b{_MONTH}\.?,?\s+(\d{{4}})(?![\d])", re.I)),
    # 12031961 or 19610312 in one run of digits
    ("compact", re.compile(r"(?<![^\W_]|\.)(\d{8})(?![^\W_]|\.)")),
)


def nhs_numbers(text: str) -> Iterator[Span]:
    """NHS (and CHI) numbers: ten digits in any spacing that pass the modulus 11 check."""
    for match in _NHS.finditer(text):
        if nhs.is_valid(match.group(1) + match.group(2) + match.group(3)):
            yield match.span()


def phone_numbers(text: str) -> Iterator[Span]:
    """Telephone numbers, UK or international, as libphonenumber recognises them in prose."""
    if len(_DIGITS.findall(text)) < 9:  # no phone number is shorter; skips the costly matcher
        return
    try:
        # POSSIBLE, not VALID: a number of the right length in a plausible format is enough. Ofcom's
        # ranges reserved for drama (07700 900xxx) are "invalid" to libphonenumber, and the
        # numbers people plant, mistype or write in a foreign format are what this is for.
        for match in phonenumbers.PhoneNumberMatcher(text, "GB", leniency=phonenumbers.Leniency.POSSIBLE):
            # Written as people write phone numbers (national 0..., international +..., or a
            # number libphonenumber holds valid), not any run of digits of the right length.
            inside_word = (match.start > 0 and text[match.start - 1].isalnum()) or (
                match.end < len(text) and text[match.end].isalnum())
            if inside_word:
                continue  # digits inside a code or a hex key id are not dialled
            if match.raw_string.lstrip("( ").startswith(("0", "+")) or phonenumbers.is_valid_number(match.number):
                yield match.start, match.end
    except Exception:  # libphonenumber on hostile text: treat as no match, the other detectors still run
        return


def postcodes(text: str) -> Iterator[Span]:
    """Full UK postcodes (outward and inward code) in a real postcode area."""
    for match in _POSTCODE.finditer(text):
        yield match.span()


def emails(text: str) -> Iterator[Span]:
    for match in _EMAIL.finditer(text):
        yield match.span()


def labelled_identifiers(text: str) -> Iterator[Span]:
    """A value that a label says is an identifier: `MRN 1234567`, `DOB: 12/3/61`, `Tel 0113...`."""
    for match in _LABELLED.finditer(text):
        yield match.span()


def dates_in_text(text: str) -> Iterator[Span]:
    """Calendar dates written in prose or numbers, in any common form, that are real dates."""
    if not any(c.isdigit() for c in text):
        return
    for form, pattern in _DATES:
        for match in pattern.finditer(text):
            if _is_date(form, match.groups()):
                yield match.span()


def _is_date(form: str, groups: tuple[str | None, ...]) -> bool:
    parts = [g or "" for g in groups]
    if form == "dmy":
        day, month, year = int(parts[0]), int(parts[1]), _year(parts[2])
        return _valid(year, month, day) or _valid(year, day, month)
    if form == "ymd":
        return _valid(int(parts[0]), int(parts[1]), int(parts[2]))
    if form == "d_mon_y":
        return _valid(_year(parts[2]), _month(parts[1]), int(parts[0]))
    if form == "mon_d_y":
        return _valid(int(parts[2]), _month(parts[0]), int(parts[1]))
    if form == "mon_y":
        return 1900 <= int(parts[1]) <= 2099
    digits = parts[0]
    return _valid(int(digits[:4]), int(digits[4:6]), int(digits[6:])) or _valid(
        int(digits[4:]), int(digits[2:4]), int(digits[:2])
    )


def _year(text: str) -> int:
    year = int(text)
    return year if len(text) == 4 else 1900 + year if year > 30 else 2000 + year


def _month(text: str) -> int:
    return _MONTHS.get(text[:4].lower(), _MONTHS.get(text[:3].lower(), 0))


def _valid(year: int, month: int, day: int) -> bool:
    if not 1900 <= year <= 2099:
        return False
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


#: Every recogniser by the name a refusal reports.
RECOGNISERS = (
    ("nhs_number", nhs_numbers),
    ("email", emails),
    ("postcode", postcodes),
    ("labelled_identifier", labelled_identifiers),
    ("date", dates_in_text),
    ("phone", phone_numbers),
)
