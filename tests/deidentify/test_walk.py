"""The plan applied at every depth: nested sequences, private blocks, file meta, character sets,
and UIDs and dates that stay consistent across instances, studies and patients."""

from __future__ import annotations

from datetime import datetime
from typing import Callable

import pytest
from pydicom.dataset import Dataset

from tests.conftest import encode, output_of
from tests.synthetic import SOURCE_AE_TITLE, Patient, make_ct_slice, make_study, nested_item, planted_values

SITE_KEEPS_REQUEST = "KEEP (0040,0275)"


def test_nested_sequence_three_deep(compose: Callable, run: Callable) -> None:
    """Three sequences down, names are dummied, IDs pseudonymised and references remapped."""
    ds = make_ct_slice(Patient())
    source_sop = ds.SOPInstanceUID
    profile = compose("retain_safe_private", site_recipe=SITE_KEEPS_REQUEST + "\nREPLACE (0010,0020) func:patient_pseudonym")
    out = output_of(run(ds, profile))
    deep = nested_item(out)
    assert deep.PersonName == "ANONYMIZED^"
    assert deep.PatientID == out.PatientID != Patient().patient_id
    assert deep.ReferencedSOPInstanceUID == out.SOPInstanceUID != source_sop
    text_item = out.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].ProtocolContextSequence[1]
    assert text_item.TextValue == "*"  # free text inside a sequence is cleaned, not kept
    uid_item = out.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].ProtocolContextSequence[2]
    assert uid_item.UID == out.StudyInstanceUID


def test_file_meta_is_rewritten(run: Callable) -> None:
    """File meta names the new instance and nmip-agent; the sender's AE title is gone."""
    ds = make_ct_slice(Patient())
    out = output_of(run(ds))
    meta = out.file_meta
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert meta.ImplementationVersionName.startswith("NMIP_")
    assert "SourceApplicationEntityTitle" not in meta
    assert SOURCE_AE_TITLE.encode() not in run(make_ct_slice(Patient())).encoded


@pytest.mark.parametrize(
    ("charset", "name"),
    [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "Ωμέγα^Ελένη"),
     ("ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう")],
)
def test_character_sets(run: Callable, charset: str, name: str) -> None:
    """Names in Latin-1, UTF-8 and Japanese are replaced, and none of their parts survives."""
    patient = Patient(name=name)
    out = output_of(run(make_ct_slice(patient, charset=charset)))
    assert out.PatientName.family_name == out.PatientID and str(out.PatientName) == out.PatientID + "^"
    text = "\n".join(str(e.value) for e in out.iterall() if isinstance(e.value, str))
    for part in name.replace("=", "^").split("^"):
        assert part not in text


def test_uids_consistent_within_a_study(run: Callable) -> None:
    """Every instance of a study gets the same new study UID; references follow their targets."""
    study = make_study(Patient(), n_series=2, n_per_series=3)
    sources = [(ds.SOPInstanceUID, ds.SeriesInstanceUID) for ds in study]
    outs = [output_of(run(ds)) for ds in study]
    assert len({o.StudyInstanceUID for o in outs}) == 1
    assert len({o.SeriesInstanceUID for o in outs}) == 2
    new_sop = {src[0]: o.SOPInstanceUID for src, o in zip(sources, outs)}
    for source_ds, out in zip(study, outs):
        if "ReferencedImageSequence" in source_ds:
            ref = source_ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new_sop[ref]
    assert len({o.FrameOfReferenceUID for o in outs}) == 2


def test_uids_consistent_across_studies_and_runs(run: Callable, site_key) -> None:
    """The same source UID maps to the same new UID in another study and another run; different UIDs differ."""
    a = make_ct_slice(Patient(), study_uid="1.2.826.0.1.3680043.2.1125.1.1")
    b = make_ct_slice(Patient(patient_id="OTHER1"), study_uid="1.2.826.0.1.3680043.2.1125.1.2",
                      frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.9")
    c = make_ct_slice(Patient(), study_uid="1.2.826.0.1.3680043.2.1125.1.1",
                      frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.9")
    out_a, out_b, out_c = (output_of(run(ds)) for ds in (a, b, c))
    assert out_a.StudyInstanceUID == out_c.StudyInstanceUID != out_b.StudyInstanceUID
    assert out_b.FrameOfReferenceUID == out_c.FrameOfReferenceUID


def test_intervals_between_studies_of_a_patient(run: Callable) -> None:
    """Two studies of one patient keep their interval; another patient gets another offset."""
    fmt = "%Y%m%d%H%M%S"

    def moment(ds: Dataset) -> datetime:
        return datetime.strptime(ds.StudyDate + ds.StudyTime, fmt)

    first = output_of(run(make_ct_slice(Patient(), study_date="20200110", study_time="081500")))
    later = output_of(run(make_ct_slice(Patient(), study_date="20200402", study_time="231000")))
    other = output_of(run(make_ct_slice(Patient(patient_id="HOSP999"), study_date="20200110", study_time="081500")))
    assert moment(later) - moment(first) == datetime(2020, 4, 2, 23, 10) - datetime(2020, 1, 10, 8, 15)
    assert moment(other) != moment(first)


def test_no_planted_value_survives_nccid(run: Callable) -> None:
    """Under nccid, no planted identifier is anywhere in the released bytes."""
    ds = make_ct_slice(Patient())
    planted = planted_values(Patient(), ds)
    encoded = run(ds).encoded
    assert encoded is not None
    lowered = encoded.lower()
    retained = {"site.station_name", "site.device_serial"}  # nccid applies Retain Device Identity
    leaked = [label for label, value in planted.items() if value.lower().encode() in lowered and label not in retained]
    assert not leaked


def test_deidentification_does_not_depend_on_transfer_syntax(run: Callable) -> None:
    """The same dataset in implicit and explicit VR gives the same pseudonym and UIDs."""
    from pydicom.uid import ImplicitVRLittleEndian

    explicit = make_ct_slice(Patient(), sop_uid="1.2.826.0.1.3680043.2.1125.5")
    implicit = make_ct_slice(Patient(), sop_uid="1.2.826.0.1.3680043.2.1125.5")
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    a, b = output_of(run(explicit)), output_of(run(implicit))
    assert (a.PatientID, a.SOPInstanceUID) == (b.PatientID, b.SOPInstanceUID)


def test_dry_run_records_every_attribute(run: Callable) -> None:
    """check's report lists attributes with action, before and after, including removed ones."""
    outcome = run(make_ct_slice(Patient()), record=True)
    changes = {c.path: c for c in outcome.result.changes}
    assert changes["(0010,0010)"].before == Patient().name
    assert changes["(0010,0010)"].after == outcome.result.patient_pseudonym + "^"
    assert changes["(0010,1040)"].after is None  # PatientAddress removed
    assert "deid.basic" in changes["(0010,1040)"].action
    assert encode  # the report never changes what is released


def test_invalid_private_elements_are_removed(run: Callable) -> None:
    """(gggg,0001-000F) in a private group has no creator to vouch for it: it never survives."""
    ds = make_ct_slice(Patient())
    ds.add_new(0x00290005, "LO", "hidden")
    out = output_of(run(ds))
    assert 0x00290005 not in out


def test_untouched_sequence_keeps_its_bytes(run: Callable) -> None:
    """A code sequence with nothing to change is written back as it came."""
    from pydicom.sequence import Sequence

    ds = make_ct_slice(Patient(), plant=False)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", "Chest"
    ds.AnatomicRegionSequence = Sequence([code])
    out = output_of(run(ds))
    assert out.AnatomicRegionSequence[0].CodeMeaning == "Chest"
