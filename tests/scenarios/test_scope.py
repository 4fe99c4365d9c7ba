"""Real studies flow: a CT study pushed with its dose objects is delivered without them, and a
refusal holds back its series, not its study.

Orthanc is the PACS, the platform is nginx (mTLS, token) in front of Orthanc's DICOMweb; the
agent runs the shipped `nccid` profile unless a test says otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from agent.deidentify.profile import PROFILES_DIR
from tests.peers.orthanc import orthanc, orthanc_available
from tests.peers.platform import Platform, central_platform, clean_platform  # noqa: F401
from tests.scenarios.daemon import Daemon, storescu, wait_for
from tests.scenarios.test_delivery import agent_for, wait_delivered
from tests.synthetic import Patient, make_ct_slice, make_study, write
from tests.peers.dcmtk import dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available() or not orthanc_available(),
                                reason="DCMTK and Orthanc are installed by make test")

X_RAY_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def dose_sr(patient: Patient, study_uid: str) -> Dataset:
    """The radiation dose structured report a CT scanner sends with every study (TID 10011 in brief)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = X_RAY_RADIATION_DOSE_SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient.name, patient.patient_id, patient.birth_date
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20200315", "101500", patient.accession
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 997, 1
    ds.SeriesDescription = "Radiation Dose Information"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("113701", "DCM", "X-Ray Radiation Dose Report")])
    comment = Dataset()
    comment.RelationshipType, comment.ValueType = "CONTAINS", "TEXT"
    comment.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
    comment.TextValue = f"Scanned for {patient.name}, DLP 412 mGy.cm"
    ds.ContentSequence = Sequence([comment])
    return ds


def dose_screen_capture(patient: Patient, study_uid: str) -> Dataset:
    """A dose screen as a secondary capture (Philips, Siemens' Patient Protocol)."""
    ds = make_ct_slice(patient, study_uid=study_uid, series_uid=generate_uid(), rows=64, columns=64)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "CT", "Dose Info", 998
    return ds


def ge_dose_screen(patient: Patient, study_uid: str) -> Dataset:
    """GE's dose report: a screen capture stored as a CT image, its text burned into the pixels."""
    ds = make_ct_slice(patient, study_uid=study_uid, series_uid=generate_uid(), rows=64, columns=64)
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.SeriesDescription, ds.SeriesNumber = "Dose Report", 999
    return ds


def test_orthanc_pushes_a_ct_study_with_its_dose_objects_and_only_the_ct_arrives(
        tmp_path: Path, clean_platform: Platform) -> None:
    """Two CT series, a dose SR, a dose screen as secondary capture and GE's dose screen as a CT
    image, pushed by Orthanc: both CT series reach the platform; the three dose objects are
    excluded (out_of_scope, excluded_by_rule), counted in status and in the manifest, never
    quarantined, and their identifiable spool copies are gone."""
    patient = Patient()
    study = make_study(patient, n_series=2, n_per_series=3)
    study_uid = study[0].StudyInstanceUID
    dose = [dose_sr(patient, study_uid), dose_screen_capture(patient, study_uid), ge_dose_screen(patient, study_uid)]
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate([*study, *dose])]
    with agent_for(tmp_path / "agent", clean_platform) as agent:
        with orthanc(tmp_path, modalities={"agent": ("NMIP_AGENT", "127.0.0.1", agent.port)}) as pacs:
            uploaded = [pacs.upload(f) for f in files]
            assert len({u["ParentStudy"] for u in uploaded}) == 1
            pacs.push_study("agent", uploaded[0]["ParentStudy"])
        report = wait_delivered(agent, 1)
        shown = agent.show(_study_key(agent))
        spool_left = list((agent.root / "spool").rglob("*.dcm"))
    assert report["instances"] == {"purged": 6, "excluded": 3}
    assert report["quarantine"] == [] and list((agent.root / "quarantine").glob("*")) == []
    stored = clean_platform.stored_instances()
    assert len(stored) == 6
    assert {i.tags.get("Modality") for i in stored.values()} == {"CT"}
    assert len({i.tags.get("SeriesInstanceUID") for i in stored.values()}) == 2
    manifests = [json.loads(body) for body in clean_platform.put_files("manifests").values()]
    assert len(manifests) == 1
    assert manifests[0]["instance_count"] == 6 and manifests[0]["excluded_on_site"] == 3
    assert manifests[0]["quarantined_on_site"] == 0
    reasons = sorted(i["reason"] for i in shown["instances"] if i["state"] == "excluded")
    assert reasons == ["excluded_by_rule", "out_of_scope", "out_of_scope"]
    assert sum(1 for a in shown["audit"] if a["event"] == "instance_excluded") == 3
    assert spool_left == []


