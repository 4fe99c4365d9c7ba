"""Early de-identification: instances are de-identified into staging while their study is still
arriving, and published only once it is stable, all or nothing, exactly as without it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread

from tests.scenarios.daemon import Daemon, storescu, wait_for
from tests.synthetic import Patient, make_study, write
from tests.peers.dcmtk import dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")


def staged(agent: Daemon) -> list[Path]:
    return sorted((agent.root / "outbox" / ".staging").rglob("*.dcm"))


def events(agent: Daemon, name: str) -> list[dict[str, Any]]:
    found = []
    for line in agent.log_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def audit_times(agent: Daemon, event: str) -> list[float]:
    """When the daemon recorded `event` (its state database, read-only)."""
    db = sqlite3.connect(f"file:{agent.root / 'state.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return [float(r[0]) for r in db.execute("SELECT at FROM audit WHERE event = ? ORDER BY at", (event,))]
    finally:
        db.close()


def position(ds: Dataset) -> tuple[int, int]:
    return int(ds.SeriesNumber), int(ds.InstanceNumber)


def study_files(folder: Path, study: list[Dataset]) -> list[Path]:
    return [write(ds, folder / f"{index:04d}.dcm") for index, ds in enumerate(study)]


def test_instance_resent_while_receiving_is_published_from_its_new_bytes(tmp_path: Path) -> None:
    """An instance already de-identified into staging is sent again with another pixel value
    before the study is stable: the outbox holds the new pixels, never the staged earlier copy."""
    study = make_study(Patient(), n_series=1, n_per_series=8, rows=128, columns=128)
    files = study_files(tmp_path / "pacs", study)
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=4, pipeline__workers=2) as agent:
        assert storescu(agent.port, files).returncode == 0
        wait_for(lambda: len(staged(agent)) == len(files), 30, 0.02, "every instance staged while receiving")
        changed = study[3]
        pixels = bytearray(changed.PixelData)
        pixels[0:2] = b"\xff\x0f"
        changed.PixelData = bytes(pixels)
        resent = write(changed, tmp_path / "resend" / "0003.dcm")
        assert storescu(agent.port, [resent]).returncode == 0
        report = agent.wait_queued(1)
        assert report["studies"] == {"queued": 1} and report["instances"] == {"deidentified": len(files)}
        assert len(audit_times(agent, "study_stable")) == 1  # the resend came while it was receiving
        outputs = {position(ds): ds for ds in map(dcmread, agent.outbox_files())}
        assert len(outputs) == len(files)
        assert outputs[position(changed)].PixelData == bytes(pixels)
        for ds in study[:3] + study[4:]:
            assert outputs[position(ds)].PixelData == ds.PixelData
        # Every result used was made early, the resent instance's from its second copy.
        assert [e["deidentified_early"] for e in events(agent, "study_deidentified")] == [len(files)]
        assert staged(agent) == []


def test_refused_instance_still_quarantines_the_whole_study_and_leaves_no_staging(tmp_path: Path) -> None:
    """One burned-in instance among instances already staged: the whole study goes to quarantine,
    nothing reaches the outbox, and the study's staging folder is gone."""
    study = make_study(Patient(), n_series=1, n_per_series=10, rows=128, columns=128)
    study[-1].BurnedInAnnotation = "YES"
    files = study_files(tmp_path / "pacs", study)
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=2, pipeline__workers=2) as agent:
        assert storescu(agent.port, files).returncode == 0
        wait_for(lambda: len(staged(agent)) == len(files) - 1, 30, 0.02, "the passing instances staged early")
        report = agent.wait_queued(1)
        quarantined = events(agent, "study_quarantined")
    assert report["studies"] == {"quarantined": 1}
    assert report["quarantine"][0]["reason"] == "burned_in_annotation"
    assert [e["deidentified_early"] for e in quarantined] == [len(files)]
    outbox = tmp_path / "agent" / "outbox"
    assert [p for p in outbox.rglob("*") if p.is_file()] == []  # staging included
    assert list((outbox / ".staging").iterdir()) == []
    assert len(list((tmp_path / "agent" / "quarantine").glob("*.json"))) == len(files)


