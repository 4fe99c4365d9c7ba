"""Run the real daemon (`nmip-agent serve`) as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agent.keys import init_key_file
from tests.peers.ports import free_port
from tests.peers.dcmtk import STORESCU


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Daemon:
    """A configured agent in `root`; start, stop (SIGTERM), kill (SIGKILL), status."""

    #: Every daemon a test started and did not stop; tests/scenarios/conftest.py kills them after
    #: each test, so a failed assertion never leaves an agent running.
    running: set["Daemon"] = set()

    def __init__(self, root: Path, *, optouts: tuple[str, ...] | None = (), **overrides: Any) -> None:
        """`optouts`: the opt-out list imported before the start (the nccid and nmip profiles
        deliver nothing without a current one); None imports none."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        key = root / "site.key"
        if not key.exists():
            init_key_file(key)
        config: dict[str, Any] = {
            "receive": {"ae_title": "NMIP_AGENT", "bind_address": "127.0.0.1", "port": self.port,
                        "allowed_peers": [{"ae_title": "STORESCU", "address": "127.0.0.1"},
                                          {"ae_title": "ORTHANC", "address": "127.0.0.1"},
                                          {"ae_title": "PYNETDICOM", "address": "127.0.0.1"}]},
            "spool": {"directory": "spool"},
            "pipeline": {"key_file": "site.key", "database": "state.sqlite", "outbox": "outbox",
                         "quarantine": "quarantine", "quiet_period_s": 1, "workers": 1},
        }
        for dotted, value in overrides.items():
            section, key_name = dotted.split("__")
            config.setdefault(section, {})[key_name] = value
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        if optouts is not None:
            self.import_optouts(optouts)
        self.log_path = root / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # added to the environment `serve` starts with (NOTIFY_SOCKET...)

    def import_optouts(self, identifiers: tuple[str, ...]) -> None:
        """What `nmip-agent optout import` does, in this process (a subprocess per daemon is slow)."""
        from agent import optout
        from agent.config import load
        from agent.keys import load_key_file
        from agent.spool.choices import Choices
        from agent.spool.state import State

        config = load(self.config_path)
        key = load_key_file(config.pipeline.key_file)
        state = State(config.pipeline.database, upgrade=True)
        try:
            Choices(state).replace_list(optout.tokens(key, identifiers), lambda i: optout.token(key, i), "test")
        finally:
            state.close()

    def _started(self, offset: int) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return b'"agent_started"' in log.read()

    def start(self) -> "Daemon":
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env={**os.environ, **self.env},
        )
        log.close()
        Daemon.running.add(self)
        # agent_started is logged once every receiver process accepts on the port.
        wait_for(lambda: self._started(log_offset) or self.process.poll() is not None, what="the agent to start")
        assert self.process.poll() is None, self.log_path.read_text()
        return self

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.process = None
        Daemon.running.discard(self)
        return code

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None
        Daemon.running.discard(self)

    def children(self) -> list[int]:
        """The daemon's child processes: receivers and de-identification workers."""
        assert self.process is not None
        pid = self.process.pid
        children: list[int] = []
        for task in Path(f"/proc/{pid}/task").iterdir():  # each thread's own: a replaced pool is started by another
            try:
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue  # the thread ended meanwhile
        return children

    def receiver_pids(self) -> list[int]:
        def is_receiver(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/comm").read_text().startswith("nmip-receive")
            except OSError:
                return False
        return [pid for pid in self.children() if is_receiver(pid)]

    def status(self) -> dict[str, Any]:
        run = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(self.config_path), "--json"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout))

    def show(self, study_key: str) -> dict[str, Any]:
        """`quarantine show STUDY_KEY`: the study's held series, instances and audit trail."""
        run = subprocess.run([sys.executable, "-m", "agent.cli", "quarantine", "show", study_key, "--config",
                              str(self.config_path)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout))

    def wait_queued(self, studies: int, timeout: float = 60.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            report = self.status()
            settled = sum(report["studies"].get(state, 0) for state in ("queued", "quarantined", "excluded"))
            busy = report["studies"].get("receiving", 0) + report["studies"].get("stable", 0)
            return report if settled >= studies and not busy else None

        return wait_for(done, timeout, interval=0.3, what=f"{studies} settled stud(ies)")

    def outbox_files(self) -> list[Path]:
        return sorted(p for p in (self.root / "outbox").rglob("*.dcm") if ".staging" not in p.parts)

    def log_text(self) -> str:
        return self.log_path.read_text()

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.stop()


def storescu(port: int, paths: list[Path], *, calling_ae: str = "STORESCU", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu as the PACS (TCP_NODELAY=1, or it stalls 40 ms per instance)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run([STORESCU, "-v", "-aet", calling_ae, "-aec", "NMIP_AGENT", *extra, "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, env=env, timeout=300)
