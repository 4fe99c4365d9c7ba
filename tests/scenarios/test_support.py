"""`support-bundle`: configuration, versions, status and log events, and no identifier at all."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.peers.dcmtk import dcmtk_available
from tests.scenarios.daemon import Daemon, storescu
from tests.synthetic import Patient, make_study, planted_values, write

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")

PATIENT = Patient(name="FENWICK^ARABELLA", patient_id="SUP558812", birth_date="19490730")


def test_the_bundle_holds_what_support_needs_and_no_planted_identifier(tmp_path: Path) -> None:
    study = make_study(PATIENT, n_series=2, n_per_series=2)
    study[0].BurnedInAnnotation = "YES"  # refused: the quarantine has something to say
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    bundle = tmp_path / "support.tar.gz"
    with Daemon(tmp_path / "agent", pipeline__quiet_period_s=1) as agent:
        assert storescu(agent.port, files).returncode == 0
        agent.wait_queued(1)
        run = subprocess.run([sys.executable, "-m", "agent.cli", "support-bundle", "--config", str(agent.config_path),
                              str(bundle), "--log", str(agent.log_path)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    assert bundle.stat().st_mode & 0o077 == 0
    with tarfile.open(bundle) as archive:
        texts = {m.name.rsplit("/", 1)[-1]: archive.extractfile(m).read().decode() for m in archive.getmembers()}
    assert set(texts) == {"config.yaml", "versions.json", "status.json", "log.jsonl"}
    assert '"nmip-agent"' in texts["versions.json"] and "burned_in_annotation" in texts["status.json"]
    assert '"event": "study_deidentified"' in texts["log.jsonl"] or '"study_deidentified"' in texts["log.jsonl"]
    everything = "\n".join(texts.values())
    planted = set()
    for ds in study:
        planted |= {v for v in planted_values(PATIENT, ds).values() if len(v) >= 4}
    assert planted and not [value for value in planted if value in everything]
