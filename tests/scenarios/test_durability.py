"""Nothing acknowledged is lost: kill -9 while receiving and while de-identifying, bad streams."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.scenarios.daemon import Daemon, storescu, wait_for
from tests.synthetic import Patient, make_study, write
from tests.peers.dcmtk import STORESCU, dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")


def acknowledged_uids(storescu_output: str, files: list[Path]) -> set[str]:
    """SOP Instance UIDs storescu got a success response for, in the order it sent them."""
    responses = [line for line in storescu_output.splitlines() if "Received Store Response" in line]
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            for f, line in zip(files, responses) if "Success" in line}


def outbox_sources(agent: Daemon, files: list[Path]) -> list[str]:
    """Which source instances have an output, matched by series and instance number."""

    def position(path: Path) -> tuple[int, int]:
        ds = dcmread(path, stop_before_pixels=True)
        return int(ds.SeriesNumber), int(ds.InstanceNumber)

    by_position = {position(f): str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    return [by_position[position(p)] for p in agent.outbox_files()]


@pytest.mark.slow
def test_kill_9_while_receiving(tmp_path: Path) -> None:
    """Killed mid-association, then restarted: every acknowledged instance reaches the outbox once,
    and the sender's retry of the rest is accepted."""
    # Large enough that the send takes well over a second, so the kill lands in the middle of it.
    study = make_study(Patient(), n_series=3, n_per_series=40, rows=512, columns=512)
    files = [write(ds, tmp_path / "pacs" / f"{i:04d}.dcm") for i, ds in enumerate(study)]
    agent = Daemon(tmp_path / "agent", pipeline__quiet_period_s=2).start()
    env = {**os.environ, "TCP_NODELAY": "1"}
    sender = subprocess.Popen([STORESCU, "-v", "-aet", "STORESCU", "-aec", "NMIP_AGENT", "127.0.0.1",
                               str(agent.port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env)
    # 11 spooled means at least 10 answered: one association has at most one instance in flight.
    # (An instance still arriving is in the spool's .incoming folder, not yet spooled.)
    spool = tmp_path / "agent" / "spool"
    wait_for(lambda: len([p for p in spool.rglob("*.dcm") if ".incoming" not in p.parts]) >= 11, 60, 0.005,
             "11 spooled instances")
    agent.kill()
    output, _ = sender.communicate(timeout=60)
    acknowledged = acknowledged_uids(output, files)
    assert 10 <= len(acknowledged) < len(files), output[-2000:]
    agent.start()
    retry = storescu(agent.port, files)  # the PACS resends the whole study
    assert retry.returncode == 0, retry.stderr
    agent.wait_queued(1)
    sources = outbox_sources(agent, files)
    agent.stop()
    assert len(sources) == len(set(sources)) == len(files)
    assert acknowledged <= set(sources)


@pytest.mark.slow
def test_kill_9_while_deidentifying(tmp_path: Path) -> None:
    """Killed while a study is being de-identified, then restarted: it completes, each instance once."""
    study = make_study(Patient(), n_series=2, n_per_series=40, rows=512, columns=512)
    files = [write(ds, tmp_path / "pacs" / f"{i:04d}.dcm") for i, ds in enumerate(study)]
    agent = Daemon(tmp_path / "agent", pipeline__quiet_period_s=1).start()
    assert storescu(agent.port, files).returncode == 0
    staging = tmp_path / "agent" / "outbox" / ".staging"
    wait_for(lambda: staging.exists() and any(staging.rglob("*.dcm")), 60, 0.005, "de-identification to start")
    assert agent.process is not None
    workers = Path(f"/proc/{agent.process.pid}/task/{agent.process.pid}/children").read_text().split()
    assert workers
    agent.kill()
    # Orphaned workers leave by themselves: nothing identifiable keeps being processed unowned.
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, 0.1, "the workers to exit")
    assert agent.status()["studies"] == {"stable": 1}
    agent.start()
    report = agent.wait_queued(1, timeout=120)
    sources = outbox_sources(agent, files)
    agent.stop()
    assert report["instances"] == {"deidentified": len(files)}
    assert len(sources) == len(set(sources)) == len(files)


def _send_raw(port: int, payload: Path) -> int:
    """Send a file's dataset bytes as they are (pynetdicom streams it without decoding)."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="NMIP_AGENT")
        assert assoc.is_established
        status = assoc.send_c_store(payload)
        assoc.release()
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def test_garbage_and_truncated_streams_are_refused(tmp_path: Path) -> None:
    """A dataset of garbage bytes and a truncated one get failure statuses; the daemon keeps serving."""
    good = make_study(Patient(), n_series=1, n_per_series=2, rows=128, columns=128)
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(good)]
    data = files[0].read_bytes()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:meta_end] + os.urandom(3000))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 5000])
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600) as agent:
        assert _send_raw(agent.port, garbage) == 0xC210
        assert _send_raw(agent.port, truncated) == 0xC210
        assert storescu(agent.port, files).returncode == 0
        assert agent.status()["instances"] == {"received": 2}
        assert agent.process is not None and agent.process.poll() is None


def test_sigterm_stops_cleanly_and_restart_resumes(tmp_path: Path) -> None:
    """SIGTERM stops the daemon with exit 0; received instances are processed after the restart."""
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(make_study(Patient(), n_series=1, n_per_series=2))]
    agent = Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600).start()
    assert storescu(agent.port, files).returncode == 0
    assert agent.stop() == 0
    agent.config_path.write_text(agent.config_path.read_text().replace("quiet_period_s: 3600", "quiet_period_s: 1"))
    agent.start()
    assert agent.wait_queued(1)["instances"] == {"deidentified": 2}
    assert agent.stop() == 0


def test_unrecorded_spool_files_are_swept_at_start(tmp_path: Path) -> None:
    """A spool file the database never recorded (crash before commit, never acknowledged) and a
    temp file of an interrupted write are deleted at start; recorded instances are kept."""
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(make_study(Patient(), n_series=1, n_per_series=1))]
    agent = Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600).start()
    assert storescu(agent.port, files).returncode == 0
    agent.kill()
    spool = tmp_path / "agent" / "spool"
    kept = next(spool.rglob("*.dcm"))
    orphan = spool / "ab" / ("ab" + "0" * 30 + ".dcm")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(kept.read_bytes())
    (spool / "ab" / ".tmp-partial").write_bytes(b"half")
    agent.start()
    agent.stop()
    assert sorted(p.name for p in spool.rglob("*") if p.is_file()) == [kept.name]
    assert '"event": "spool_swept"' in agent.log_text()
