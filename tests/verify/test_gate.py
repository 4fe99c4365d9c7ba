"""The release gate: what it refuses before de-identifying, and what it finds after."""

from __future__ import annotations

from typing import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage, SecondaryCaptureImageStorage, UltrasoundImageStorage

from agent.quarantine import Reason
from tests.synthetic import PLANTED_CREATOR, PLANTED_GROUP, PLANTED_ID_ELEMENT, Patient, make_ct_slice


def test_identifier_in_a_private_tag_is_caught(compose: Callable, run: Callable) -> None:
    """A site rule that keeps a private element holding the patient ID is stopped by the gate."""
    profile = compose("retain_safe_private", site_recipe=f'KEEP ({PLANTED_GROUP:04X},"{PLANTED_CREATOR}",{PLANTED_ID_ELEMENT:02X})')
    outcome = run(make_ct_slice(Patient()), profile)
    assert outcome.status == "quarantined" and outcome.encoded is None
    assert outcome.refusal.reason is Reason.RESIDUAL_IDENTIFIER
    assert outcome.refusal.detail == "patient_id found in (0029,1001)"


def test_identifier_in_a_nested_sequence_is_caught(compose: Callable, run: Callable) -> None:
    """A kept free-text item three sequences down that names the patient is stopped by the gate."""
    profile = compose(site_recipe="KEEP (0040,0275)\nKEEP (0040,A160)")
    outcome = run(make_ct_slice(Patient()), profile)
    assert outcome.refusal.reason is Reason.RESIDUAL_IDENTIFIER
    assert outcome.refusal.detail == "patient_id found in (0040,0275)[0] > (0040,0008)[0] > (0040,0440)[1] > (0040,A160)"


@pytest.mark.parametrize(
    ("planted", "label"),
    [("12 Planted Street", "address"), ("12/03/1961", "birth_date"), ("15 Mar 2020", "study_date"),
     ("ACC99887766", "accession"), ("Plantedgiven", "patient_name"), ("01132345678", "phone")],
)
def test_identifier_in_any_written_form_is_caught(compose: Callable, run: Callable, planted: str, label: str) -> None:
    """Dates in other formats, name parts in other cases, addresses and phones are all found."""
    ds = make_ct_slice(Patient())
    ds.ImageComments = f"note: {planted}"
    outcome = run(ds, compose(site_recipe="KEEP (0020,4000)"))
    assert outcome.refusal is not None and outcome.refusal.detail == f"{label} found in (0020,4000)"


def test_refusal_detail_never_quotes_the_value(compose: Callable, run: Callable) -> None:
    """Quarantine reasons name the kind of identifier and where, never the identifier itself."""
    ds = make_ct_slice(Patient())
    outcome = run(ds, compose(site_recipe="KEEP (0010,1040)"))
    assert outcome.refusal is not None
    for value in (Patient().address, "Planted", "Leeds"):
        assert value.lower() not in outcome.refusal.detail.lower()


def test_numbers_and_words_that_merely_contain_an_identifier_pass(run: Callable) -> None:
    """An ID inside a longer number, or a name inside a longer word, is not a leak."""
    patient = Patient(patient_id="4711", name="ANN^LEE")
    ds = make_ct_slice(patient, plant=False)
    ds.SeriesDescription = "PLANNING 47110 SLEEP"
    assert run(ds).status == "passed"


