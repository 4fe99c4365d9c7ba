"""systemd's notify protocol, with the test's own socket as NOTIFY_SOCKET (no systemd needed)."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

from tests.scenarios.daemon import Daemon


def _messages(sock: socket.socket, until: float) -> list[str]:
    found = []
    sock.settimeout(0.2)
    while time.monotonic() < until:
        try:
            found.append(sock.recv(4096).decode())
        except socket.timeout:
            continue
    return found


def test_ready_status_watchdog_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="nmip-notify-"))  # a short path: AF_UNIX allows 107 bytes
    address = str(folder / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    try:
        agent = Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600)
        agent.env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}
        with agent:
            first = _messages(sock, time.monotonic() + 4)
            ready = [m for m in first if "READY=1" in m]
            assert ready and "STATUS=studies: " in ready[0], first
            assert sum("WATCHDOG=1" in m for m in first) >= 2, first  # every second (half of 2 s), all loops idle
        last = _messages(sock, time.monotonic() + 1)
        assert any("STOPPING=1" in m for m in first + last)
    finally:
        sock.close()
        Path(address).unlink(missing_ok=True)
        folder.rmdir()


def test_a_loop_busy_too_long_stops_the_keepalives(tmp_path: Path) -> None:
    """Idle is not stuck; busy in one step past the limit is."""
    from agent.notify import Heartbeat

    beat = Heartbeat("pipeline")
    assert not beat.stuck(0.01)  # idle from the start
    beat.beat()
    time.sleep(0.05)
    assert beat.stuck(0.01)
    beat.idle()
    assert not beat.stuck(0.01)


def test_status_says_first_whether_the_agent_runs_and_since_when(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    def status(agent: Daemon) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(agent.config_path)],
                              capture_output=True, text=True, timeout=60)

    agent = Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600)
    with agent:
        shown = status(agent)
        assert shown.stdout.splitlines()[0].startswith("agent: running (pid "), shown.stdout
        data = json.loads(subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config",
                                          str(agent.config_path), "--json"], capture_output=True, text=True,
                                         timeout=60).stdout)
        assert data["daemon"]["running"] and data["daemon"]["pid"] == agent.process.pid and data["daemon"]["since"]
        second = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--config", str(agent.config_path)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "another agent runs on this state database" in second.stderr
    assert status(agent).stdout.splitlines()[0].startswith("agent: not running")
