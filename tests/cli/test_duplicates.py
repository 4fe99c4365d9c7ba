"""Within one `anonymise` run, files that share a SOP Instance UID never overwrite each other."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import UltrasoundImageStorage

from agent.batch import anonymise
from tests.synthetic import Patient, make_ct_slice, write


def test_same_uid_files_overwrite_nothing_and_keep_every_record(tmp_path: Path, key_file: Path) -> None:
    """Identical bytes are taken once; different bytes are all quarantined (duplicate_sop_instance),
    and two refused files with one UID keep a record each."""
    inputs = tmp_path / "in"
    ct = make_ct_slice(Patient(), plant=False)
    write(ct, inputs / "a" / "first.dcm")
    write(ct, inputs / "b" / "same-bytes.dcm")
    other = ct.copy()
    other.SeriesDescription = "AXIAL"  # same SOP Instance UID, other bytes
    write(other, inputs / "c" / "other-bytes.dcm")
    clean = make_ct_slice(Patient(), plant=False)  # an unrelated instance, written as usual
    write(clean, inputs / "d" / "unrelated.dcm")
    for n, comment in enumerate(("one", "two")):
        burned = make_ct_slice(Patient(), plant=False)
        burned.SOPInstanceUID = burned.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        burned.BurnedInAnnotation, burned.ImageComments = "YES", comment
        write(burned, inputs / "e" / f"burned{n}.dcm")
    out, quarantine = tmp_path / "out", tmp_path / "quarantine"
    reports = []
    summary = anonymise(inputs, out, profile="nccid", key_file=key_file, quarantine_dir=quarantine, workers=2,
                        on_report=reports.append)

    assert len(reports) == 6  # every input reported once
    outputs = sorted(out.rglob("*.dcm"))
    assert len(outputs) == 1  # only the unrelated instance: which of the CT's versions is right is unknown
    records = sorted(quarantine.glob("*.json"))
    sources = {p.read_bytes() for p in quarantine.glob("*.dcm")}
    # The CT's two contents and the two burned-in files, each filed: nothing written over another.
    assert len(sources) == 4 and len(records) == 4
    assert summary.reasons.get("duplicate_sop_instance", 0) >= 2
    assert summary.reasons.get("burned_in_annotation") == 2
    assert summary.written == 1
    assert summary.written + summary.quarantined + summary.skipped == 6


def test_report_gives_every_input_files_verdict(tmp_path: Path, key_file: Path) -> None:
    """`--report FILE`: a JSON line per input file (file, status, reason, output), private, and a
    summary line that counts written, excluded, quarantined and unreadable."""
    import json
    import stat

    from tests.cli.helpers import nmip

    inputs = tmp_path / "in"
    write(make_ct_slice(Patient(), plant=False), inputs / "ct.dcm")
    us = make_ct_slice(Patient(), plant=False)
    us.SOPClassUID = us.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    us.Modality = "US"
    write(us, inputs / "us.dcm")
    burned = make_ct_slice(Patient(), plant=False)
    burned.BurnedInAnnotation = "YES"
    write(burned, inputs / "burned.dcm")
    (inputs / "junk.dcm").write_bytes(b"not dicom")
    report = tmp_path / "report.jsonl"
    run = nmip("anonymise", inputs, tmp_path / "out", "--profile", "nccid", "--key-file", key_file,
               "--quarantine", tmp_path / "q", "--workers", "1", "--report", report, cwd=tmp_path)
    assert "written 1, excluded 1, quarantined 1, unreadable 1" in run.stdout
    records = {Path(r["file"]).name: r for r in map(json.loads, report.read_text().splitlines())}
    assert set(records) == {"ct.dcm", "us.dcm", "burned.dcm", "junk.dcm"}
    assert records["ct.dcm"]["status"] == "written" and records["ct.dcm"]["output"].endswith(".dcm")
    assert records["us.dcm"]["status"] == "excluded" and records["us.dcm"]["reason"] == "out_of_scope"
    assert records["us.dcm"]["output"] == ""
    assert records["burned.dcm"]["status"] == "quarantined" and records["burned.dcm"]["reason"] == "burned_in_annotation"
    assert records["junk.dcm"]["status"] == "unreadable"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600


def test_a_refusal_holds_back_its_series_in_a_folder_run(tmp_path: Path, key_file: Path) -> None:
    """One refused slice of a series: the series' other slices are quarantined as series_quarantined
    (nothing of it written, whatever the order the workers finish in); the study's other series and
    its dose objects are written and excluded as usual."""
    import json

    from tests.synthetic import make_study

    inputs = tmp_path / "in"
    study = make_study(Patient(), n_series=2, n_per_series=4)
    held_series = study[0].SeriesInstanceUID
    study[2].BurnedInAnnotation = "YES"  # the third slice of the first series
    for n, ds in enumerate(study):
        write(ds, inputs / f"IMG{n:04d}.dcm")
    dose = make_ct_slice(Patient(), plant=False, study_uid=study[0].StudyInstanceUID)
    dose.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]  # GE's dose screen, stored as CT
    dose.SeriesDescription = "Dose Report"
    write(dose, inputs / "IMG9999.dcm")
    report = tmp_path / "report.jsonl"
    from tests.cli.helpers import nmip

    run = nmip("anonymise", inputs, tmp_path / "out", "--profile", "nccid", "--key-file", key_file,
               "--quarantine", tmp_path / "q", "--workers", "2", "--report", report, cwd=tmp_path)
    assert "written 4, excluded 1, quarantined 4, unreadable 0" in run.stdout, run.stdout
    latest = {}
    for record in map(json.loads, report.read_text().splitlines()):
        latest[Path(record["file"]).name] = record  # a later line supersedes an earlier one
    from pydicom import dcmread

    outputs = [dcmread(p, stop_before_pixels=True) for p in (tmp_path / "out").rglob("*.dcm")]
    assert len(outputs) == 4 and len({ds.SeriesInstanceUID for ds in outputs}) == 1
    for n, ds in enumerate(study):
        status, reason = latest[f"IMG{n:04d}.dcm"]["status"], latest[f"IMG{n:04d}.dcm"]["reason"]
        if ds.SeriesInstanceUID != held_series:
            assert status == "written"
        else:
            assert (status, reason) == ("quarantined", "burned_in_annotation" if n == 2 else "series_quarantined")
    assert (latest["IMG9999.dcm"]["status"], latest["IMG9999.dcm"]["reason"]) == ("excluded", "excluded_by_rule")
    assert len(list((tmp_path / "q").glob("*.json"))) == 4
