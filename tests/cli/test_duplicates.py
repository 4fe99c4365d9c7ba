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
        us = make_ct_slice(Patient(), plant=False)
        us.SOPInstanceUID = us.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        us.SOPClassUID = us.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
        us.Modality, us.ImageComments = "US", comment
        write(us, inputs / "e" / f"us{n}.dcm")
    out, quarantine = tmp_path / "out", tmp_path / "quarantine"
    reports = []
    summary = anonymise(inputs, out, profile="nccid", key_file=key_file, quarantine_dir=quarantine, workers=2,
                        on_report=reports.append)

    assert len(reports) == 6  # every input reported once
    outputs = sorted(out.rglob("*.dcm"))
    assert len(outputs) == 1  # only the unrelated instance: which of the CT's versions is right is unknown
    records = sorted(quarantine.glob("*.json"))
    sources = {p.read_bytes() for p in quarantine.glob("*.dcm")}
    # The CT's two contents and the two ultrasound files, each filed: nothing written over another.
    assert len(sources) == 4 and len(records) == 4
    assert summary.reasons.get("duplicate_sop_instance", 0) >= 2
    assert summary.reasons.get("burned_in_risk") == 2
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
    (inputs / "junk.dcm").write_bytes(b"not dicom")
    report = tmp_path / "report.jsonl"
    run = nmip("anonymise", inputs, tmp_path / "out", "--profile", "nccid", "--key-file", key_file,
               "--quarantine", tmp_path / "q", "--workers", "1", "--report", report, cwd=tmp_path)
    assert "written 1, excluded 0, quarantined 1, unreadable 1" in run.stdout
    records = {Path(r["file"]).name: r for r in map(json.loads, report.read_text().splitlines())}
    assert set(records) == {"ct.dcm", "us.dcm", "junk.dcm"}
    assert records["ct.dcm"]["status"] == "written" and records["ct.dcm"]["output"].endswith(".dcm")
    assert records["us.dcm"]["status"] == "quarantined" and records["us.dcm"]["reason"] == "burned_in_risk"
    assert records["junk.dcm"]["status"] == "unreadable"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