def _study_key(agent: Daemon) -> str:
    """The one study's key, from the audit the agent keeps (status lists keys only in quarantine)."""
    for line in agent.log_text().splitlines():
        if '"study_stable"' in line:
            return str(json.loads(line)["study_key"])
    raise AssertionError("no study became stable")


def test_a_ge_dose_screen_stored_as_ct_is_excluded_by_the_nccid_rule(tmp_path: Path) -> None:
    """In a CT study sent by storescu: the CT series reaches the outbox, the dose screen (CT Image
    Storage, ImageType SCREEN SAVE) is excluded by rule, and its spool copy is deleted."""
    patient = Patient()
    study = make_study(patient, n_series=1, n_per_series=3)
    screen = ge_dose_screen(patient, study[0].StudyInstanceUID)
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate([*study, screen])]
    with Daemon(tmp_path / "agent") as agent:
        assert storescu(agent.port, files).returncode == 0
        report = agent.wait_queued(1)
        outputs = agent.outbox_files()
        spooled = list((agent.root / "spool").rglob("*.dcm"))
        shown = agent.show(_study_key(agent))
    assert report["studies"] == {"queued": 1} and report["instances"] == {"deidentified": 3, "excluded": 1}
    assert len(outputs) == 3 and all("SCREEN SAVE" not in dcmread(p).ImageType for p in outputs)
    assert len(spooled) == 3  # the CT, waiting for delivery; the screen's copy is gone
    excluded = [i for i in shown["instances"] if i["state"] == "excluded"]
    assert [(i["reason"], i["detail"].split(":")[0]) for i in excluded] == [("excluded_by_rule", "exclude[0]")]


def _site_profile(tmp_path: Path) -> Path:
    """The Basic Profile plus a site rule that keeps Image Comments: a comment naming the patient
    is then refused by the gate (residual_identifier)."""
    (tmp_path / "deid.site").write_text("FORMAT dicom\n\n%header\n\nKEEP (0020,4000)\n")
    site = tmp_path / "site.yaml"
    site.write_text(f"name: site\nrecipes:\n  - {PROFILES_DIR / 'ps3.15' / 'deid.basic'}\n  - deid.site\n")
    return site


