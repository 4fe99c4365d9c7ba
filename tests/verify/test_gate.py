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


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"BurnedInAnnotation": "YES"}, Reason.BURNED_IN_ANNOTATION),
     ({"Modality": "US", "SOPClassUID": UltrasoundImageStorage}, Reason.BURNED_IN_RISK),
     ({"Modality": "OT", "SOPClassUID": SecondaryCaptureImageStorage}, Reason.BURNED_IN_RISK),
     ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, Reason.BURNED_IN_RISK),
     ({"SOPClassUID": EncapsulatedPDFStorage}, Reason.ENCAPSULATED_DOCUMENT),
     ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.481.5"}, Reason.UNKNOWN_SOP_CLASS),  # RT Plan: not nccid's
     ({"SOPClassUID": "1.3.6.1.4.1.99999.1"}, Reason.UNKNOWN_SOP_CLASS),  # a private SOP class
     ({"PatientID": ""}, Reason.NO_PATIENT_ID)],
)
def test_screened_out_before_deidentification(run: Callable, change: dict[str, object], reason: Reason) -> None:
    """Burned-in risk, documents, unknown SOP classes and missing patient IDs go to quarantine."""
    ds = make_ct_slice(Patient())
    for keyword, value in change.items():
        setattr(ds, keyword, value)
        if keyword == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
    outcome = run(ds)
    assert outcome.status == "quarantined" and outcome.refusal.reason is reason


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
