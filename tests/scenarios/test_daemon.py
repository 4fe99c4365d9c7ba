"""The daemon with real peers: DCMTK's storescu as the PACS, end to end to the outbox."""

from __future__ import annotations

import json

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.scenarios.daemon import Daemon, storescu, wait_for
from tests.synthetic import Patient, make_study, planted_values, write
from tests.peers.dcmtk import ECHOSCU, STORESCU, dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")


def study_files(folder: Path, patient: Patient = Patient(), **kw: object) -> list[Path]:
    study = make_study(patient, **kw)  # type: ignore[arg-type]
    return [write(ds, folder / f"IMG{index:04d}.dcm") for index, ds in enumerate(study)]


def test_study_sent_by_storescu_reaches_the_outbox(tmp_path: Path) -> None:
    """A 2x3 study sent with storescu is acknowledged, stable, de-identified and in the outbox."""
    files = study_files(tmp_path / "pacs", n_series=2, n_per_series=3)
    with Daemon(tmp_path / "agent") as agent:
        sent = storescu(agent.port, files)
        assert sent.returncode == 0, sent.stderr
        report = agent.wait_queued(1)
        assert report["studies"] == {"queued": 1} and report["instances"] == {"deidentified": 6}
        outputs = agent.outbox_files()
        assert len(outputs) == 6
        planted = planted_values(Patient(), dcmread(files[0]))
        for path in outputs:
            out = dcmread(path)
            assert out.PatientIdentityRemoved == "YES"
            assert not [v for v in planted.values() if v.lower() in str(path).lower()]
        log = agent.log_text()
    assert '"event": "study_deidentified"' in log and '"event": "association_opened"' in log
    for label, value in planted.items():
        assert value not in log, label


def test_spool_is_private_and_opaque(tmp_path: Path) -> None:
    """Spool folders are 0700, files 0600, and named by keyed hashes, not UIDs."""
    files = study_files(tmp_path / "pacs", n_series=1, n_per_series=2)
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600) as agent:
        assert storescu(agent.port, files).returncode == 0
        spool = tmp_path / "agent" / "spool"
        spooled = [p for p in spool.rglob("*") if p.is_file()]
        assert len(spooled) == 2
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        for path in spooled:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert not any(str(dcmread(f).SOPInstanceUID) in str(path) for f in files)


def test_wrong_calling_ae_is_rejected_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    """An unknown AE title is refused at association; an allowed one is served right after."""
    files = study_files(tmp_path / "pacs", n_series=1, n_per_series=1)
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600) as agent:
        refused = storescu(agent.port, files, calling_ae="INTRUDER")
        assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
        assert storescu(agent.port, files).returncode == 0
        assert '"event": "association_rejected"' in agent.log_text()


