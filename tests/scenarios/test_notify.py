"""systemd's notify protocol, with the test's own socket as NOTIFY_SOCKET (no systemd needed)."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import pytest

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


def test_sighup_takes_the_allowed_peers_again_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    import signal

    import yaml

    from tests.peers.dcmtk import dcmtk_available
    from tests.scenarios.daemon import storescu, wait_for
    from tests.synthetic import make_study, write

    if not dcmtk_available():
        pytest.skip("DCMTK is installed by make test")
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(make_study(n_series=1, n_per_series=1))]
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600) as agent:
        assert storescu(agent.port, files).returncode == 0
        config = yaml.safe_load(agent.config_path.read_text())
        config["receive"]["allowed_peers"] = [{"ae_title": "NEWPACS", "address": "127.0.0.1"}]
        config["pipeline"]["workers"] = 3  # needs a restart
        agent.config_path.write_text(yaml.safe_dump(config))
        agent.process.send_signal(signal.SIGHUP)
        wait_for(lambda: '"config_reloaded"' in agent.log_text(), what="the reload")
        # Once the reload is logged, every receiver process judges by the new list: the kernel
        # hands each association to any of them, so a few of each must all go the same way.
        for _ in range(4):
            assert storescu(agent.port, files, calling_ae="NEWPACS").returncode == 0
            assert storescu(agent.port, files).returncode != 0
        log = agent.log_text()
        assert '"config_reload_incomplete"' not in log
        assert '"config_change_needs_restart"' in log and "pipeline.workers" in log
        assert agent.process.poll() is None  # still serving


def test_ctrl_c_stops_the_agent_and_its_workers_without_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C under `make run` reaches every process of the terminal's group."""
    import os
    import signal
    import subprocess
    import sys

    from tests.scenarios.daemon import wait_for

    agent = Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600)  # writes the config only
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--config", str(agent.config_path)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=agent.root, start_new_session=True)
    try:
        wait_for(lambda: b'"agent_started"' in log.read_bytes(), what="the agent to start")
        time.sleep(1.0)  # the workers are up and waiting on their queue
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert '"agent_stopped"' in text
