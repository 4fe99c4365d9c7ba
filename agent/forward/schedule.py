"""When and how fast the agent sends: retry backoff, upload windows, and the bandwidth cap."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.forward.errors import RETRY_AFTER_LIMIT_S

_MAX_EXPONENT = 62  # 2**62 seconds is beyond any max_s: stop doubling before floats overflow


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(max_s, initial_s * 2**n)].

    Full jitter (rather than a fixed doubling) spreads the retries of many studies, and of many
    hospitals after a platform outage, instead of having them return in step. A Retry-After from
    the platform is a floor: never retry sooner than asked (up to RETRY_AFTER_LIMIT_S).
    """

    initial_s: float
    max_s: float
    random: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after the `attempt`-th failure in a row (0 for the first)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before the next attempt, after `attempt` + 1 failures in a row."""
        wait = self.random() * self.ceiling(attempt)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, max(self.max_s, RETRY_AFTER_LIMIT_S)))
        return wait


@dataclass(frozen=True)
class UploadWindow:
    """Local wall-clock hours in which uploads may run, such as 19:00-07:00 (crossing midnight).

    `start` is included and `end` excluded; no window (`UploadWindow.parse("")`) is always open,
    and a window whose start equals its end is open all day.
    """

    start: datetime.time | None = None
    end: datetime.time | None = None

    @classmethod
    def parse(cls, text: str) -> UploadWindow:
        """Read "HH:MM-HH:MM" (checked by agent.config) or "" for always."""
        text = text.strip()
        if not text:
            return cls()
        first, _, second = text.partition("-")
        try:
            return cls(datetime.time.fromisoformat(first.strip()), datetime.time.fromisoformat(second.strip()))
        except ValueError:
            raise ValueError(f"an upload window is HH:MM-HH:MM, got {text!r}") from None

    @property
    def always(self) -> bool:
        return self.start is None or self.end is None or self.start == self.end

    def opening_later(self, seconds: int) -> UploadWindow:
        """The same window opening `seconds` later (the site's keyed offset: a nation's agents do
        not all connect at 19:00); the end stays."""
        if self.always or seconds <= 0:
            return self
        assert self.start is not None and self.end is not None
        length = (self.end.hour * 3600 + self.end.minute * 60 + self.end.second
                  - self.start.hour * 3600 - self.start.minute * 60 - self.start.second) % 86_400
        seconds = min(seconds, length // 4)  # a short window keeps at least three quarters of itself
        if seconds <= 0:
            return self
        moment = datetime.datetime.combine(datetime.date(2000, 1, 1), self.start) + datetime.timedelta(seconds=seconds)
        shifted = moment.time()
        return self if shifted == self.end else UploadWindow(shifted, self.end)


    def is_open(self, now: datetime.datetime) -> bool:
        """True when `now` (local time, naive or aware) falls in the window."""
        if self.always:
            return True
        assert self.start is not None and self.end is not None
        moment = now.time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # crosses midnight

    def seconds_until_open(self, now: datetime.datetime) -> float:
        """0 when open; otherwise seconds until the window next opens (wall-clock arithmetic).

        Across a daylight-saving change this can be an hour off; the caller checks is_open again
        when it wakes up, so it only sleeps or retries once more.
        """
        if self.is_open(now):
            return 0.0
        assert self.start is not None
        opening = datetime.datetime.combine(now.date(), self.start, tzinfo=now.tzinfo)
        if opening <= now:
            opening += datetime.timedelta(days=1)
        return (opening - now).total_seconds()


def window_offset_s(secret: bytes, spread_s: int = 600) -> int:
    """The site's keyed offset into its upload window, 0 to `spread_s` seconds: the same for one
    site at every start, different between sites, and saying nothing of the key."""
    digest = hmac.new(secret, b"nmip-agent upload window offset", hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big") % spread_s


class RateLimiter:
    """A token bucket shared by every request of a client: at most `bytes_per_s` of request bodies.

    `pace(chunk)` sleeps just long enough to keep the running total on the rate, wherever the
    bytes go (several threads may upload at once; together they keep to the cap). The cap counts
    body bytes, not TLS and HTTP framing, which add a few per cent.
    """

    def __init__(self, bytes_per_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be positive")
        self.bytes_per_s = bytes_per_s
        # Slices of about 20 ms of traffic: smooth enough for a link's queue, few enough sleeps.
        self.chunk_bytes = int(min(max(bytes_per_s * 0.02, 4096), 256 * 1024))
        self._burst_s = self.chunk_bytes / bytes_per_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._due = clock()  # when the bytes granted so far will have gone at the rate

    @classmethod
    def megabits(cls, mbit_s: float) -> RateLimiter | None:
        """The limiter for a `platform.bandwidth_mbit_s` value (0: no cap, None)."""
        return cls(mbit_s * 1_000_000 / 8) if mbit_s > 0 else None

    def pace(self, nbytes: int) -> None:
        """Wait until `nbytes` more may be sent."""
        with self._lock:
            now = self._clock()
            self._due = max(self._due, now - self._burst_s) + nbytes / self.bytes_per_s
            wait = self._due - now
        if wait > 0:
            self._sleep(wait)

    def paced(self, data: bytes) -> Iterator[bytes]:
        """`data` in slices of chunk_bytes, each released at the rate."""
        view = memoryview(data)
        for offset in range(0, len(view), self.chunk_bytes):
            piece = view[offset:offset + self.chunk_bytes]
            self.pace(len(piece))
            yield piece.tobytes()
