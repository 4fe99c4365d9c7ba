"""The `nmip` profile: every imaging type in scope, structured reports cleaned item by item, and
images at risk of burned-in text held until a masking rule covers them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EncapsulatedPDFStorage, UltrasoundImageStorage, generate_uid

from agent.quarantine import Reason
from tests.synthetic import Patient, make_ct_slice

PATIENT = Patient()
COMPREHENSIVE_SR, RDSR = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.67"
MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(relationship: str, value_type: str, name: tuple[str, str, str], **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    item.ConceptNameCodeSequence = Sequence([_code(*name)])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _number(name: tuple[str, str, str], value: str, unit: str) -> Dataset:
    item = _item("CONTAINS", "NUM", name)
    measured = Dataset()
    measured.NumericValue = value
    measured.MeasurementUnitsCodeSequence = Sequence([_code(unit, "UCUM", unit)])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def make_report(sop_class: str) -> Dataset:
    """A report of the synthetic patient, the identifiers hidden at several depths of its tree."""
    surname = PATIENT.name.split("^")[0]
    ds = make_ct_slice(PATIENT)
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation", "RescaleIntercept", "RescaleSlope", "ImageType"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality, ds.SeriesDescription = "SR", "Report"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag, ds.ContinuityOfContent = "CONTAINER", "COMPLETE", "UNVERIFIED", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("113701", "DCM", "X-Ray Radiation Dose Report")])
    findings = _item("CONTAINS", "CONTAINER", ("121070", "DCM", "Findings"), ContinuityOfContent="SEPARATE")
    findings.ContentSequence = Sequence([
        _item("CONTAINS", "TEXT", ("121071", "DCM", "Finding"),
              TextValue=f"Small nodule right upper lobe, reported by Dr {surname} on 12/03/2020, {PATIENT.patient_id}"),
        _item("CONTAINS", "PNAME", ("121008", "DCM", "Person Observer Name"), PersonName=PATIENT.name),
        _item("CONTAINS", "DATE", ("111060", "DCM", "Study Date"), Date="20200315"),
        _item("CONTAINS", "UIDREF", ("121232", "DCM", "Source Study"), UID=ds.StudyInstanceUID),
    ])
    irradiation = _item("CONTAINS", "CONTAINER", ("113819", "DCM", "CT Acquisition"), ContinuityOfContent="SEPARATE")
    irradiation.ContentSequence = Sequence([
        _number(("113838", "DCM", "DLP"), "412.5", "mGy.cm"),
        _number(("113830", "DCM", "Mean CTDIvol"), "8.25", "mGy"),
        _item("CONTAINS", "TEXT", ("121106", "DCM", "Comment"), TextValue=f"Patient {surname} moved"),
    ])
    ds.ContentSequence = Sequence([findings, irradiation])
    return ds


def _walk(items: Sequence) -> list[Dataset]:
    found = []
    for item in items:
        found.append(item)
        found += _walk(item.get("ContentSequence", []))
    return found


@pytest.mark.parametrize("sop_class", [COMPREHENSIVE_SR, RDSR])
def test_a_report_is_cleaned_item_by_item_and_keeps_its_figures(run: Callable, sop_class: str) -> None:
    source = make_report(sop_class)
    outcome = run(source, "nmip")
    assert outcome.status == "passed", outcome.refusal
    assert outcome.encoded is not None
    for value in (PATIENT.patient_id, PATIENT.name.split("^")[0], PATIENT.name.split("^")[1], "12/03/2020",
                  str(source.StudyInstanceUID)):
        assert value.encode() not in outcome.encoded, value
    items = _walk(dcmread(io.BytesIO(outcome.encoded)).ContentSequence)
    by_type: dict[str, list[Dataset]] = {}
    for item in items:
        by_type.setdefault(str(item.ValueType), []).append(item)
    finding = by_type["TEXT"][0].TextValue
    assert finding.startswith("Small nodule right upper lobe") and "*" in finding  # the finding stays
    assert [str(i.PersonName) for i in by_type["PNAME"]] != [PATIENT.name]
    assert by_type["DATE"][0].Date != "20200315"  # moved with the patient's offset
    assert by_type["UIDREF"][0].UID != source.StudyInstanceUID
    figures = {i.ConceptNameCodeSequence[0].CodeMeaning: i.MeasuredValueSequence[0].NumericValue for i in by_type["NUM"]}
    assert figures == {"DLP": 412.5, "Mean CTDIvol": 8.25}


@pytest.mark.parametrize(
    "change",
    [{"SOPClassUID": UltrasoundImageStorage, "Modality": "US"},
     {"SOPClassUID": MAMMOGRAPHY, "Modality": "MG"},
     {"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}],
)
def test_images_at_risk_are_read_by_ocr_before_and_after(run: Callable, change: dict[str, object]) -> None:
    """No region rule describes these; OCR reads them (no text here) and the gate reads the output again."""
    ds = make_ct_slice(PATIENT, sop_uid=generate_uid())
    for keyword, value in change.items():
        setattr(ds, keyword, value)
        if keyword == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
    outcome = run(ds, "nmip")
    assert outcome.status == "passed", outcome.refusal
    report = outcome.result.pixels
    assert report.risk is not None and report.ocr_frames == [0] and report.gate_frames == [0]
    assert not report.masked and not report.ocr_hits and not report.gate_hits


@pytest.mark.parametrize("sop_class", [EncapsulatedPDFStorage, "1.2.840.10008.5.1.4.1.1.9.1.1"])  # PDF, 12-lead ECG
def test_documents_and_waveforms_are_out_of_scope(run: Callable, sop_class: str) -> None:
    ds = make_ct_slice(PATIENT, sop_uid=generate_uid())
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    outcome = run(ds, "nmip")
    assert (outcome.status, outcome.refusal.reason) == ("excluded", Reason.OUT_OF_SCOPE)


def test_a_ct_slice_passes_as_under_nccid(run: Callable) -> None:
    assert run(make_ct_slice(PATIENT), "nmip").status == "passed"


@pytest.mark.parametrize("sop_class", [COMPREHENSIVE_SR, RDSR])
def test_a_cleaned_report_gains_no_dciodvfy_error(run: Callable, sop_class: str, tmp_path: Path) -> None:
    """Text reduced to vocabulary, names dummied, dates moved: the report stays as valid as it came."""
    from tests.synthetic import write
    from tests.tools.dciodvfy import dciodvfy_available, dciodvfy_errors, dciodvfy_output

    if not dciodvfy_available():
        pytest.skip("dciodvfy (Debian dicom3tools) is installed by make test")
    source = write(make_report(sop_class), tmp_path / "report.dcm")
    outcome = run(source, "nmip")
    assert outcome.status == "passed", outcome.refusal
    out = tmp_path / "out.dcm"
    out.write_bytes(outcome.encoded)
    new = dciodvfy_errors(out) - dciodvfy_errors(source)
    assert new == set(), dciodvfy_output(out)
