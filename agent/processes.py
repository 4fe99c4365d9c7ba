"""Child processes of the daemon: named for `ps` and `top`, and never outliving it.

Linux-only (prctl), like the systemd unit the agent ships with.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _prctl(option: int, value: int | bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, value, 0, 0, 0)


def name_process(name: str) -> None:
    """Set the name `ps -o comm`, `top` and /proc/PID/comm show (15 bytes at most)."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


def die_with(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the daemon dies, kill -9 included.

    A restarted daemon must never share the spool with a process that outlived the old one: its
    start-up sweep would race that process's writes.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the daemon died before the request took effect
        os._exit(0)
