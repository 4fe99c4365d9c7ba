"""What one instance may cost: bounds that real data never reaches and hostile data always does.

A file nested thousands deep, a 10 MB Patient's Name or an element of 500,000 values costs
seconds and gigabytes; nothing in pydicom bounds it. The de-identification engine checks the
structural limits as it walks (before the heavy work on each element), and each worker runs
under a memory limit (RLIMIT_AS) and a per-instance time limit. Breaking one refuses that
instance with reason `resource_limit` and a detail naming the limit; the daemon and the batch go on.
"""

from __future__ import annotations

import resource
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


@dataclass(frozen=True)
class Limits:
    """The `limits:` section of config.yaml; `anonymise` and `check` take the same defaults."""

    max_depth: int = 32  # sequences within sequences; real objects stay under 12
    max_value_bytes: int = 1 << 20  # one text value (LO, PN, UT, ...); an LT holds at most 10 KiB
    max_elements: int = 200_000  # elements and values of multi-valued elements, at every depth
    max_instance_mb: int = 4096  # one instance as received
    worker_memory_mb: int = 4096  # address space of a de-identification worker (RLIMIT_AS)
    instance_seconds: float = 120.0  # wall clock for one instance in a worker


class LimitExceeded(BaseException):
    """One instance broke a limit; `limit` is its configuration key.

    A BaseException, as control flow: the time limit's alarm can fire inside any code, and a
    broad `except Exception` there (pydicom has several) must not swallow it.
    """

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"{limit}: {detail}")
        self.limit = limit
        self.detail = detail


def bound_worker_memory(limits: Limits) -> None:
    """Cap this process's address space: a hostile instance then fails with MemoryError in its
    own worker instead of taking the host's memory. A worker never dumps core: its memory holds
    identifiable data. It is also the first process the kernel kills when memory runs out."""
    wanted = limits.worker_memory_mb << 20
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:  # when memory runs out (the unit's MemoryMax), the kernel kills a worker, not the daemon
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("500")
    except OSError:
        pass  # not Linux, or /proc is not there: the limits above still hold


@contextmanager
def cpu_backstop(limits: Limits) -> Iterator[None]:
    """The kernel's limit behind `time_limit`, whose alarm is raised only between Python steps:
    code that never returns to Python (a C loop on a hostile value) is killed by SIGXCPU once it
    has used twice `instance_seconds` of CPU (plus 5 s). The daemon then replaces the worker and
    retries its instance alone; a batch run does the same."""
    if limits.instance_seconds <= 0:
        yield
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = int(usage.ru_utime + usage.ru_stime + 2 * limits.instance_seconds + 5) + 1
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise LimitExceeded in this (main) thread after `seconds`; elsewhere, no limit."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise LimitExceeded("instance_seconds", f"took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


__all__ = ["LimitExceeded", "Limits", "bound_worker_memory", "cpu_backstop", "time_limit"]