def test_a_refused_slice_holds_its_series_and_release_delivers_it(tmp_path: Path, clean_platform: Platform) -> None:
    """One slice of a 3-slice series is refused: that series is held (the slice with its reason,
    the other two as series_quarantined), the study's other series is delivered, and the manifest
    counts 3 quarantined_on_site. After the profile is fixed, `quarantine release` delivers the
    held series and the manifest is sent again, listing all six."""
    patient = Patient()
    study = make_study(patient, n_series=2, n_per_series=3, plant=False)
    study[1].ImageComments = f"for {patient.patient_id}"  # the second slice of the first series
    held_series = study[0].SeriesInstanceUID
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    site = _site_profile(tmp_path)
    agent = agent_for(tmp_path / "agent", clean_platform, pipeline__profile=str(site)).start()
    try:
        assert storescu(agent.port, files).returncode == 0
        report = wait_delivered(agent, 1)
        key = report["quarantine"][0]["study_key"]
        listed = subprocess.run([sys.executable, "-m", "agent.cli", "quarantine", "list", "--config",
                                 str(agent.config_path)], capture_output=True, text=True, timeout=60)
        shown = agent.show(key)
        first = {name: json.loads(body) for name, body in clean_platform.put_files("manifests").items()}
        stored_first = clean_platform.stored_instances()
    finally:
        agent.stop()
    assert report["instances"] == {"purged": 3, "quarantined": 3}
    entry = report["quarantine"][0]
    assert entry["study_state"] == "purged" and entry["reason"] == "residual_identifier"
    assert [(s["instances"], s["reasons"]) for s in entry["series"]] == [
        (3, {"residual_identifier": 1, "series_quarantined": 2})]
    assert listed.returncode == 0 and "series_quarantined 2" in listed.stdout and "residual_identifier 1" in listed.stdout
    assert {i["reason"] for i in shown["instances"] if i["state"] == "quarantined"} == {
        "residual_identifier", "series_quarantined"}
    assert len(stored_first) == 3
    sources = {dcmread(f).SOPInstanceUID: dcmread(f).SeriesInstanceUID for f in files}
    assert len(first) == 1
    manifest = next(iter(first.values()))
    assert manifest["instance_count"] == 3 and manifest["quarantined_on_site"] == 3
    assert len({i["series_instance_uid"] for i in manifest["instances"]}) == 1
    assert held_series in sources.values()

    agent.config_path.write_text(agent.config_path.read_text().replace(str(site), "basic"))
    released = subprocess.run([sys.executable, "-m", "agent.cli", "quarantine", "release", key, "--config",
                               str(agent.config_path), "--reason", "profile fixed after review"],
                              capture_output=True, text=True, timeout=60)
    assert released.returncode == 0 and "released 3" in released.stdout, released.stdout + released.stderr
    with agent:
        wait_for(lambda: len(clean_platform.stored_instances()) == 6, 90, 0.5, "the held series delivered")
        report = wait_delivered(agent, 1)
        wait_for(lambda: json.loads(clean_platform.put_files("manifests")[next(iter(first))])["instance_count"] == 6,
                 60, 0.5, "the manifest sent again")
    manifest = json.loads(clean_platform.put_files("manifests")[next(iter(first))])
    assert manifest["quarantined_on_site"] == 0
    assert len({i["series_instance_uid"] for i in manifest["instances"]}) == 2
    assert report["quarantine"] == [] and report["instances"] == {"purged": 6}
    assert list((agent.root / "quarantine").glob("*")) == []


def test_a_later_refusal_holds_back_its_series_instances_not_yet_sent(tmp_path: Path) -> None:
    """A series queued (delivery off, as during an outage or outside the upload window), then one
    more slice of it arrives and is refused: the queued slices are held with it, their outbox
    copies removed, so the series never goes out with a hole."""
    patient = Patient()
    study = make_study(patient, n_series=1, n_per_series=4, plant=False)
    study[3].BurnedInAnnotation = "YES"
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    with Daemon(tmp_path / "agent") as agent:
        assert storescu(agent.port, files[:3]).returncode == 0
        assert agent.wait_queued(1)["instances"] == {"deidentified": 3}
        assert storescu(agent.port, files[3:]).returncode == 0
        report = wait_for(lambda: (r := agent.status())["instances"].get("quarantined") == 4 and r, 60, 0.3,
                          "the series held")
        outputs = agent.outbox_files()
        shown = agent.show(report["quarantine"][0]["study_key"])
    assert report["studies"] == {"quarantined": 1} and report["instances"] == {"quarantined": 4}
    assert outputs == []
    assert sorted(i["reason"] for i in shown["instances"]) == ["burned_in_annotation"] + ["series_quarantined"] * 3
    assert len(list((tmp_path / "agent" / "quarantine").glob("*.dcm"))) == 4