def test_a_pacs_calling_the_wrong_ae_title_is_rejected_with_a_log_line_naming_the_key(tmp_path: Path) -> None:
    """pynetdicom's own check rejected it before any handler ran, with nothing in the log."""
    files = study_files(tmp_path / "pacs", n_series=1, n_per_series=1)
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600) as agent:
        refused = subprocess.run([STORESCU, "-aet", "STORESCU", "-aec", "NMIP_AGNET", "127.0.0.1", str(agent.port),
                                  str(files[0])], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "Called AE Title Not Recognized" in refused.stderr + refused.stdout
        line = next(json.loads(text) for text in agent.log_text().splitlines()
                    if '"association_rejected"' in text)
        assert (line["called_ae_title"], line["calling_ae_title"]) == ("NMIP_AGNET", "STORESCU")
        assert "receive.ae_title" in line["check"]
        assert storescu(agent.port, files).returncode == 0
        listed = subprocess.run([sys.executable, "-m", "agent.cli", "quarantine", "list", "--config",
                                 str(agent.config_path)], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "The quarantine is empty" in listed.stdout  # not a blank answer


def test_resent_instance_is_counted_once(tmp_path: Path) -> None:
    """The same instance sent twice replaces the first copy: one spool file, one output."""
    files = study_files(tmp_path / "pacs", n_series=1, n_per_series=2)
    with Daemon(tmp_path / "agent") as agent:
        assert storescu(agent.port, files + files).returncode == 0
        report = agent.wait_queued(1)
        assert report["instances"] == {"deidentified": 2}
        assert len(agent.outbox_files()) == 2


def test_quota_answers_out_of_resources_and_keeps_earlier_data(tmp_path: Path) -> None:
    """Past the spool quota C-STORE answers 0xA700; what was stored before is intact."""
    files = study_files(tmp_path / "pacs", n_series=1, n_per_series=4, rows=512, columns=512)  # ~0.5 MB each
    with Daemon(tmp_path / "agent", spool__quota_mb=1, pipeline__quiet_period_s=3600) as agent:
        sent = storescu(agent.port, files)
        output = sent.stdout + sent.stderr
        assert "Refused: OutOfResources" in output  # storescu -v names status 0xA700 this way
        spooled = [p for p in (tmp_path / "agent" / "spool").rglob("*.dcm")]
        assert 1 <= len(spooled) < 4
        for path in spooled:
            dcmread(path)  # whole and readable
        report = agent.status()
        assert report["instances"] == {"received": len(spooled)}


def test_follow_up_instance_reopens_its_study(tmp_path: Path) -> None:
    """An instance arriving after its study was processed is de-identified into the same study."""
    files = study_files(tmp_path / "pacs", n_series=1, n_per_series=3)
    with Daemon(tmp_path / "agent") as agent:
        assert storescu(agent.port, files[:2]).returncode == 0
        agent.wait_queued(1)
        assert storescu(agent.port, files[2:]).returncode == 0
        wait_for(lambda: agent.status()["instances"] == {"deidentified": 3}, 60, 0.3, "the follow-up")
        outputs = agent.outbox_files()
        assert len(outputs) == 3 and len({dcmread(p).StudyInstanceUID for p in outputs}) == 1


def test_refused_instance_quarantines_its_series_with_reasons(tmp_path: Path) -> None:
    """One burned-in instance holds its series; a study of that one series is quarantined, and
    status and quarantine show why."""
    study = make_study(Patient(), n_series=1, n_per_series=2)
    study[1].BurnedInAnnotation = "YES"
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    with Daemon(tmp_path / "agent") as agent:
        assert storescu(agent.port, files).returncode == 0
        report = agent.wait_queued(1)
    assert report["studies"] == {"quarantined": 1}
    assert report["quarantine"][0]["reason"] == "burned_in_annotation"
    assert [p for p in (tmp_path / "agent" / "outbox").rglob("*.dcm")] == []
    reasons = sorted(p.read_text() for p in (tmp_path / "agent" / "quarantine").glob("*.json"))
    assert len(reasons) == 2 and any("burned_in_annotation" in r for r in reasons)
    key = report["quarantine"][0]["study_key"]
    cli = [sys.executable, "-m", "agent.cli"]
    env = {**os.environ}
    shown = subprocess.run([*cli, "quarantine", "show", key, "--config", str(agent.config_path)],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "burned_in_annotation" in shown.stdout
    purged = subprocess.run([*cli, "quarantine", "purge", key, "--config", str(agent.config_path),
                             "--reason", "reviewed: not needed for the programme"],
                            capture_output=True, text=True, env=env)
    assert purged.returncode == 0 and "purged 2" in purged.stdout
    assert [p for p in (tmp_path / "agent" / "spool").rglob("*.dcm")] == []


def test_release_reruns_a_quarantined_study_after_a_profile_fix(tmp_path: Path) -> None:
    """A study refused by the gate (a site rule kept a comment naming the patient) passes once the
    profile is fixed and the study released; its quarantine copies are gone."""
    from agent.deidentify.profile import PROFILES_DIR

    study = make_study(Patient(), n_series=1, n_per_series=2)
    for ds in study:
        ds.ImageComments = f"patient {Patient().patient_id}"
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    (tmp_path / "deid.site").write_text("FORMAT dicom\n\n%header\n\nKEEP (0020,4000)\n")
    site = tmp_path / "site.yaml"
    site.write_text(f"name: site\nrecipes:\n  - {PROFILES_DIR / 'ps3.15' / 'deid.basic'}\n  - deid.site\n")
    agent = Daemon(tmp_path / "agent", pipeline__profile=str(site)).start()
    assert storescu(agent.port, files).returncode == 0
    report = agent.wait_queued(1)
    assert report["quarantine"][0]["reason"] == "residual_identifier"
    key = report["quarantine"][0]["study_key"]
    agent.stop()
    agent.config_path.write_text(agent.config_path.read_text().replace(str(site), "basic"))
    released = subprocess.run([sys.executable, "-m", "agent.cli", "quarantine", "release", key, "--config",
                               str(agent.config_path), "--reason", "profile fixed after review"],
                              capture_output=True, text=True)
    assert released.returncode == 0 and "released 2" in released.stdout
    agent.start()
    report = agent.wait_queued(1)
    agent.stop()
    assert report["studies"] == {"queued": 1} and report["instances"] == {"deidentified": 2}
    assert len(agent.outbox_files()) == 2
    assert list((tmp_path / "agent" / "quarantine").iterdir()) == []  # no stale identifiable copy


def test_echoscu_verifies_the_agent(tmp_path: Path) -> None:
    """C-ECHO from an allowed peer succeeds; from an unknown AE title it is rejected."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=3600) as agent:
        ok = subprocess.run([ECHOSCU, "-aet", "STORESCU", "-aec", "NMIP_AGENT", "127.0.0.1", str(agent.port)],
                            capture_output=True, text=True, env=env, timeout=60)
        refused = subprocess.run([ECHOSCU, "-aet", "NOBODY", "-aec", "NMIP_AGENT", "127.0.0.1", str(agent.port)],
                                 capture_output=True, text=True, env=env, timeout=60)
        wrong_called = subprocess.run([ECHOSCU, "-aet", "STORESCU", "-aec", "OTHER", "127.0.0.1", str(agent.port)],
                                      capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MB file system (tmpfs) for the spool: writes really fail with ENOSPC."""
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_answers_out_of_resources_and_keeps_earlier_data(tmp_path: Path, tiny_disk: Path) -> None:
    """A disk that really fills (ENOSPC, no quota or floor in the way): C-STORE answers 0xA700,
    no half-written file is left, what was stored before is intact, and the agent keeps serving."""
    files = study_files(tmp_path / "pacs", n_series=1, n_per_series=8, rows=512, columns=512)  # ~0.5 MB each
    with Daemon(tmp_path / "agent", spool__directory=str(tiny_disk / "spool"), spool__min_free_mb=0,
                pipeline__quiet_period_s=3600) as agent:
        sent = storescu(agent.port, files)
        assert "Refused: OutOfResources" in sent.stdout + sent.stderr
        spooled = list((tiny_disk / "spool").rglob("*.dcm"))
        assert 1 <= len(spooled) < len(files)
        assert not [p for p in (tiny_disk / "spool").rglob("*") if p.name.startswith(".tmp-")]
        for path in spooled:
            dcmread(path)  # whole and readable
        assert agent.status()["instances"] == {"received": len(spooled)}
        echo = subprocess.run([ECHOSCU, "-aet", "STORESCU", "-aec", "NMIP_AGENT", "127.0.0.1", str(agent.port)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0
