"""A hospital's forward proxy for delivery tests: Debian's tinyproxy on a free loopback port.

HTTPS goes through it by CONNECT, so TLS (and the client certificate) stays end to end between
the agent and the platform; the proxy's log shows each tunnel it opened.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.peers.ports import free_port, stop_process, wait_for_port

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


@dataclass(frozen=True)
class ForwardProxy:
    url: str
    log: Path

    def tunnels(self) -> list[str]:
        """The `host:port` of every CONNECT the proxy was asked for."""
        text = self.log.read_text() if self.log.exists() else ""
        return [line.split("CONNECT ", 2)[-1].split()[0] for line in text.splitlines() if "): CONNECT " in line]


def proxy_available() -> bool:
    return shutil.which("tinyproxy") is not None


@contextmanager
def forward_proxy(workdir: Path, connect_port: int) -> Iterator[ForwardProxy]:
    """tinyproxy allowing CONNECT from loopback to `connect_port` only, stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), workdir / "tinyproxy.log"
    config = workdir / "tinyproxy.conf"
    config.write_text(f'Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile "{log}"\nLogLevel Connect\n'
                      f"MaxClients 20\nAllow 127.0.0.1\nConnectPort {connect_port}\nDisableViaHeader Yes\n")
    process = subprocess.Popen([TINYPROXY, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield ForwardProxy(f"http://127.0.0.1:{port}", log)
    finally:
        stop_process(process)