def _changed(change: dict[str, object]) -> Dataset:
    ds = make_ct_slice(Patient())
    for keyword, value in change.items():
        setattr(ds, keyword, value)
        if keyword == "SOPClassUID" and value:
            ds.file_meta.MediaStorageSOPClassUID = value
    return ds


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"BurnedInAnnotation": "YES"}, Reason.BURNED_IN_ANNOTATION),
     ({"SOPClassUID": ""}, Reason.UNKNOWN_SOP_CLASS),  # damaged: no class to judge its scope by
     ({"PatientID": ""}, Reason.NO_PATIENT_ID)],
)
def test_screened_out_before_deidentification(run: Callable, change: dict[str, object], reason: Reason) -> None:
    """Burned-in text, a damaged SOP class and a missing patient ID go to quarantine."""
    outcome = run(_changed(change))
    assert outcome.status == "quarantined" and outcome.refusal.reason is reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"Modality": "US", "SOPClassUID": UltrasoundImageStorage}, Reason.OUT_OF_SCOPE),
     ({"Modality": "OT", "SOPClassUID": SecondaryCaptureImageStorage}, Reason.OUT_OF_SCOPE),
     ({"SOPClassUID": EncapsulatedPDFStorage}, Reason.OUT_OF_SCOPE),
     ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.481.5"}, Reason.OUT_OF_SCOPE),  # RT Plan: not nccid's
     ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.67"}, Reason.OUT_OF_SCOPE),  # X-Ray Radiation Dose SR
     ({"SOPClassUID": "1.3.6.1.4.1.99999.1"}, Reason.OUT_OF_SCOPE),  # a private SOP class
     ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, Reason.EXCLUDED_BY_RULE),  # GE dose screen as CT
     ({"SeriesDescription": "Dose Report"}, Reason.EXCLUDED_BY_RULE),
     ({"SeriesDescription": "CT DOSE_INFO"}, Reason.EXCLUDED_BY_RULE),
     ({"SeriesDescription": "Patient Protocol"}, Reason.EXCLUDED_BY_RULE)],
)
def test_out_of_scope_is_excluded_before_any_work(run: Callable, change: dict[str, object], reason: Reason) -> None:
    """What nccid does not collect is excluded: not written, not quarantined, with its reason."""
    outcome = run(_changed(change))
    assert outcome.status == "excluded" and outcome.refusal.reason is reason
    assert outcome.encoded is None and outcome.result is None
    assert outcome.series_key  # recorded with its series


@pytest.mark.parametrize("description", ["Low dose CT chest", "CHEST 1.0 B70f", "Dose modulated thorax"])
def test_ordinary_series_are_not_caught_by_the_dose_rules(run: Callable, description: str) -> None:
    ds = make_ct_slice(Patient(), plant=False)
    ds.SeriesDescription = description
    assert run(ds).status == "passed"


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"Modality": "US", "SOPClassUID": UltrasoundImageStorage}, Reason.BURNED_IN_RISK),
     ({"Modality": "OT", "SOPClassUID": SecondaryCaptureImageStorage}, Reason.BURNED_IN_RISK),
     ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, Reason.BURNED_IN_RISK)],
)
def test_a_profile_that_takes_burned_in_risk_still_refuses_it(compose: Callable, run: Callable,
                                                            change: dict[str, object], reason: Reason) -> None:
    """In scope (all-storage, no rule) but with no pixel rule: quarantined, never passed."""
    outcome = run(_changed(change), compose())
    assert outcome.status == "quarantined" and outcome.refusal.reason is reason


def test_all_storage_leaves_encapsulated_documents_out(compose: Callable, run: Callable) -> None:
    outcome = run(_changed({"SOPClassUID": EncapsulatedPDFStorage}), compose())
    assert outcome.status == "excluded" and outcome.refusal.reason is Reason.OUT_OF_SCOPE


def test_unknown_public_attribute_is_searched_too(run: Callable) -> None:
    """An attribute newer than pydicom's dictionary (read as UN) cannot smuggle an identifier out."""
    ds = make_ct_slice(Patient())
    ds.add_new(0x00231234, "LO", "x")  # private, removed
    ds.add_new(0x00541400, "UN", Patient().patient_id.encode())  # a public tag pydicom does not know, as UN
    outcome = run(ds)
    assert outcome.status == "quarantined"
    assert outcome.refusal.detail.startswith("patient_id found in (0054,1400)")


def test_original_uid_in_free_text_is_caught(compose: Callable, run: Callable) -> None:
    """An original UID copied into kept text (here a comment) is found after the UIDs were remapped."""
    ds = make_ct_slice(Patient())
    ds.ImageComments = f"see study {ds.StudyInstanceUID}"
    outcome = run(ds, compose(site_recipe="KEEP (0020,4000)"))
    assert outcome.refusal is not None and outcome.refusal.detail == "uid found in (0020,4000)"


