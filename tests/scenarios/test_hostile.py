"""Hostile instances pushed to the running daemon: each ends bounded, with its own reason, while
the daemon keeps serving other associations; a worker that dies is replaced, and an instance that
kills its worker every time is refused instead of being tried for ever."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE, _config

from tests.hostile import huge_declared_length, huge_value, many_values, nested, quietly
from tests.scenarios.daemon import Daemon, storescu, wait_for
from tests.scenarios.test_daemon import study_files
from tests.synthetic import Patient
from tests.peers.dcmtk import ECHOSCU, dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")

CT_IMAGE_STORAGE, EXPLICIT_LE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"


def send_raw(port: int, paths: list[Path]) -> dict[str, int | None]:
    """C-STORE each file's bytes as they are (pynetdicom streams the file; DCMTK's storescu
    cannot even read a dataset nested 10,000 deep). Returns each file's status, None when refused."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_LE)
        assoc = ae.associate("127.0.0.1", port, ae_title="NMIP_AGENT")
        assert assoc.is_established
        statuses: dict[str, int | None] = {}
        for path in paths:
            status = assoc.send_c_store(path)
            statuses[path.stem] = int(status.Status) if status else None
        assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def memory_mb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) // 1024
        except OSError:
            pass
    return total


def test_hostile_pushes_end_bounded_while_another_association_is_served(tmp_path: Path) -> None:
    """Nesting 10,000 deep, a 10 MB value and 500,000 values are each quarantined (resource_limit,
    naming the limit); a value declaring 2 GiB is refused at C-STORE (the stream is cut short);
    a real study sent meanwhile on another association is received and de-identified; the whole
    daemon stays under 1.5 GB."""
    hostile = {"nested": nested(10_000), "huge_value": huge_value(), "many_values": many_values(),
               "huge_length": huge_declared_length()}
    paths = []
    for name, data in hostile.items():
        paths.append(tmp_path / "hostile" / f"{name}.dcm")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        paths[-1].write_bytes(data)
    normal = study_files(tmp_path / "pacs", n_series=2, n_per_series=3)
    peak = [0]
    with Daemon(tmp_path / "agent", pipeline__workers=2) as agent:
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                assert agent.process is not None
                peak[0] = max(peak[0], memory_mb([agent.process.pid, *agent.children()]))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        statuses: dict[str, dict[str, int | None]] = {}
        sender = threading.Thread(target=lambda: statuses.setdefault("hostile", send_raw(agent.port, paths)))
        sender.start()
        sent = storescu(agent.port, normal)
        sender.join(120)
        report = agent.wait_queued(4)
        stop.set()
        watcher.join()
        details = {entry["series"][0]["reason"]: entry for entry in report["quarantine"]}
        shown = [agent.show(entry["study_key"]) for entry in report["quarantine"]]
    assert sent.returncode == 0, sent.stderr
    assert statuses["hostile"] == {"nested": 0, "huge_value": 0, "many_values": 0, "huge_length": 0xC210}
    assert report["studies"] == {"queued": 1, "quarantined": 3}
    assert report["instances"] == {"deidentified": 6, "quarantined": 3}
    assert set(details) == {"resource_limit"}
    limits = sorted(str(s["instances"][0]["detail"]).split(":")[0] for s in shown)
    assert limits == ["max_depth", "max_elements", "max_value_bytes"], limits
    assert peak[0] < 1536, f"the daemon and its children peaked at {peak[0]} MB"


def _worker(agent: Daemon, not_pid: int | None = None, timeout: float = 60.0) -> int:
    """The de-identification worker's pid, once it is busy (its CPU time rising)."""
    def busy() -> int | None:
        for pid in agent.children():
            try:
                if not Path(f"/proc/{pid}/comm").read_text().startswith("nmip-deidentify") or pid == not_pid:
                    continue
                before = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11])
                time.sleep(0.3)
                after = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11])
            except (OSError, IndexError, ValueError):
                continue
            if after - before >= 10:  # clock ticks: at least a tenth of a second in 0.3 s
                return pid
        return None

    return int(wait_for(busy, timeout, 0.1, "a busy de-identification worker"))


def test_a_worker_killed_is_replaced_and_an_instance_that_kills_it_twice_is_refused(tmp_path: Path) -> None:
    """As the kernel's OOM killer or the unit's MemoryMax would: the worker de-identifying a slow
    instance (a 3 MB comment, with the value limit lifted) is killed. The daemon replaces it and
    tries the instance again alone; killed again, the instance is quarantined (resource_limit), and
    the daemon goes on serving and de-identifying."""
    slow = tmp_path / "slow" / "slow.dcm"
    slow.parent.mkdir(parents=True)
    slow.write_bytes(quietly(lambda ds: setattr(ds, "ImageComments", "lorem ipsum dolor " * ((3 << 20) // 18))))
    with Daemon(tmp_path / "agent", pipeline__workers=1, limits__max_value_bytes=1 << 30,
                limits__instance_seconds=3600) as agent:
        assert storescu(agent.port, [slow]).returncode == 0
        first = _worker(agent)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: agent.log_text().count('"worker_replaced"') >= 1, 60, 0.2, "the worker replaced")
        second = _worker(agent, not_pid=first)
        os.kill(second, signal.SIGKILL)
        report = agent.wait_queued(1, timeout=120)
        assert report["instances"] == {"quarantined": 1}
        held = agent.show(report["quarantine"][0]["study_key"])
        assert held["instances"][0]["reason"] == "resource_limit"
        assert "killed" in str(held["instances"][0]["detail"])
        files = study_files(tmp_path / "pacs", Patient(patient_id="HOSP000042"), n_series=1, n_per_series=3)
        assert storescu(agent.port, files).returncode == 0
        report = agent.wait_queued(2)
        echo = subprocess.run([ECHOSCU, "-aet", "STORESCU", "-aec", "NMIP_AGENT", "127.0.0.1", str(agent.port)],
                              capture_output=True, text=True, timeout=60)
    assert report["instances"] == {"quarantined": 1, "deidentified": 3}
    assert echo.returncode == 0


def test_a_replacement_worker_does_not_apply_a_profile_changed_since_start(tmp_path: Path) -> None:
    """The profile is edited on disk while the daemon runs, then a worker dies: the new worker
    refuses to start with a profile other than the one the daemon stated at start, the instance
    is not refused for it (it waits, `stable`), and the log says to restart."""
    from agent.deidentify.profile import PROFILES_DIR

    profiles = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, profiles)
    slow = tmp_path / "slow" / "slow.dcm"
    slow.parent.mkdir(parents=True)
    slow.write_bytes(quietly(lambda ds: setattr(ds, "ImageComments", "lorem ipsum dolor " * ((3 << 20) // 18))))
    with Daemon(tmp_path / "agent", pipeline__workers=1, pipeline__profile=str(profiles / "nccid.yaml"),
                limits__max_value_bytes=1 << 30, limits__instance_seconds=3600) as agent:
        assert storescu(agent.port, [slow]).returncode == 0
        worker = _worker(agent)
        with (profiles / "deid.nccid").open("a") as recipe:
            recipe.write("\n# edited while the agent runs\n")
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: '"workers_failed_to_start"' in agent.log_text(), 60, 0.2, "the new worker refusing")
        report = agent.status()
    assert report["studies"] == {"stable": 1} and report["quarantine"] == []