def test_study_is_queued_soon_after_its_quiet_period(tmp_path: Path) -> None:
    """60 instances, quiet period 2 s: every one is de-identified during receiving and the quiet
    period, so what is left once the study is stable is publishing (renames and one sync)."""
    study = make_study(Patient(), n_series=2, n_per_series=30, rows=256, columns=256)
    files = study_files(tmp_path / "pacs", study)
    quiet = 2.0
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=quiet, pipeline__workers=2) as agent:
        assert storescu(agent.port, files).returncode == 0
        report = agent.wait_queued(1)
        assert report["instances"] == {"deidentified": len(files)}
        assert len(agent.outbox_files()) == len(files)
        [last_received] = audit_times(agent, "instance_received")[-1:]
        [queued] = audit_times(agent, "study_queued")
        [done] = events(agent, "study_deidentified")
    # What tells the old behaviour from the new: nothing was left to de-identify at stable.
    assert done["deidentified_early"] == len(files)
    # Without early de-identification the time after the quiet period is the whole study's
    # de-identification (0.32 s here on a quiet 2-core machine, against 0.11 s with it): too
    # close to assert on a loaded machine, so the bound is only a generous sanity check that
    # what is left is the polling interval (0.1 s), the renames and one os.sync.
    after_quiet = queued - last_received - quiet
    assert after_quiet < 1.5, after_quiet


def test_follow_up_instance_is_published_into_the_same_study(tmp_path: Path) -> None:
    """A study reopened by a follow-up after it was queued: only the new instance is de-identified
    (early, as the study is receiving again), into the same pseudonymous study."""
    study = make_study(Patient(), n_series=1, n_per_series=4, rows=64, columns=64)
    files = study_files(tmp_path / "pacs", study)
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=1, pipeline__workers=2) as agent:
        assert storescu(agent.port, files[:3]).returncode == 0
        agent.wait_queued(1)
        assert storescu(agent.port, files[3:]).returncode == 0
        wait_for(lambda: agent.status()["instances"] == {"deidentified": 4}, 60, 0.3, "the follow-up")
        agent.wait_queued(1)
        outputs = agent.outbox_files()
        assert len(outputs) == 4 and len({dcmread(p).StudyInstanceUID for p in outputs}) == 1
        assert [e["instances"] for e in events(agent, "study_deidentified")] == [3, 1]
        assert staged(agent) == []


def test_staging_left_by_a_kill_is_not_trusted_after_restart(tmp_path: Path) -> None:
    """kill -9 while a study is receiving, with instances already staged; one staged file is then
    damaged. After the restart every instance is de-identified again (the memory of early results
    died with the daemon): the outbox holds each instance once, whole."""
    study = make_study(Patient(), n_series=1, n_per_series=6, rows=64, columns=64)
    files = study_files(tmp_path / "pacs", study)
    agent = Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600, pipeline__workers=2).start()
    assert storescu(agent.port, files).returncode == 0
    wait_for(lambda: len(staged(agent)) == len(files), 30, 0.02, "every instance staged while receiving")
    agent.kill()
    leftovers = staged(agent)
    assert len(leftovers) == len(files)
    leftovers[0].write_bytes(b"not what the pipeline staged")
    agent.config_path.write_text(agent.config_path.read_text().replace("quiet_period_s: 3600", "quiet_period_s: 1"))
    agent.start()
    report = agent.wait_queued(1)
    outputs = [dcmread(p) for p in agent.outbox_files()]
    [done] = events(agent, "study_deidentified")
    agent.stop()
    assert report["instances"] == {"deidentified": len(files)}
    assert sorted(map(position, outputs)) == sorted(map(position, study))
    assert done["deidentified_early"] == 0
    assert staged(agent) == []


def test_one_worker_deidentifies_only_stable_studies(tmp_path: Path) -> None:
    """With workers: 1 that worker is kept for stable studies: nothing is staged while receiving."""
    files = study_files(tmp_path / "pacs", make_study(Patient(), n_series=1, n_per_series=3))
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600, pipeline__workers=1) as agent:
        assert storescu(agent.port, files).returncode == 0
        time.sleep(1.0)
        assert staged(agent) == [] and agent.status()["studies"] == {"receiving": 1}