def test_deflated_output_is_inflated_before_the_search(compose: Callable, run: Callable) -> None:
    """In a deflated file the bytes are compressed: the gate searches the inflated dataset."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_ct_slice(Patient())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert run(ds.copy()).status == "passed"
    ds.ImageComments = f"note: {Patient().patient_id}"
    outcome = run(ds, compose(site_recipe="KEEP (0020,4000)"))
    assert outcome.refusal is not None and outcome.refusal.detail == "patient_id found in (0020,4000)"


def test_attribute_newer_than_pydicoms_dictionary_is_matched_by_tag(compose: Callable, run: Callable) -> None:
    """(0010,0011) Person Names to Use (2026d) reads as UN in implicit VR; Basic still removes it."""
    from pydicom.uid import ImplicitVRLittleEndian

    ds = make_ct_slice(Patient())
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.add_new(0x00100011, "UN", b"PLANTEDNICKNAME ")
    outcome = run(ds, compose(), record=True)
    assert outcome.status == "passed", outcome.refusal
    assert b"PLANTEDNICKNAME" not in outcome.encoded
    assert [c.after for c in outcome.result.changes if c.path == "(0010,0011)"] == [None]


def test_unknown_sequence_in_implicit_vr_is_walked(run_bytes: Callable) -> None:
    """A sequence pydicom's dictionary does not know (implicit VR, so UN) is read as one and walked:
    the name in its item does not leave, where it used to pass as raw bytes."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import ImplicitVRLittleEndian

    from tests.conftest import encode

    surname = Patient().name.split("^")[0]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "F", "99LOCAL", f"as told by {surname}"
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = True, True
    write_dataset(buffer, item)
    value = b"\xfe\xff\x00\xe0" + len(buffer.getvalue()).to_bytes(4, "little") + buffer.getvalue()
    ds = make_ct_slice(Patient())
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = encode(ds)
    # (0010,0043) Sex Parameters for Clinical Use Category Sequence (2023), which nccid keeps: as a
    # PACS writes it in implicit VR, bytes pydicom 3.0.2 can only read as UN.
    element = b"\x10\x00\x43\x00" + len(value).to_bytes(4, "little") + value
    at = data.index(b"\x28\x00\x02\x00")  # before the image pixel module's first element
    outcome = run_bytes(data[:at] + element + data[at:])
    assert outcome.status == "passed", outcome.refusal
    assert surname.encode() not in outcome.encoded
    walked = outcome.result.dataset[0x00100043]  # read back, implicit VR makes it UN again
    assert walked.VR == "SQ" and len(walked.value) == 1 and surname not in str(walked.value[0].CodeMeaning)


def test_one_character_surname_is_searched_in_cjk_text(compose: Callable, run: Callable) -> None:
    """A one-character Chinese surname is found inside unspaced text, where word boundaries do not exist."""
    ds = make_ct_slice(Patient(name="Wang^Xiaoming=王^小明"))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDescription = "王医生"
    outcome = run(ds, compose(site_recipe="KEEP (0008,1030)"))
    assert outcome.refusal is not None and outcome.refusal.detail == "patient_name found in (0008,1030)"


def test_device_values_that_are_also_surnames_pass(run: Callable) -> None:
    """Manufacturer "Philips" and a station called after a person are products, not people."""
    ds = make_ct_slice(Patient(), plant=False)
    ds.Manufacturer = "Philips"
    ds.ManufacturerModelName = "Brilliance Kennedy"
    ds.StationName = "HOLLY"
    assert run(ds).status == "passed"


@pytest.mark.parametrize(
    ("text", "detector"),
    [("943 476 5919", "nhs_number"), ("0113 496 0123 for results", "phone"), ("LS1 3EX", "postcode"),
     ("a.b@example.org", "email"), ("MRN 7734921", "labelled_identifier"), ("3 March 2019", "date"),
     ("Dr Okafor", "titled_name"), ("Ramanathan", "name_lexicon")],
)
def test_each_detector_refuses_kept_free_text(compose: Callable, run: Callable, text: str, detector: str) -> None:
    """Each detector names itself and the attribute, never the value, whatever the source held."""
    ds = make_ct_slice(Patient(), plant=False)
    ds.ImageComments = text
    outcome = run(ds, compose(site_recipe="KEEP (0020,4000)"))
    assert outcome.refusal is not None and outcome.refusal.detail == f"{detector} found in (0020,4000)"


def test_the_agents_own_marking_never_trips_the_gate() -> None:
    """De-identification Method names the key id, whose hex digits can look like a phone or an NHS
    number: whatever the key, a clean instance passes."""
    import secrets

    from agent.keys import SiteKey
    from agent.process import InstanceProcessor
    from tests.conftest import encode, shipped

    data = encode(make_ct_slice(Patient(), plant=False))
    refused = []
    for _ in range(60):
        outcome = InstanceProcessor(shipped("nccid"), SiteKey(secrets.token_bytes(32))).process(data, "test")
        if outcome.status != "passed":
            refused.append(outcome.refusal)
    assert refused == []
