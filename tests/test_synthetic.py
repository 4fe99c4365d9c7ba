"""The synthetic test data is what every de-identification test trusts: check it is valid and
that its planted identifiers are really there (and found by planted_values)."""

from __future__ import annotations

import pydicom
import pytest

from tests.synthetic import (
    GEMS_CREATOR,
    GEMS_SAFE_VALUE,
    PLANTED_CREATOR,
    Patient,
    make_ct_slice,
    make_study,
    nested_item,
    planted_values,
    write,
)
from tests.tools.dciodvfy import dciodvfy_available, dciodvfy_errors, dciodvfy_output, normalise

needs_dciodvfy = pytest.mark.skipif(
    not dciodvfy_available(), reason="dciodvfy missing: run scripts/install-debian-packages.sh (make test does)"
)

CHARSET_PATIENTS = [
    (None, Patient()),
    ("ISO_IR 100", Patient(name="Müller^Jürgen")),
    ("ISO_IR 192", Patient(name="Müller^Jürgen")),
    ("ISO 2022 IR 87", Patient(name="Yamada^Tarou=山田^太郎=やまだ^たろう")),
]


def _values(ds: pydicom.Dataset) -> list[str]:
    """Every text value at every depth, file meta included."""
    out: list[str] = []

    def walk(d: pydicom.Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.VR not in ("OB", "OW", "UN") and elem.value is not None:
                values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
                out.extend(str(v) for v in values)

    walk(ds.file_meta)
    walk(ds)
    return out


@pytest.mark.parametrize("plant", [True, False])
def test_ct_slice_round_trips(tmp_path, plant):
    ds = make_ct_slice(plant=plant, rows=16, columns=24)
    path = write(ds, tmp_path / "sub" / "ct.dcm")
    assert path == tmp_path / "sub" / "ct.dcm"
    back = pydicom.dcmread(path)
    assert back.preamble is not None and len(back.preamble) == 128  # Part 10 file
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == back.SOPInstanceUID
    assert back.SOPClassUID == pydicom.uid.CTImageStorage
    assert (back.Rows, back.Columns, back.BitsAllocated) == (16, 24, 16)
    assert len(back.PixelData) == 16 * 24 * 2
    assert back.PixelData == ds.PixelData
    assert back.PatientName == Patient().name
    for tag in ds.keys():
        assert back[tag].value == ds[tag].value, tag


def test_pixel_data_is_deterministic():
    assert make_ct_slice().PixelData == make_ct_slice().PixelData


def test_uids_default_to_fresh_values():
    a, b = make_ct_slice(), make_ct_slice()
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert a[kw].value != b[kw].value
        assert pydicom.uid.UID(a[kw].value).is_valid


def test_given_uids_are_used_everywhere():
    ds = make_ct_slice(study_uid="1.2.3.4", series_uid="1.2.3.5", sop_uid="1.2.3.6")
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == ("1.2.3.4", "1.2.3.5", "1.2.3.6")
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.6"
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == "1.2.3.4"


def test_planted_places():
    p = Patient()
    ds = make_ct_slice(p)
    assert ds.OtherPatientIDsSequence[0].PatientID == p.other_id
    assert ds.PatientAddress == p.address
    assert ds.PatientTelephoneNumbers == p.phone
    assert ds.AccessionNumber == p.accession
    assert "PLANTEDSURNAME" in ds.StudyDescription
    assert ds.file_meta.SourceApplicationEntityTitle == "HOSPPACS01"
    # private blocks: a safe GE attribute beside an unsafe one, and an own block with an SQ
    gems = ds.private_block(0x0019, GEMS_CREATOR)
    assert gems[0x23].value == GEMS_SAFE_VALUE
    assert gems[0x10].value == p.name
    own = ds.private_block(0x0029, PLANTED_CREATOR)
    assert own[0x01].value == p.patient_id
    assert own[0x02].value[0].PatientBirthDate == p.birth_date
    # overlay: bit-packed data of the right length
    assert len(ds[0x60003000].value) == ((64 * 64 + 7) // 8 + 1) // 2 * 2
    for kw in ("SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate", "AcquisitionDateTime"):
        assert kw in ds


def test_unplanted_slice_has_only_required_identity():
    ds = make_ct_slice(plant=False)
    assert ds.AccessionNumber == "" and ds.ReferringPhysicianName == ""
    for kw in ("OtherPatientIDsSequence", "PatientAddress", "RequestAttributesSequence", "InstitutionName"):
        assert kw not in ds
    assert not any(elem.tag.is_private for elem in ds)
    assert 0x60000010 not in ds
    assert "SourceApplicationEntityTitle" not in ds.file_meta


def test_overlay_length_odd_sizes():
    ds = make_ct_slice(rows=5, columns=7)  # 35 bits -> 5 bytes -> padded to 6
    assert len(ds[0x60003000].value) == 6
    assert len(ds.PixelData) == 5 * 7 * 2


def test_planted_values_finds_nested_three_deep_name():
    p = Patient()
    ds = make_ct_slice(p)
    item = nested_item(ds)  # RequestAttributesSequence > ScheduledProtocolCodeSequence > ProtocolContextSequence
    assert item.PersonName == p.name
    assert item.PatientID == p.patient_id
    assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    found = planted_values(p, ds)
    assert p.name in found.values()
    assert found["patient.name"] == p.name
    # planted_values sees the nested copy even when the top-level one is gone
    del ds.PatientName
    ds.private_block(0x0019, GEMS_CREATOR)[0x10].value = "X"
    assert planted_values(p, ds)["patient.name"] == p.name


@pytest.mark.parametrize("charset,patient", CHARSET_PATIENTS)
def test_planted_values_all_occur_and_cover_identifiers(tmp_path, charset, patient):
    ds = pydicom.dcmread(write(make_ct_slice(patient, charset=charset), tmp_path / "ct.dcm"))
    found = planted_values(patient, ds)
    haystack = _values(ds)
    for label, value in found.items():
        assert any(value in s for s in haystack), label
    expected = {
        "patient.name", "patient.patient_id", "patient.birth_date", "patient.address", "patient.phone",
        "patient.other_id", "patient.accession", "person.referring_physician", "person.other_name",
        "site.institution_name", "site.institution_address", "site.station_name", "site.source_ae_title",
        "uid.StudyInstanceUID", "uid.SeriesInstanceUID", "uid.SOPInstanceUID", "uid.FrameOfReferenceUID",
        "uid.MediaStorageSOPInstanceUID", "date.StudyDate", "date.AcquisitionDateTime",
    }  # fmt: skip
    assert expected <= found.keys()
    assert found["patient.name.0.0"] == patient.name.split("^")[0]
    # class UIDs identify nothing
    assert pydicom.uid.CTImageStorage not in found.values()
    assert pydicom.uid.ExplicitVRLittleEndian not in found.values()


def test_charset_names_round_trip(tmp_path):
    patient = Patient(name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    back = pydicom.dcmread(write(make_ct_slice(patient, charset="ISO 2022 IR 87"), tmp_path / "jp.dcm"))
    assert back.SpecificCharacterSet == ["", "ISO 2022 IR 87"]
    assert back.PatientName == patient.name
    assert nested_item(back).PersonName == patient.name
    assert "=" in str(back.ReferringPhysicianName)  # a name in the same script, not ASCII only
    latin = pydicom.dcmread(write(make_ct_slice(Patient(name="Müller^Jürgen"), charset="ISO_IR 100"), tmp_path / "l.dcm"))
    assert latin.SpecificCharacterSet == "ISO_IR 100"
    assert latin.PatientName == "Müller^Jürgen"


def test_planted_values_of_unplanted_slice():
    p = Patient()
    found = planted_values(p, make_ct_slice(p, plant=False))
    assert {"patient.name", "patient.patient_id", "patient.birth_date"} <= found.keys()
    assert "patient.accession" not in found and "patient.address" not in found


def test_study_uids_are_consistent():
    study = make_study(n_series=2, n_per_series=3)
    assert len(study) == 6
    assert len({ds.StudyInstanceUID for ds in study}) == 1
    assert len({ds.SOPInstanceUID for ds in study}) == 6
    series = {}
    for ds in study:
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    assert len(series) == 2
    frames = set()
    for instances in series.values():
        assert len({ds.FrameOfReferenceUID for ds in instances}) == 1
        assert [ds.InstanceNumber for ds in instances] == [1, 2, 3]
        assert len({ds.SeriesNumber for ds in instances}) == 1
        frames.add(instances[0].FrameOfReferenceUID)
    assert len(frames) == 2
    assert "ReferencedImageSequence" not in study[0]
    for previous, ds in zip(study, study[1:]):
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == previous.SOPInstanceUID
    for ds in study:
        assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == ds.StudyInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_study_passes_options_through():
    study = make_study(Patient(patient_id="P2"), n_series=1, n_per_series=2, plant=False, study_uid="1.2.3")
    assert [ds.StudyInstanceUID for ds in study] == ["1.2.3", "1.2.3"]
    assert all(ds.PatientID == "P2" and "InstitutionName" not in ds for ds in study)


@needs_dciodvfy
@pytest.mark.parametrize("plant", [True, False])
@pytest.mark.parametrize("charset,patient", CHARSET_PATIENTS)
def test_dciodvfy_reports_no_errors(tmp_path, plant, charset, patient):
    path = write(make_ct_slice(patient, charset=charset, plant=plant), tmp_path / "ct.dcm")
    assert dciodvfy_errors(path) == set(), dciodvfy_output(path)


@needs_dciodvfy
def test_dciodvfy_no_errors_on_study(tmp_path):
    for i, ds in enumerate(make_study(n_series=1, n_per_series=2)):
        path = write(ds, tmp_path / f"{i}.dcm")
        assert dciodvfy_errors(path) == set(), dciodvfy_output(path)


@needs_dciodvfy
def test_dciodvfy_errors_are_normalised(tmp_path, monkeypatch):
    """The same problem with different values on two files gives the same error line."""
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    paths = []
    for i, (date, accession) in enumerate([("2020-03-15", "A" * 20), ("2021/01/02", "B" * 30)]):
        ds = make_ct_slice()
        ds.StudyDate = date
        ds.AccessionNumber = accession
        del ds.PatientSex
        paths.append(write(ds, tmp_path / f"{i}.dcm"))
    first, second = (dciodvfy_errors(p) for p in paths)
    assert first == second
    assert "Error - Missing attribute Type 2 Required Element=<PatientSex> Module=<Patient>" in first
    assert any("Study Date" in e and "Character invalid" in e for e in first)
    assert not any("2020-03-15" in e or "AAAA" in e for e in first)


def test_normalise_keeps_attribute_and_kind():
    line = "Error - Value invalid for this VR - (0x0020,0x0052) UI Frame of Reference UID  UI [1] = <1.2.03> - Leading zeroes in embedded numeric component(s)"
    assert normalise(line) == (
        "Error - Value invalid for this VR - (0x0020,0x0052) UI Frame of Reference UID UI [1] = <> "
        "- Leading zeroes in embedded numeric component(s)"
    )
    assert normalise("Error - Unrecognized enumerated value <Q> for value 1 of attribute <Patient's Sex>") == (
        "Error - Unrecognized enumerated value <> for value 1 of attribute <Patient's Sex>"
    )
    assert normalise("Error - StudyInstanceUID has same value as FrameOfReferenceUID <1.2.3>") == normalise(
        "Error - StudyInstanceUID has same value as FrameOfReferenceUID <4.5.6.7>"
    )
    assert normalise('Error - Illegal root for UID - "9.8.7.6" in (0x0008,0x1155) Referenced SOP Instance UID') == (
        'Error - Illegal root for UID - "" in (0x0008,0x1155) Referenced SOP Instance UID'
    )
    assert normalise("Error - PixelData has incorrect value length - expected 30000 dec - got 20000 dec") == (
        "Error - PixelData has incorrect value length - expected N dec - got N dec"
    )
