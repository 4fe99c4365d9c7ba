"""Date and time shifting: one instant per date-time pair, precision and time zone kept."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.deidentify import dates

FIVE_HOURS_LATER_A_MONTH_EARLIER = timedelta(days=-30, hours=5)


def test_pair_crossing_midnight_moves_the_date() -> None:
    """23:30 shifted by +5 h lands on the next day, in both the date and the time."""
    assert dates.shift_date_time("20200315", "233000", FIVE_HOURS_LATER_A_MONTH_EARLIER) == ("20200215", "043000")


def test_time_precision_is_kept() -> None:
    """HHMM stays HHMM, and fractions keep their number of digits."""
    assert dates.shift_date_time("20200315", "2330", timedelta(hours=1)) == ("20200316", "0030")
    assert dates.shift_time("120000.25", timedelta(minutes=1)) == "120100.25"


def test_datetime_keeps_precision_and_zone() -> None:
    """DT values keep their length and their UTC offset suffix."""
    assert dates.shift_dt("20200315233000.123456+0100", FIVE_HOURS_LATER_A_MONTH_EARLIER) == "20200215043000.123456+0100"
    assert dates.shift_dt("202003", timedelta(days=-40)) == "202002"


def test_date_alone_is_shifted_at_noon() -> None:
    """A date without a time moves as if it were noon: the same date always maps the same way."""
    assert dates.shift_da("20200315", timedelta(days=-1, hours=13)) == "20200315"
    assert dates.shift_da("20200315", timedelta(days=-1, hours=11)) == "20200314"


@pytest.mark.parametrize("value", ["", "2020", "20201399", "not a date", "20200101-20200131"])
def test_unparseable_dates_give_none(value: str) -> None:
    """What is not a date is not guessed at: the caller empties it."""
    assert dates.shift_da(value, timedelta(days=-3)) is None


def test_intervals_between_a_patients_dates_are_kept() -> None:
    """Two studies 17 days and 3 hours apart are still that far apart after the shift."""
    offset = timedelta(days=-400, seconds=12345)
    a = dates.shift_date_time("20200101", "080000", offset)
    b = dates.shift_date_time("20200118", "110000", offset)
    from datetime import datetime

    fmt = "%Y%m%d%H%M%S"
    gap = datetime.strptime(b[0] + b[1], fmt) - datetime.strptime(a[0] + a[1], fmt)
    assert gap == timedelta(days=17, hours=3)


def test_pairs_come_from_the_dictionary() -> None:
    """StudyDate pairs with StudyTime, AcquisitionDate with AcquisitionTime, and so on."""
    assert dates.DATE_TO_TIME[0x00080020] == 0x00080030
    assert dates.DATE_TO_TIME[0x00080022] == 0x00080032
    assert dates.DATE_TO_TIME[0x00100030] == 0x00100032
