"""Shifting DA, TM and DT values by a patient's offset, keeping each value's precision.

A date and the time paired with it (StudyDate with StudyTime, ...) are shifted as one instant,
so a study at 23:30 moved by a few hours lands on the next day in both attributes.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta

from pydicom._dicom_dict import DicomDictionary
from pydicom.datadict import tag_for_keyword

_NOON = time(12, 0)
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def _date_time_pairs() -> dict[int, int]:
    """DA tag -> TM tag for attributes named `...Date` / `...Time` in the data dictionary."""
    pairs = {}
    for tag, entry in DicomDictionary.items():
        vr, keyword = entry[0], entry[4]
        if vr == "DA" and keyword.endswith("Date"):
            time_tag = tag_for_keyword(keyword[:-4] + "Time")
            if time_tag is not None and DicomDictionary[time_tag][0] == "TM":
                pairs[tag] = time_tag
    return pairs


DATE_TO_TIME: dict[int, int] = _date_time_pairs()
TIME_TO_DATE: dict[int, int] = {t: d for d, t in DATE_TO_TIME.items()}


def parse_da(value: str) -> date | None:
    """A DA value (`YYYYMMDD`, or the ACR-NEMA `YYYY.MM.DD`), or None when it is not a date."""
    text = value.strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _parse_tm(value: str) -> tuple[time, int] | None:
    """A TM value and its number of components (1 = HH ... 4 = with fraction)."""
    text = value.strip().replace(":", "")
    match = _TM.match(text)
    if not match:
        return None
    hh, mm, ss, frac = match.groups()
    try:
        parsed = time(int(hh), int(mm or 0), min(int(ss or 0), 59), int((frac or ".0")[1:].ljust(6, "0")))
    except ValueError:
        return None
    precision = 1 + (mm is not None) + (ss is not None) + (frac is not None)
    return parsed, precision


def _format_tm(value: time, precision: int, template: str) -> str:
    out = f"{value.hour:02d}"
    if precision >= 2:
        out += f"{value.minute:02d}"
    if precision >= 3:
        out += f"{value.second:02d}"
    if precision >= 4:
        digits = len(template.strip().split(".", 1)[1])
        out += "." + f"{value.microsecond:06d}"[:digits]
    return out


def shift_date_time(da: str, tm: str | None, offset: timedelta) -> tuple[str | None, str | None]:
    """Shift a date with its paired time as one instant; None for a part that cannot be parsed.

    Without a time, the date is taken at noon: a fixed choice, so the same date always maps to the
    same shifted date for a patient.
    """
    day = parse_da(da)
    parsed_tm = _parse_tm(tm) if tm else None
    if day is None:
        return None, (shift_time(tm, offset) if tm else None)
    moment = datetime.combine(day, parsed_tm[0] if parsed_tm else _NOON) + offset
    new_da = moment.strftime("%Y%m%d")
    if tm is None:
        return new_da, None
    if parsed_tm is None:
        return new_da, None
    return new_da, _format_tm(moment.time(), parsed_tm[1], tm)


def shift_time(tm: str, offset: timedelta) -> str | None:
    """Shift a time that has no paired date: only the time-of-day part of the offset applies."""
    parsed = _parse_tm(tm)
    if parsed is None:
        return None
    moment = datetime.combine(date(2000, 1, 1), parsed[0]) + offset
    return _format_tm(moment.time(), parsed[1], tm)


def shift_dt(value: str, offset: timedelta) -> str | None:
    """Shift a DT value, keeping its precision and its UTC offset suffix."""
    match = _DT.match(value.strip())
    if not match:
        return None
    yyyy, mo, dd, hh, mi, ss, frac, zone = match.groups()
    parts = [yyyy, mo, dd, hh, mi, ss]
    precision = sum(p is not None for p in parts)
    # Missing parts are taken at their middle (July, the 15th, noon), as a date alone is taken
    # at noon, so a partial value moves to where its full form would most likely move.
    try:
        moment = datetime(
            int(yyyy), int(mo or 7), int(dd or 15), int(hh or 12),
            int(mi or 0), min(int(ss or 0), 59), int((frac or ".0")[1:].ljust(6, "0")),
        )
    except ValueError:
        return None
    moment += offset
    full = moment.strftime("%Y%m%d%H%M%S")
    out = full[: [4, 6, 8, 10, 12, 14][precision - 1]]
    if frac is not None and precision == 6:
        out += "." + f"{moment.microsecond:06d}"[: len(frac) - 1]
    return out + (zone or "")


def shift_da(value: str, offset: timedelta) -> str | None:
    """Shift a date that has no paired time (taken at noon)."""
    return shift_date_time(value, None, offset)[0]
