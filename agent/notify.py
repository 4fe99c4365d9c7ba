"""systemd's notify protocol, and the loops' signs of life behind its watchdog.

`serve` under `Type=notify` says READY=1 once the SCP listens and the state database is open,
STATUS= with the queue depths, STOPPING=1 on SIGTERM, and WATCHDOG=1 every few seconds while
every loop (receivers, pipeline, delivery, clinical intake) is turning. A loop waiting for work
is idle, not stuck; a loop busy in one step for longer than `stuck_after_s` is stuck, and the
keep-alives stop, so systemd restarts the service (WatchdogSec=, Restart=on-failure). The
protocol is a datagram to the socket in NOTIFY_SOCKET; with no such socket nothing is sent.
"""

from __future__ import annotations

import os
import socket
import time

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


__all__ = ["STUCK_AFTER_S", "Heartbeat", "Notifier"]
