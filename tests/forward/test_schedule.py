"""When and how fast the agent sends: backoff, Retry-After, upload windows, the rate limiter's pacing."""

from __future__ import annotations

import datetime as dt
import email.utils
import time

import pytest

from agent.forward import Backoff, RateLimiter, UploadWindow, parse_retry_after
from agent.forward.errors import RETRY_AFTER_LIMIT_S


def test_backoff_ceiling_doubles_up_to_max() -> None:
    """The longest wait doubles with each failure in a row, from initial_s, and stops at max_s."""
    backoff = Backoff(2.0, 600.0)
    assert [backoff.ceiling(n) for n in range(10)] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600]
    assert backoff.ceiling(10_000) == 600.0


def test_backoff_full_jitter_spans_zero_to_ceiling() -> None:
    """Each delay is drawn uniformly between 0 and the ceiling (full jitter), so retries spread out."""
    assert Backoff(2.0, 600.0, random=lambda: 0.0).delay(5) == 0.0
    assert Backoff(2.0, 600.0, random=lambda: 0.999999).delay(5) == pytest.approx(64.0, rel=1e-5)
    delays = [Backoff(1.0, 100.0).delay(3) for _ in range(500)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 4.0, "the delays are spread, not in step"


def test_backoff_never_retries_sooner_than_retry_after() -> None:
    """A Retry-After is a floor, even above max_s; a shorter one leaves the jittered delay alone."""
    backoff = Backoff(2.0, 60.0, random=lambda: 0.5)
    assert backoff.delay(0, retry_after_s=120.0) == 120.0
    assert backoff.delay(4, retry_after_s=1.0) == 16.0


def test_backoff_caps_an_absurd_retry_after() -> None:
    """A Retry-After of days is honoured up to an hour only, so a bad header cannot stall delivery."""
    assert Backoff(2.0, 600.0, random=lambda: 0.0).delay(0, retry_after_s=7 * 86400) == RETRY_AFTER_LIMIT_S


def test_backoff_refuses_inverted_bounds() -> None:
    """initial_s above max_s is a programming error, said at construction."""
    with pytest.raises(ValueError):
        Backoff(10.0, 1.0)


def test_retry_after_in_seconds_and_as_http_date() -> None:
    """Retry-After is read as delay-seconds or as an HTTP-date (RFC 9110 10.2.3); garbage is None."""
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("86400000") == RETRY_AFTER_LIMIT_S
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None and parse_retry_after("") is None


def _at(hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, 10, hour, minute, second)


def test_window_crossing_midnight() -> None:
    """19:00-07:00 is open from 19:00 (included) through midnight to 07:00 (excluded)."""
    window = UploadWindow.parse("19:00-07:00")
    assert [window.is_open(_at(h)) for h in (18, 19, 23, 0, 6)] == [False, True, True, True, True]
    assert not window.is_open(_at(7)) and window.is_open(_at(6, 59, 59))
    assert not window.is_open(_at(12))


def test_window_within_a_day() -> None:
    """09:30-17:00 is open in between only."""
    window = UploadWindow.parse("09:30-17:00")
    assert [window.is_open(_at(h, m)) for h, m in ((9, 29), (9, 30), (16, 59), (17, 0), (23, 0))] == \
        [False, True, True, False, False]


def test_no_window_is_always_open() -> None:
    """An empty window, or one that starts where it ends, never holds an upload back."""
    for text in ("", "08:00-08:00"):
        window = UploadWindow.parse(text)
        assert window.always and window.is_open(_at(3)) and window.seconds_until_open(_at(3)) == 0.0


def test_seconds_until_open() -> None:
    """Closed, the wait runs to the next opening: later today, or tomorrow morning; open, zero."""
    night = UploadWindow.parse("19:00-07:00")
    assert night.seconds_until_open(_at(12)) == 7 * 3600
    assert night.seconds_until_open(_at(7)) == 12 * 3600
    assert night.seconds_until_open(_at(22)) == 0.0
    day = UploadWindow.parse("09:30-17:00")
    assert day.seconds_until_open(_at(17, 0)) == 16.5 * 3600, "after closing: tomorrow's opening"
    assert day.seconds_until_open(_at(8, 0)) == 1.5 * 3600


def test_window_with_time_zone_aware_now() -> None:
    """An aware local time works as a naive one (the wall clock decides)."""
    zone = dt.timezone(dt.timedelta(hours=1))
    window = UploadWindow.parse("19:00-07:00")
    assert window.is_open(dt.datetime(2026, 3, 10, 20, 0, tzinfo=zone))
    assert window.seconds_until_open(dt.datetime(2026, 3, 10, 18, 0, tzinfo=zone)) == 3600


class FakeClock:
    """A clock that moves only when the limiter sleeps: pacing arithmetic without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rate_limiter_keeps_the_running_total_on_the_rate() -> None:
    """Sending 1 MB at 100 kB/s takes 10 s of (fake) clock, give or take one slice of burst."""
    clock = FakeClock()
    limiter = RateLimiter(100_000, clock=clock, sleep=clock.sleep)
    sent = sum(len(piece) for piece in limiter.paced(b"x" * 1_000_000))
    assert sent == 1_000_000
    assert 10.0 - limiter.chunk_bytes / 100_000 <= clock.now - 1000.0 <= 10.0 + 1e-6


def test_rate_limiter_is_shared_between_bodies() -> None:
    """Two bodies through one limiter together keep to the one rate."""
    clock = FakeClock()
    limiter = RateLimiter(50_000, clock=clock, sleep=clock.sleep)
    for _ in limiter.paced(b"a" * 100_000):
        pass
    for _ in limiter.paced(b"b" * 100_000):
        pass
    assert clock.now - 1000.0 == pytest.approx(4.0, abs=limiter.chunk_bytes / 50_000)


def test_rate_limiter_from_megabits() -> None:
    """bandwidth_mbit_s is megabits: 8 Mbit/s is 1,000,000 bytes/s; 0 means no limiter."""
    limiter = RateLimiter.megabits(8)
    assert limiter is not None and limiter.bytes_per_s == 1_000_000
    assert RateLimiter.megabits(0) is None


def test_each_site_opens_its_window_at_its_own_keyed_offset() -> None:
    """A nation's agents do not all connect at 19:00: the offset is keyed, stable, under 10 min."""
    import datetime as dt

    from agent.forward.schedule import UploadWindow, window_offset_s

    offsets = {window_offset_s(bytes([n]) * 32) for n in range(40)}
    assert all(0 <= o < 600 for o in offsets) and len(offsets) > 30
    assert window_offset_s(b"k" * 32) == window_offset_s(b"k" * 32)
    window = UploadWindow.parse("19:00-07:00").opening_later(317)
    assert window.start == dt.time(19, 5, 17) and window.end == dt.time(7, 0)
    assert not window.is_open(dt.datetime(2026, 12, 4, 19, 5, 16)) and window.is_open(dt.datetime(2026, 12, 4, 19, 5, 17))
    assert UploadWindow.parse("").opening_later(317).always


def test_a_short_window_is_never_turned_inside_out_by_the_offset() -> None:
    """22:00-22:05 shifted by 9 minutes would open 22:09-22:05: almost the whole day."""
    import datetime as dt

    from agent.forward.schedule import UploadWindow

    for text, offset in (("22:00-22:05", 540), ("23:55-00:02", 599), ("00:00-00:05", 400)):
        window = UploadWindow.parse(text)
        shifted = window.opening_later(offset)
        open_minutes = sum(shifted.is_open(dt.datetime(2026, 12, 4) + dt.timedelta(minutes=m)) for m in range(1440))
        assert 0 < open_minutes <= 7, (text, shifted)
