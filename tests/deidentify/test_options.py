"""Each PS3.15 option's effect on real attributes, against the Basic Profile alone."""

from __future__ import annotations

from datetime import datetime
from typing import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.conftest import output_of
from tests.synthetic import (
    DEVICE_SERIAL, GEMS_CREATOR, GEMS_GROUP, GEMS_SAFE_VALUE, INSTITUTION_NAME, PLANTED_CREATOR, PLANTED_GROUP,
    STATION_NAME, Patient, make_ct_slice,
)  # fmt: skip

PATIENT = Patient()


@pytest.fixture
def ct() -> Dataset:
    ds = make_ct_slice(PATIENT)
    ds.PatientWeight = 71.5
    ds.PatientSize = 1.74
    return ds


def test_basic_profile(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Basic: names emptied, IDs dummied, dates emptied, UIDs remapped, private and overlays gone."""
    source_sop = ct.SOPInstanceUID
    out = output_of(run(ct, compose()))
    assert out.PatientName == "" and out.PatientBirthDate == "" and out.StudyDate == ""
    assert out.PatientID == "ANONYMIZED"
    assert out.SOPInstanceUID != source_sop and out.SOPInstanceUID.startswith("2.25.")
    assert out.InstitutionName == out.DeviceSerialNumber == "ANONYMIZED"  # X/Z/D: a dummy is valid for any type
    for keyword in ("PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDsSequence", "StudyDescription",
                    "SeriesDescription", "ImageComments", "PatientSex", "PatientAge", "PatientWeight",
                    "RequestAttributesSequence", "InstitutionAddress", "IssuerOfPatientID"):
        assert keyword not in out or out[keyword].value in ("", None, []), keyword
    assert not [e for e in out if e.tag.is_private]
    assert not [e for e in out if e.tag.group == 0x6000]  # overlay data removed, so its whole group
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]


def test_retain_uids(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Retain UIDs keeps instance UIDs, in the dataset and in the file meta."""
    sop, study = ct.SOPInstanceUID, ct.StudyInstanceUID
    out = output_of(run(ct, compose("retain_uids")))
    assert out.SOPInstanceUID == sop and out.StudyInstanceUID == study
    assert out.file_meta.MediaStorageSOPInstanceUID == sop
    assert "113110" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_retain_device_identity(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Retain Device Identity keeps station name and serial number."""
    out = output_of(run(ct, compose("retain_device_identity")))
    assert out.StationName == STATION_NAME and out.DeviceSerialNumber == DEVICE_SERIAL


def test_retain_institution_identity(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Retain Institution Identity keeps the institution's name."""
    out = output_of(run(ct, compose("retain_institution_identity")))
    assert out.InstitutionName == INSTITUTION_NAME


def test_retain_patient_characteristics(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Retain Patient Characteristics keeps sex, age, size and weight, and nothing identifying."""
    out = output_of(run(ct, compose("retain_patient_characteristics")))
    assert (out.PatientSex, out.PatientAge, float(out.PatientWeight), float(out.PatientSize)) == ("M", "059Y", 71.5, 1.74)
    assert out.PatientBirthDate == ""


def test_retain_longitudinal_full_dates(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Full Dates keeps dates and times as they were."""
    out = output_of(run(ct, compose("retain_longitudinal_full_dates")))
    assert (out.StudyDate, out.StudyTime, out.AcquisitionDateTime) == ("20200315", "233000", "20200315233000.000000")
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_retain_longitudinal_modified_dates(compose: Callable, run: Callable, ct: Dataset, site_key) -> None:
    """Modified Dates moves every date and time by the patient's offset, pairs as one instant."""
    from agent.deidentify.pseudonym import Pseudonymiser, PseudonymSettings

    profile = compose("retain_longitudinal_modified_dates")
    offset = Pseudonymiser(site_key, PseudonymSettings()).date_offset(PATIENT.patient_id)
    expected = datetime(2020, 3, 15, 23, 30) + offset
    out = output_of(run(ct, profile))
    assert (out.StudyDate, out.StudyTime) == (expected.strftime("%Y%m%d"), expected.strftime("%H%M%S"))
    assert (out.SeriesDate, out.SeriesTime) == (out.StudyDate, out.StudyTime)
    assert out.AcquisitionDateTime == expected.strftime("%Y%m%d%H%M%S") + ".000000"
    assert out.PatientBirthDate == ""  # no option keeps the birth date
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_clean_descriptors(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Clean Descriptors keeps descriptions but removes the patient's identifiers from them."""
    out = output_of(run(ct, compose("clean_descriptors")))
    assert out.StudyDescription == "CT CHEST *"
    assert out.SeriesDescription == "AXIAL * *"
    assert "PLANTED" not in str(out.get("ImageComments", ""))


def test_clean_structured_content(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Structured content is kept with its free text cleaned under the option (recorded); under
    Basic, Z empties the sequence: no original item survives."""
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = f"performed on {PATIENT.name}"
    ct.AcquisitionContextSequence = Sequence([item])
    basic = output_of(run(ct.copy(), compose()))
    cleaned = output_of(run(ct, compose("clean_structured_content")))
    assert len(basic.AcquisitionContextSequence) == 0
    assert cleaned.AcquisitionContextSequence[0].TextValue == "performed on *"
    assert "113104" in [i.CodeValue for i in cleaned.DeidentificationMethodCodeSequence]


def test_clean_graphics(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Clean Graphics keeps graphic annotations (cleaned); overlay bitmaps cannot be cleaned and go."""
    text = Dataset()
    text.UnformattedTextValue = f"{PATIENT.name} arrow"
    annotation = Dataset()
    annotation.TextObjectSequence = Sequence([text])
    ct.GraphicAnnotationSequence = Sequence([annotation])
    out = output_of(run(ct, compose("clean_graphics", site_recipe="REPLACE (0070,0006) func:clean")))
    assert out.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "* arrow"
    assert not [e for e in out if e.tag.group == 0x6000]


def test_retain_safe_private(compose: Callable, run: Callable, ct: Dataset) -> None:
    """Retain Safe Private keeps Table E.3.10-1 elements with their creator; the rest goes."""
    out = output_of(run(ct, compose("retain_safe_private")))
    block = out.private_block(GEMS_GROUP, GEMS_CREATOR)
    assert block[0x23].value == GEMS_SAFE_VALUE
    assert 0x10 not in block  # the unsafe element of the same block
    with pytest.raises(KeyError):
        out.private_block(PLANTED_GROUP, PLANTED_CREATOR)


def test_nccid_profile(run: Callable, ct: Dataset) -> None:
    """nccid: PatientID and PatientName both become the patient pseudonym; its options are recorded."""
    out = output_of(run(ct, "nccid"))
    assert out.PatientID == out.PatientName.family_name and len(out.PatientID) == 12
    assert out.PatientSex == "M" and out.StationName == STATION_NAME
    assert out.AccessionNumber != PATIENT.accession and len(out.AccessionNumber) == 16
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113108", "113109", "113111", "113105", "113107"]
    assert any(v.startswith("key ") for v in out.DeidentificationMethod)
