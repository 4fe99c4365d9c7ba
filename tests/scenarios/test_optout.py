"""Patients' choices end to end: a PACS (Orthanc) pushes to `serve`, which delivers through nginx
with mTLS and a token. An opted-out patient's images and clinical rows never reach the platform; a
patient who opts out after delivery gets a retraction notice per delivered study, through a kill
-9; `reidentify` finds a patient from a pseudonym taken from the platform, and says who asked."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.peers.dcmtk import dcmtk_available
from tests.peers.orthanc import orthanc, orthanc_available
from tests.peers.platform import Platform, central_platform, clean_platform  # noqa: F401
from tests.scenarios.daemon import Daemon, wait_for
from tests.scenarios.test_delivery import CSV_HEADER, agent_for, drop_csv, wait_delivered
from tests.synthetic import Patient, make_study, write

pytestmark = pytest.mark.skipif(not (dcmtk_available() and orthanc_available()),
                                reason="DCMTK and Orthanc are installed by make test")

#: The NHS number is only in Other Patient IDs Sequence, as PACS hold it; the list gives it spaced.
OPTED = Patient(patient_id="RXX100001", name="OPTEDOUT^PLANTEDANNE", other_id="9434765919",
                accession="ACCOPT0001", birth_date="19520704")
STAYS = Patient(patient_id="RXX100002", name="STAYS^PLANTEDBEN", other_id="4010232137",
                accession="ACCSTAY0002", birth_date="19640211")
OPTOUT_FILE = "NHS Number\r\n943 476 5919\r\n\r\n"


def nmip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60)


def study_files(folder: Path, patient: Patient, study: int = 0) -> list[Path]:
    datasets = make_study(replace(patient, accession=f"{patient.accession}{study}"), n_series=2, n_per_series=2,
                          study_date=f"2020031{study + 5}")
    return [write(ds, folder / f"{patient.patient_id}-{study}-{i}.dcm") for i, ds in enumerate(datasets)]


def push(tmp_path: Path, agent: Daemon, files: list[Path]) -> None:
    with orthanc(tmp_path, modalities={"agent": ("NMIP_AGENT", "127.0.0.1", agent.port)}) as pacs:
        for study_id in {pacs.upload(f)["ParentStudy"] for f in files}:
            pacs.push_study("agent", study_id)


def import_list(agent: Daemon, text: str) -> subprocess.CompletedProcess[str]:
    path = agent.root / "optout.txt"
    path.write_text(text)
    run = nmip("optout", "import", str(path), "--config", str(agent.config_path))
    assert run.returncode == 0, run.stderr
    assert "9434765919" not in run.stdout + run.stderr
    return run


def test_an_opted_out_patients_images_and_clinical_rows_never_reach_the_platform(
        tmp_path: Path, clean_platform: Platform) -> None:
    agent = agent_for(tmp_path / "agent", clean_platform, clinical=True, optouts=None)
    assert "1 identifier(s) (first line taken as a header)" in import_list(agent, OPTOUT_FILE).stdout
    opted, stays = study_files(tmp_path / "pacs", OPTED), study_files(tmp_path / "pacs", STAYS)
    with agent:
        push(tmp_path, agent, opted + stays)
        report = wait_delivered(agent, 1)
        wait_for(lambda: agent.status()["studies"].get("excluded") == 1, 30, 0.3, "the opted-out study excluded")
        # A later study of the same patient whose images carry only the hospital number.
        push(tmp_path, agent, later := study_files(tmp_path / "pacs", replace(OPTED, other_id=""), 1))
        wait_for(lambda: agent.status()["studies"].get("excluded") == 2, 30, 0.3, "the later study excluded")
        # The export keys rows by hospital number; the list has the NHS number: the images link them.
        drop_csv(agent, "export.csv", "\n".join((
            CSV_HEADER,
            "RXX100001,OPTEDOUT,12/03/2020,15/03/2020 23:30,71,discharged,",
            "RXX100002,STAYS,10/03/2020,15/03/2020 22:00,59,discharged,")) + "\n")
        wait_for(lambda: agent.status()["clinical_batches"].get("uploaded") == 1, 30, 0.3, "the CSV uploaded")
        status = agent.status()
        spool_left = list((agent.root / "spool").rglob("*.dcm"))

    stored = clean_platform.stored_instances()
    assert len(stored) == len(stays) and {i.tags["PatientID"] for i in stored.values()} != {STAYS.patient_id}
    manifests = [json.loads(body) for body in clean_platform.put_files("manifests").values()]
    assert len(manifests) == 1 and manifests[0]["instance_count"] == len(stays)
    assert status["instances"]["excluded"] == len(opted) + len(later)
    assert status["optout"]["studies"] == {"studies": 2, "unsettled": 0}
    assert not spool_left  # the excluded copies went once their study was settled, the delivered ones with it
    rows = list(csv.DictReader(io.StringIO(next(iter(clean_platform.put_files("clinical").values())).decode())))
    assert [r["patient_pseudonym"] for r in rows] == [next(iter(stored.values())).tags["PatientID"]]
    rejects = next((agent.root / "rejects").glob("*.rejects.csv")).read_text()
    assert "opt-out list" in rejects and "RXX100001" not in rejects
    everything = b"".join(p.read_bytes() for p in agent.root.rglob("state.sqlite*"))
    assert b"9434765919" not in everything and b"943 476 5919" not in everything  # the list is kept keyed


def test_a_patient_who_opts_out_after_delivery_is_retracted_through_a_kill_and_can_be_found_on_site(
        tmp_path: Path, clean_platform: Platform) -> None:
    files = study_files(tmp_path / "pacs", OPTED, 0) + study_files(tmp_path / "pacs", OPTED, 1) \
        + study_files(tmp_path / "pacs", STAYS)
    agent = agent_for(tmp_path / "agent", clean_platform, optouts=("NHS Number", "4857773456"))
    with agent:
        push(tmp_path, agent, files)
        wait_delivered(agent, 3)
        clean_platform.stop()  # the platform goes away: the notices are queued, not sent
        import_list(agent, OPTOUT_FILE)
        wait_for(lambda: agent.status()["optout"]["retractions"]["pending"] == 2, 30, 0.3, "two retractions queued")
        agent.kill()  # kill -9 between queueing and sending
    assert not [name for name in clean_platform.put_files("manifests") if name.endswith(".retraction.json")]
    clean_platform.start()
    with agent:
        wait_for(lambda: agent.status()["optout"]["retractions"] == {"pending": 0, "acknowledged": 2}, 60, 0.3,
                 "two retractions acknowledged")
        log = agent.log_text()

    stored = clean_platform.stored_instances()
    opted_studies = {dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files[:8]}
    by_study: dict[str, str] = {}
    for instance in stored.values():
        by_study[instance.tags["StudyInstanceUID"]] = instance.tags["PatientID"]
    notices = {name: json.loads(body) for name, body in clean_platform.put_files("manifests").items()
               if name.endswith(".retraction.json")}
    assert len(notices) == 2
    retracted = {n["study_instance_uid"] for n in notices.values()}
    assert {f"{uid}.retraction.json" for uid in retracted} == set(notices)
    assert retracted <= set(by_study) and len({by_study[uid] for uid in retracted}) == 1  # one patient's two studies
    for notice in notices.values():
        assert set(notice) == {"retraction_version", "study_instance_uid", "reason", "retracted_at", "key_id",
                               "agent_version"} and notice["reason"] == "opt_out"
        text = json.dumps(notice)
        for value in (OPTED.patient_id, OPTED.other_id, OPTED.accession, "OPTEDOUT", OPTED.birth_date,
                      by_study[notice["study_instance_uid"]], *opted_studies):
            assert value not in text
    assert '"retraction_sent"' in log

    # The platform asks about one of the retracted studies' patient: the pseudonym it holds.
    pseudonym = by_study[next(iter(retracted))]
    refused = nmip("reidentify", "--config", str(agent.config_path), "--pseudonym", pseudonym)
    assert refused.returncode == 2 and OPTED.patient_id not in refused.stdout + refused.stderr
    found = nmip("reidentify", "--config", str(agent.config_path), "--pseudonym", pseudonym,
                 "--reason", "incidental finding reported by the platform, ticket 4411")
    assert found.returncode == 0, found.stderr
    assert f"hospital Patient ID: {OPTED.patient_id}" in found.stdout
    assert all(uid in found.stdout for uid in opted_studies)
    by_uid = nmip("reidentify", "--config", str(agent.config_path), "--study-uid", next(iter(retracted)),
                  "--reason", "the platform quoted a study UID, ticket 4412")
    assert by_uid.returncode == 0 and OPTED.patient_id in by_uid.stdout
    audit = nmip("audit", "--config", str(agent.config_path), "--json")
    assert audit.returncode == 0, audit.stderr
    entries = json.loads(audit.stdout)["entries"]
    assert [(e["action"], e["reason"]) for e in entries] == [
        ("reidentify", "incidental finding reported by the platform, ticket 4411"),
        ("reidentify", "the platform quoted a study UID, ticket 4412")]
    assert all(e["operator"] for e in entries) and json.loads(audit.stdout)["intact"]
    assert OPTED.patient_id not in audit.stdout  # what was asked and why, never the answer
