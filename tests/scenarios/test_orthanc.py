"""Orthanc as the hospital PACS, pushing a study to the agent through its REST API."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from tests.peers.orthanc import orthanc, orthanc_available
from tests.scenarios.daemon import Daemon
from tests.synthetic import Patient, make_study, write

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc is installed by make test")


def test_orthanc_pushes_a_study_to_the_agent(tmp_path: Path) -> None:
    """A study uploaded to Orthanc and pushed to the agent as a modality lands de-identified in the outbox."""
    study = make_study(Patient(), n_series=2, n_per_series=3)
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    with Daemon(tmp_path / "agent") as agent:
        with orthanc(tmp_path, modalities={"agent": ("NMIP_AGENT", "127.0.0.1", agent.port)}) as pacs:
            uploaded = [pacs.upload(f) for f in files]
            study_id = uploaded[0]["ParentStudy"]
            assert pacs.echo("agent")
            pacs.push_study("agent", study_id)
        report = agent.wait_queued(1)
        outputs = agent.outbox_files()
    assert report["instances"] == {"deidentified": 6}
    assert len(outputs) == 6
    assert {str(dcmread(p).PatientID) for p in outputs} != {Patient().patient_id}
    assert '"calling_ae_title": "ORTHANC"' in agent.log_text()
