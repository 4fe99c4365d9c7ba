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
