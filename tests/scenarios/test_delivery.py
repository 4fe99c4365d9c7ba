"""End to end with a real platform: storescu -> agent -> nginx (mTLS, token) -> Orthanc DICOMweb.

Two patients' studies and a clinical CSV go in; the test then reads what the platform holds
(Orthanc's REST API, the PUT manifests and CSV) and checks what the platform team and the IG
officer care about: every instance once, the CSV's pseudonym is the images' PatientID, no
original identifier anywhere, dates moved together. Then the faults.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from agent.deidentify.pseudonym import Pseudonymiser, PseudonymSettings
from agent.keys import load_key_file
from tests.peers.platform import Platform, central_platform, clean_platform  # noqa: F401
from tests.peers.ports import free_port
from tests.peers.proxy import forward_proxy, proxy_available
from tests.scenarios.daemon import Daemon, storescu, wait_for
from tests.synthetic import Patient, make_study, planted_values, write
from tests.peers.dcmtk import dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")

PATIENTS = (
    Patient(patient_id="RXX100001", name="PLANTEDONE^ALICE", accession="ACC10000001"),
    Patient(patient_id="RXX100002", name="PLANTEDTWO^BOB", accession="ACC10000002"),
)
SCHEMA: dict[str, Any] = {
    "patient_id": {"column": "Hospital Number", "issuer": "RXX", "pattern": r"RXX\d{6}"},
    "columns": {
        "admission_date": {"type": "date", "formats": ["%d/%m/%Y", "%Y-%m-%d"], "required": True},
        "scan_taken": {"type": "datetime", "formats": ["%d/%m/%Y %H:%M"]},
        "age": {"type": "integer", "range": [0, 120], "generalise": {"band": 5, "top": 90}},
        "outcome": {"type": "code", "allowed": ["discharged", "died", "transferred"]},
        "surname": {"drop": True, "identifying": True},
        "notes": {"drop": True},
    },
}
CSV_HEADER = "Hospital Number,Surname,Admission Date,Scan Taken,Age,Outcome,Notes"
CSV_ROWS = (  # two formats of date in one column, as exports mix them
    "RXX100001,PLANTEDONE,12/03/2020,15/03/2020 23:30,47,discharged,lives alone at 12 Planted Street",
    "RXX100002,PLANTEDTWO,2020-03-10,15/03/2020 23:30,81,died,",
)


def agent_for(root: Path, platform: Platform, *, clinical: bool = False, **overrides: Any) -> Daemon:
    settings: dict[str, Any] = {
        "platform__dicomweb_url": platform.dicomweb_url, "platform__manifest_url": platform.manifest_url,
        "platform__clinical_url": platform.clinical_url, "platform__ca_bundle": str(platform.ca_bundle),
        "platform__client_certificate": str(platform.client_certificate),
        "platform__client_key": str(platform.client_key), "platform__token_file": str(platform.token_file),
        "platform__batch_size": 4, "platform__retry_initial_s": 0.2, "platform__retry_max_s": 1.0,
        "pipeline__quiet_period_s": 1,
    }
    if clinical:
        settings.update({"clinical__schema": SCHEMA, "clinical__drop_folder": "drop", "clinical__stable_s": 0.5,
                         "clinical__rejects": "rejects", "clinical__archive": "archive"})
    settings.update(overrides)
    return Daemon(root, **settings)


def send_studies(tmp_path: Path, agent: Daemon, patients: tuple[Patient, ...] = PATIENTS, **kw: Any) -> list[Path]:
    files = []
    for p, patient in enumerate(patients):
        study = make_study(patient, n_series=2, n_per_series=3, **kw)
        files += [write(ds, tmp_path / "pacs" / f"{p}-{i}.dcm") for i, ds in enumerate(study)]
    sent = storescu(agent.port, files)
    assert sent.returncode == 0, sent.stderr
    return files


def drop_csv(agent: Daemon, name: str, text: str) -> None:
    drop = agent.root / "drop"
    drop.mkdir(exist_ok=True)
    (drop / name).write_text(text)
    (drop / f"{name}.done").write_text("")


def wait_delivered(agent: Daemon, studies: int, timeout: float = 90.0) -> dict[str, Any]:
    return wait_for(lambda: (r := agent.status())["studies"].get("purged", 0) >= studies and r, timeout, 0.3,
                    f"{studies} studies delivered and purged")


#: nccid keeps device identity (Retain Device Identity Option): the scanner's station name and serial
#: number are meant to reach the platform.
KEPT_BY_PROFILE = {"site.station_name", "site.device_serial"}


def source_identifiers(files: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in files:
        ds = dcmread(path)
        patient = next(p for p in PATIENTS if p.patient_id == ds.PatientID)
        found |= {v for k, v in planted_values(patient, ds).items() if len(v) >= 6 and k not in KEPT_BY_PROFILE}
    return found


def test_two_patients_images_and_clinical_rows_arrive_linked_and_clean(tmp_path: Path, clean_platform: Platform) -> None:
    with agent_for(tmp_path / "agent", clean_platform, clinical=True) as agent:
        files = send_studies(tmp_path, agent)
        drop_csv(agent, "export.csv", "\n".join((CSV_HEADER, *CSV_ROWS)) + "\n")
        report = wait_delivered(agent, 2)
        wait_for(lambda: agent.status()["clinical_batches"].get("uploaded") == 1, 30, 0.3, "the CSV uploaded")
        spool_left = list((agent.root / "spool").rglob("*.dcm"))
        outbox_left = [p for p in (agent.root / "outbox").rglob("*") if p.is_file()]
    assert report["delivery"]["problem"] is None

    # Every instance once, from the right patient.
    stored = clean_platform.stored_instances()
    assert len(stored) == len(files) == 12
    key = load_key_file(agent.root / "site.key")
    names = Pseudonymiser(key, PseudonymSettings())
    expected = {names.uid(str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)) for f in files}
    assert set(stored) == expected

    # The CSV: one row per patient, its pseudonym the PatientID of that patient's images.
    uploaded = clean_platform.put_files("clinical")
    assert len(uploaded) == 1
    rows = list(csv.DictReader(io.StringIO(next(iter(uploaded.values())).decode())))
    assert {r["patient_pseudonym"] for r in rows} == {i.tags["PatientID"] for i in stored.values()}
    assert "surname" not in rows[0] and "notes" not in rows[0]
    # The same date offset: the scan time in the CSV is the images' shifted StudyDate/StudyTime.
    for row in rows:
        image = next(i.tags for i in stored.values() if i.tags["PatientID"] == row["patient_pseudonym"])
        shifted = datetime.strptime(image["StudyDate"] + image["StudyTime"][:6], "%Y%m%d%H%M%S")
        assert datetime.fromisoformat(row["scan_taken"]) == shifted
        assert row["admission_date"] < row["scan_taken"][:10]

    # One manifest per study, whose SHA-256s are the bytes the platform holds.
    manifests = {name: json.loads(body) for name, body in clean_platform.put_files("manifests").items()}
    assert len(manifests) == 2
    for name, manifest in manifests.items():
        assert name == f"{manifest['study_instance_uid']}.json"
        assert manifest["instance_count"] == 6 and len(manifest["series"]) == 2
        for entry in manifest["instances"]:
            body = clean_platform.instance_bytes(entry["sop_instance_uid"])
            assert hashlib.sha256(body).hexdigest() == entry["sha256"]

    # No original identifier in anything the platform holds.
    planted = source_identifiers(files) | {p.patient_id for p in PATIENTS} | {"PLANTEDONE", "PLANTEDTWO"}
    held = [clean_platform.instance_bytes(uid) for uid in stored]
    held += list(clean_platform.put_files("manifests").values()) + list(uploaded.values())
    for blob in held:
        for value in planted:
            assert value.encode() not in blob, "an original identifier reached the platform"

    # Identifiable copies and outbox files are gone once delivered; the original CSV is archived.
    assert not spool_left and not outbox_left
    assert len(list((agent.root / "archive").iterdir())) == 1


def test_platform_down_for_a_while_then_the_queue_drains(tmp_path: Path, clean_platform: Platform) -> None:
    clean_platform.stop()
    try:
        with agent_for(tmp_path / "agent", clean_platform) as agent:
            files = send_studies(tmp_path, agent, PATIENTS[:1])
            report = wait_for(lambda: (r := agent.status())["delivery"]["problem"] and r, 60, 0.3, "a platform problem")
            assert report["delivery"]["problem"]["kind"] == "unreachable"
            assert report["studies"].get("queued") == 1
            clean_platform.start()
            report = wait_delivered(agent, 1)
    finally:
        if not clean_platform.running:
            clean_platform.start()
    assert report["delivery"]["problem"] is None
    assert len(clean_platform.stored_instances()) == len(files)


def test_kill_9_mid_upload_does_not_duplicate_on_the_platform(tmp_path: Path, clean_platform: Platform) -> None:
    """The upload is slowed by the bandwidth cap so the kill lands in it; after a restart the
    study completes, and the platform holds each instance once."""
    agent = agent_for(tmp_path / "agent", clean_platform, platform__bandwidth_mbit_s=8, platform__batch_size=2)
    agent.start()
    study = make_study(PATIENTS[0], n_series=2, n_per_series=12, rows=256, columns=256)
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    assert storescu(agent.port, files).returncode == 0
    wait_for(lambda: len(clean_platform.stored_sop_instance_uids()) >= 4, 60, 0.05, "the upload to start")
    agent.kill()
    assert 4 <= len(clean_platform.stored_sop_instance_uids()) < len(files)
    agent.start()
    wait_delivered(agent, 1)
    agent.stop()
    stored = clean_platform.stored_instances()
    assert len(stored) == len(files)
    manifest = json.loads(next(iter(clean_platform.put_files("manifests").values())))
    assert manifest["instance_count"] == len(files)


def test_server_certificate_from_another_ca_is_refused_loudly_and_retried(tmp_path: Path,
                                                                         clean_platform: Platform) -> None:
    with agent_for(tmp_path / "agent", clean_platform, platform__ca_bundle=str(clean_platform.other_ca_bundle)) as agent:
        send_studies(tmp_path, agent, PATIENTS[:1])
        report = wait_for(lambda: ((r := agent.status())["delivery"]["problem"] or {}).get("attempts", 0) >= 2 and r,
                          60, 0.3, "two failed attempts")
        log = agent.log_text()
    assert report["delivery"]["problem"]["kind"] == "tls"
    assert report["studies"].get("queued") == 1
    assert '"level": "error"' in log and "platform_delivery_paused" in log
    assert not clean_platform.stored_sop_instance_uids()


def test_wrong_token_is_loud_and_retried_until_the_token_is_fixed(tmp_path: Path, clean_platform: Platform) -> None:
    token = tmp_path / "token"
    token.write_text("not-the-token\n")
    token.chmod(0o600)
    port = free_port()
    with agent_for(tmp_path / "agent", clean_platform, platform__token_file=str(token), observe__port=port) as agent:
        files = send_studies(tmp_path, agent, PATIENTS[:1])
        report = wait_for(lambda: ((r := agent.status())["delivery"]["problem"] or {}).get("attempts", 0) >= 2 and r,
                          60, 0.3, "two refused attempts")
        assert report["delivery"]["problem"]["kind"] == "authentication"
        assert "not-the-token" not in agent.log_text()
        token.write_text(clean_platform.token + "\n")  # the operator fixes it; no restart needed
        wait_delivered(agent, 1)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert len(clean_platform.stored_instances()) == len(files)
    # The monitoring saw the refusals by kind, and how long the requests that went through took.
    failed = re.search(r'nmip_upload_failures_total\{endpoint="stow",kind="authentication"\} (\d+)', metrics)
    assert failed and int(failed.group(1)) >= 2, metrics
    assert re.search(r'nmip_upload_seconds_count\{endpoint="stow"\} [1-9]', metrics), metrics
    assert re.search(r'nmip_upload_seconds_count\{endpoint="manifest"\} [1-9]', metrics), metrics


def test_an_instance_the_platform_refuses_is_quarantined_and_the_rest_delivered(tmp_path: Path,
                                                                               clean_platform: Platform) -> None:
    agent = agent_for(tmp_path / "agent", clean_platform)
    study = make_study(PATIENTS[0], n_series=1, n_per_series=5)
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    names = Pseudonymiser(load_key_file(agent.root / "site.key"), PseudonymSettings())
    refused = names.uid(str(study[2].SOPInstanceUID))
    clean_platform.reject_sop_instances({refused})
    with agent:
        assert storescu(agent.port, files).returncode == 0
        report = wait_delivered(agent, 1)
        quarantined = list((agent.root / "quarantine").rglob("*.json"))
    assert report["delivery"]["instances_refused_by_platform"] == 1
    assert clean_platform.stored_sop_instance_uids() == {names.uid(str(ds.SOPInstanceUID)) for ds in study} - {refused}
    assert len(quarantined) == 1 and json.loads(quarantined[0].read_text())["reason"] == "platform_rejected"
    manifest = json.loads(next(iter(clean_platform.put_files("manifests").values())))
    assert manifest["instance_count"] == 4 and manifest["quarantined_on_site"] == 1
    [entry] = report["quarantine"]
    assert entry["reason"] == "platform_rejected" and entry["instances"] == 1 and entry["study_state"] == "purged"

    # The platform fixes its side; the operator releases the instance; it is delivered after all.
    clean_platform.reject_sop_instances(set())
    with agent:
        listed = nmip("quarantine", "list", "--config", str(agent.config_path))
        assert entry["study_key"] in listed and "platform_rejected" in listed
        nmip("quarantine", "release", entry["study_key"], "--config", str(agent.config_path),
             "--reason", "the platform's refusal was fixed")
        wait_for(lambda: len(clean_platform.stored_sop_instance_uids()) == 5 and
                 agent.status()["studies"] == {"purged": 1}, 60, 0.3, "the released instance delivered")
        report = agent.status()
    assert report["quarantine"] == [] and report["delivery"]["instances_refused_by_platform"] == 0
    manifest = json.loads(next(iter(clean_platform.put_files("manifests").values())))
    assert manifest["instance_count"] == 5 and manifest["quarantined_on_site"] == 0


def nmip(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_bad_rows_are_reported_on_site_and_a_wrong_header_refuses_the_file(tmp_path: Path,
                                                                          clean_platform: Platform) -> None:
    bad_rows = "\n".join((CSV_HEADER, CSV_ROWS[0],
                          "RXX100002,PLANTEDTWO,31/02/2020,15/03/2020 23:30,81,died,",  # no 31 February
                          "RXX100003,PLANTEDTHREE,10/03/2020,15/03/2020 23:30,300,recovered,"))  # age, outcome
    wrong_header = "\n".join(("Hospital No,Surname,Admision Date,Scan Taken,Age,Outcome,Notes", CSV_ROWS[1]))
    with agent_for(tmp_path / "agent", clean_platform, clinical=True) as agent:
        drop_csv(agent, "bad-rows.csv", bad_rows + "\n")
        drop_csv(agent, "wrong-header.csv", wrong_header + "\n")
        report = wait_for(lambda: (r := agent.status())["clinical_batches"].get("uploaded") == 1 and
                          r["clinical_batches"].get("refused") == 1 and r, 30, 0.3, "one uploaded, one refused")
        log = agent.log_text()
    assert report["clinical_batches"] == {"uploaded": 1, "refused": 1}
    uploaded = list(clean_platform.put_files("clinical").values())
    assert len(uploaded) == 1 and uploaded[0].count(b"\n") == 2  # the header and the one good row
    reports = {p.name: p.read_text() for p in (agent.root / "rejects").glob("*.rejects.csv")}
    assert len(reports) == 2
    text = "\n".join(reports.values())
    assert "admission_date" in text and "age" in text and "outcome" in text and "file refused" in text
    for value in ("RXX100002", "RXX100003", "PLANTEDTWO", "PLANTEDTHREE", "31/02/2020", "recovered"):
        assert value not in text and value not in log
    assert not list((agent.root / "drop").glob("*.csv"))  # taken: held, archived or refused


def test_oauth2_token_is_fetched_and_renewed_when_the_platform_changes_it(tmp_path: Path,
                                                                         clean_platform: Platform) -> None:
    oauth2 = {"platform__token_file": None, "platform__oauth2_token_url": clean_platform.oauth2_token_url,
              "platform__oauth2_client_id": clean_platform.oauth2_client_id,
              "platform__oauth2_client_secret_file": str(clean_platform.oauth2_client_secret_file)}
    with agent_for(tmp_path / "agent", clean_platform, **oauth2) as agent:
        send_studies(tmp_path / "first", agent, PATIENTS[:1])
        wait_delivered(agent, 1)
        clean_platform.set_token("rotated-token-2")  # the old token now gets 401
        send_studies(tmp_path / "second", agent, PATIENTS[1:])
        report = wait_delivered(agent, 2)
    assert report["delivery"]["problem"] is None
    assert len(clean_platform.stored_instances()) == 12


def test_nothing_is_uploaded_outside_the_upload_window(tmp_path: Path, clean_platform: Platform) -> None:
    """A window that opens in two hours: the study is de-identified and waits, queued."""
    now = datetime.now()
    opens = (now.hour + 2) % 24
    window = f"{opens:02d}:00-{opens:02d}:30"
    with agent_for(tmp_path / "agent", clean_platform, platform__upload_window=window) as agent:
        send_studies(tmp_path, agent, PATIENTS[:1])
        report = wait_for(lambda: (r := agent.status())["studies"].get("queued") == 1 and r, 60, 0.3, "queued")
        time.sleep(3)  # several rounds of the delivery loop
        report = agent.status()
    assert report["studies"].get("queued") == 1
    assert report["delivery"]["upload_window"] == window
    assert not clean_platform.stored_sop_instance_uids()


def test_a_follow_up_instance_is_delivered_with_an_updated_manifest(tmp_path: Path, clean_platform: Platform) -> None:
    """An instance arriving after its study was delivered is sent as a follow-up of the same
    pseudonymous study; the manifest PUT again lists every instance the platform holds."""
    study = make_study(PATIENTS[0], n_series=1, n_per_series=4)
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    with agent_for(tmp_path / "agent", clean_platform) as agent:
        assert storescu(agent.port, files[:3]).returncode == 0
        wait_delivered(agent, 1)
        first = json.loads(next(iter(clean_platform.put_files("manifests").values())))
        assert storescu(agent.port, files[3:]).returncode == 0
        wait_for(lambda: len(clean_platform.stored_sop_instance_uids()) == 4 and
                 agent.status()["studies"].get("purged") == 1, 60, 0.3, "the follow-up delivered")
    manifests = clean_platform.put_files("manifests")
    assert len(manifests) == 1
    second = json.loads(next(iter(manifests.values())))
    assert second["study_instance_uid"] == first["study_instance_uid"]
    assert first["instance_count"] == 3 and second["instance_count"] == 4


def test_an_outbox_copy_lost_before_delivery_is_made_again_from_the_spool(tmp_path: Path,
                                                                         clean_platform: Platform) -> None:
    clean_platform.stop()
    try:
        with agent_for(tmp_path / "agent", clean_platform) as agent:
            files = send_studies(tmp_path, agent, PATIENTS[:1])
            wait_for(lambda: agent.status()["delivery"]["problem"], 60, 0.3, "the platform found down")
            lost = agent.outbox_files()[2]
            lost.unlink()
            clean_platform.start()
            wait_delivered(agent, 1)
            log = agent.log_text()
    finally:
        if not clean_platform.running:
            clean_platform.start()
    assert "outbox_copy_unreadable" in log
    assert len(clean_platform.stored_instances()) == len(files)


def test_a_study_the_platform_refuses_whole_is_quarantined_and_does_not_block_the_next(
        tmp_path: Path, clean_platform: Platform) -> None:
    agent = agent_for(tmp_path / "agent", clean_platform)
    names = Pseudonymiser(load_key_file(agent.root / "site.key"), PseudonymSettings())
    refused_study = make_study(PATIENTS[0], n_series=1, n_per_series=2)
    clean_platform.reject_sop_instances({names.uid(str(ds.SOPInstanceUID)) for ds in refused_study})
    with agent:
        assert storescu(agent.port, [write(ds, tmp_path / "a" / f"{i}.dcm")
                                     for i, ds in enumerate(refused_study)]).returncode == 0
        files = send_studies(tmp_path, agent, PATIENTS[1:])
        report = wait_for(lambda: (r := agent.status())["studies"].get("purged") == 1 and
                          r["studies"].get("quarantined") == 1 and r, 90, 0.3, "one delivered, one quarantined")
    assert [q["reason"] for q in report["quarantine"]] == ["platform_rejected"]
    assert len(clean_platform.stored_instances()) == len(files)
    assert len(clean_platform.put_files("manifests")) == 1


def test_a_platform_problem_shown_before_a_restart_clears_once_delivery_works(tmp_path: Path,
                                                                             clean_platform: Platform) -> None:
    clean_platform.stop()
    try:
        agent = agent_for(tmp_path / "agent", clean_platform).start()
        send_studies(tmp_path, agent, PATIENTS[:1])
        wait_for(lambda: agent.status()["delivery"]["problem"], 60, 0.3, "the platform found down")
        agent.stop()
        clean_platform.start()
        agent.start()
        report = wait_delivered(agent, 1)
        report = wait_for(lambda: (r := agent.status())["delivery"]["problem"] is None and r, 30, 0.3,
                          "the problem cleared")
        agent.stop()
    finally:
        if not clean_platform.running:
            clean_platform.start()
    assert report["studies"] == {"purged": 1}


def test_the_platforms_failure_reason_is_kept_with_the_quarantined_instances(tmp_path: Path,
                                                                            clean_platform: Platform) -> None:
    """STOW-RS pinned to another study: DICOMweb 1.7 refuses every instance with FailureReason
    0x0110. Each goes to quarantine with that reason as its detail; the study is quarantined."""
    clean_platform.refuse_stow_except_study("1.2.3")
    try:
        with agent_for(tmp_path / "agent", clean_platform) as agent:
            files = send_studies(tmp_path, agent, PATIENTS[:1])
            report = wait_for(lambda: (r := agent.status())["studies"].get("quarantined") == 1 and r, 90, 0.3,
                              "the study quarantined")
            reasons = [json.loads(p.read_text()) for p in (agent.root / "quarantine").rglob("*.json")]
    finally:
        clean_platform.refuse_stow_except_study(None)
    assert report["delivery"]["instances_refused_by_platform"] == len(files) == len(reasons)
    assert all(r["reason"] == "platform_rejected" and "0x0110" in r["detail"] for r in reasons)
    assert not clean_platform.stored_sop_instance_uids() and not clean_platform.put_files("manifests")


def test_a_csv_dropped_while_the_agent_was_down_is_taken_at_start(tmp_path: Path, clean_platform: Platform) -> None:
    """No .done marker and no watchdog event to catch: the start-up sweep finds it once its size
    has stayed the same for clinical.stable_s."""
    agent = agent_for(tmp_path / "agent", clean_platform, clinical=True)
    (agent.root / "drop").mkdir(mode=0o700)
    (agent.root / "drop" / "export.csv").write_text("\n".join((CSV_HEADER, *CSV_ROWS)) + "\n")
    with agent:
        wait_for(lambda: agent.status()["clinical_batches"].get("uploaded") == 1, 30, 0.3, "the CSV uploaded")
    rows = next(iter(clean_platform.put_files("clinical").values())).decode().splitlines()
    assert len(rows) == 3 and rows[0].startswith("patient_pseudonym,")


@pytest.mark.skipif(not proxy_available(), reason="tinyproxy is installed by make test")
def test_delivery_through_the_sites_forward_proxy(tmp_path: Path, clean_platform: Platform) -> None:
    """platform.proxy: the agent reaches the platform by CONNECT through the hospital's proxy;
    TLS and the client certificate stay end to end."""
    with forward_proxy(tmp_path / "proxy", clean_platform.port) as proxy:
        with agent_for(tmp_path / "agent", clean_platform, platform__proxy=proxy.url) as agent:
            files = send_studies(tmp_path, agent, PATIENTS[:1])
            wait_delivered(agent, 1)
        tunnels = proxy.tunnels()
    assert len(clean_platform.stored_instances()) == len(files)
    assert tunnels and set(tunnels) == {f"127.0.0.1:{clean_platform.port}"}
