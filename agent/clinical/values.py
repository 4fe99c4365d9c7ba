"""One cell's check and conversion: dates parsed and shifted, codes looked up, numbers bounded.

Each function returns the value as it leaves, or raises `Invalid` with a problem that never
quotes the value (the rejects report may be sent to support).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from agent.clinical.schema import ColumnType, KeptColumn, normalise_code
from agent.deidentify import dates

_INTEGER = re.compile(r"[+-]?\d+(?:\.0*)?")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?")
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")


class Invalid(Exception):
    """A value that fails its column's check; the message never holds the value."""


def read_moment(column: KeptColumn, text: str) -> datetime:
    """The date (or date and time) a cell holds, in range.

    Every declared format is tried: a value that two formats read as different dates (03/04/2020
    under both %d/%m/%Y and %m/%d/%Y) is ambiguous and refused rather than guessed.
    """
    readings = set()
    for pattern in column.formats:
        try:
            readings.add(datetime.strptime(text, pattern))
        except ValueError:
            continue
    if not readings:
        raise Invalid(f"not a date in a declared format ({', '.join(column.formats)})")
    if len(readings) > 1:
        raise Invalid(f"ambiguous: reads as different dates under the declared formats ({', '.join(column.formats)})")
    moment = readings.pop()
    if column.date_range is not None and not column.date_range[0] <= moment.date() <= column.date_range[1]:
        low, high = column.date_range
        raise Invalid(f"outside the range [{low.isoformat()}, {high.isoformat()}]")
    return moment


def shifted(column: KeptColumn, moment: datetime, offset: timedelta) -> str:
    """The moment moved by the patient's offset, in ISO 8601: `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS`."""
    if column.type == ColumnType.DATE:
        return shift_date(moment.date(), offset).isoformat()
    return shift_datetime(moment, offset).isoformat(timespec="seconds")


def _da(day: date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def shift_date(day: date, offset: timedelta) -> date:
    """A date alone moves as the DICOM engine moves a DA without its TM: taken at noon, plus offset.

    Calls `agent.deidentify.dates.shift_da` itself, so the two can never drift apart.
    """
    try:
        shifted = dates.shift_da(_da(day), offset)
    except OverflowError:
        shifted = None
    parsed = dates.parse_da(shifted) if shifted else None
    if parsed is None:
        raise Invalid("a date too far in the past to be shifted")
    return parsed


def shift_datetime(moment: datetime, offset: timedelta) -> datetime:
    """A date with its time moves as one instant, as the engine moves StudyDate with StudyTime."""
    try:
        new_da, new_tm = dates.shift_date_time(_da(moment.date()), moment.strftime("%H%M%S"), offset)
    except OverflowError:
        new_da = new_tm = None
    day = dates.parse_da(new_da) if new_da else None
    if day is None or new_tm is None:
        raise Invalid("a date too far in the past to be shifted")
    return datetime(day.year, day.month, day.day, int(new_tm[:2]), int(new_tm[2:4]), int(new_tm[4:6]))


def code(column: KeptColumn, text: str) -> str:
    """The allowed code as the schema spells it (case, spacing and aliases are forgiven)."""
    allowed = (column.lookup or {}).get(normalise_code(text))
    if allowed is None:
        listed = f" ({', '.join(column.allowed)})" if len(column.allowed) <= 8 else ""
        raise Invalid(f"not one of the allowed values{listed}")
    return allowed


def number(column: KeptColumn, text: str, *, decimal_comma: bool) -> str:
    """The number in the range, written plainly (`1e3` is `1000`); an integer may be banded.

    `decimal_comma`: the file is `;`- or tab-delimited, as Excel writes where `12,5` means 12.5.
    """
    if decimal_comma and _DECIMAL_COMMA.fullmatch(text):
        text = text.replace(",", ".")
    integer = column.type == ColumnType.INTEGER
    if not (_INTEGER if integer else _NUMBER).fullmatch(text):
        raise Invalid("not a whole number" if integer else "not a number")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise Invalid("not a number") from None
    assert column.number_range is not None
    low, high = column.number_range
    if not low <= value <= high:
        raise Invalid(f"outside the range [{low}, {high}]")
    if not integer:
        return format(value, "f")
    whole = int(value)
    return column.bands.label(whole) if column.bands is not None else str(whole)
