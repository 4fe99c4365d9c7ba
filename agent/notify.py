"""systemd's notify protocol, and the loops' signs of life behind its watchdog.

`serve` under `Type=notify` says READY=1 once the SCP listens and the state database is open,
STATUS= with the queue depths, STOPPING=1 on SIGTERM, and WATCHDOG=1 every few seconds while
every loop (receivers, pipeline, delivery, clinical intake) is turning. A loop waiting for work
is idle, not stuck; a loop busy in one step for longer than `stuck_after_s` is stuck, and the
keep-alives stop, so systemd restarts the service (WatchdogSec=, Restart=on-failure). The
protocol is a datagram to the socket in NOTIFY_SOCKET; with no such socket nothing is sent.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from agent.errors import AgentError

#: A step of a loop busy longer than this is stuck (a round of de-identification or delivery
#: returns to its loop between studies; the longest single study stays well below it).
STUCK_AFTER_S = 900.0


class Heartbeat:
    """A loop's sign of life: `beat()` at each turn and between units of work, `idle()` just
    before it waits for work. Written by the loop's thread, read by the main thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._at = time.monotonic()
        self._idle = True

    def beat(self) -> None:
        self._at, self._idle = time.monotonic(), False

    def idle(self) -> None:
        self._at, self._idle = time.monotonic(), True

    def stuck(self, limit_s: float = STUCK_AFTER_S) -> bool:
        return not self._idle and time.monotonic() - self._at > limit_s


class Notifier:
    """Sends to systemd's notify socket, if the service was started with one."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ if environ is None else environ)
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        #: How often to send WATCHDOG=1: half the watchdog's period, as sd_watchdog_enabled advises.
        self.watchdog_interval_s = int(usec) / 2e6 if watched else None

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> None:
        """One message of KEY=VALUE lines; a failure to send is not the service's failure."""
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode("utf-8"), self._address)
        except OSError:
            pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class RunningLock:
    """`serve.lock` beside the state database, held (flock) for as long as `serve` runs, holding
    its pid and start time: `status` can say whether the agent is running, and since when, even
    when a killed agent left the file behind (the kernel drops a dead process's lock)."""

    def __init__(self, database: Path) -> None:
        self.path = database.parent / "serve.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write who holds it; AlreadyRunning if another agent holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        for attempt in range(20):  # `status` holds it shared for a moment while it reads
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            os.close(fd)
            holder = self.holder()
            since = f" (pid {holder['pid']}, since {holder['started_at']})" if holder else ""
            raise AlreadyRunning(f"{self.path}: another agent runs on this state database{since}")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started_at": datetime.now(timezone.utc).isoformat(
            timespec="seconds")}).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def holder(self) -> dict[str, object] | None:
        """Who runs the agent now, or None when nobody holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: read who holds it
                data = os.read(fd, 4096)
                try:
                    found = json.loads(data)
                except ValueError:
                    return {"pid": None, "started_at": None}
                return found if isinstance(found, dict) else None
            return None  # nobody holds it: a stopped (or killed) agent's file
        finally:
            os.close(fd)


class AlreadyRunning(AgentError):
    """Another `serve` holds this state database."""


__all__ = ["STUCK_AFTER_S", "AlreadyRunning", "Heartbeat", "Notifier", "RunningLock"]
