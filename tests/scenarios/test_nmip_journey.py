"""The daemon under `nmip`, fed by a real PACS push, delivering to the real test platform.

One patient's ultrasound study (single frames with and without calibrated regions, and a cine),
mammography study (two views), and CT study with its dose SR, GE's dose screen (a CT image whose
top band names the patient) and a dose screen as a secondary capture, every image with the
patient's name, ID, NHS number or date of birth burned into its pixels. Orthanc, as the PACS,
pushes the three studies to the agent (C-STORE); the agent delivers to nginx (mTLS, token) in
front of Orthanc's DICOMweb. On the platform: every instance arrived, none excluded or
quarantined; no planted identifier in any byte; the images whose text was covered say so
(BurnedInAnnotation NO, Clean Pixel Data 113101) and every glyph of the identifying text is
covered; the CT slices are their own pixels, untouched; the dose SR keeps its dose figures; and
OCR of every image the platform holds reads none of the patient's name, ID, NHS number or date
of birth.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from agent.deidentify import masking, ocr
from agent.deidentify.pseudonym import Pseudonymiser, PseudonymSettings
from agent.keys import load_key_file
from tests import burnedin
from tests.burnedin import burned_image, decoded
from tests.peers.orthanc import orthanc, orthanc_available
from tests.peers.platform import Platform, central_platform, clean_platform  # noqa: F401
from tests.scenarios.daemon import wait_for
from tests.scenarios.test_delivery import KEPT_BY_PROFILE, agent_for
from tests.scenarios.test_scope import _code, dose_screen_capture, dose_sr, ge_dose_screen
from tests.synthetic import Patient, _overlay_bytes, make_study, planted_values, write

pytestmark = [
    pytest.mark.skipif(not orthanc_available(), reason="Orthanc is installed by make test"),
    pytest.mark.skipif(not ocr.available(), reason="tesseract (tesseract-ocr, tesseract-ocr-eng) is installed by make test"),
]

NHS_NUMBER = "4857773457"  # a valid NHS number (modulus 11)
PATIENT = Patient(patient_id="RXX700123", name="WHITTAKER^EDITH", birth_date="19470823",
                  address="14 Moorland Road, Harrogate", phone="01423556781", other_id=NHS_NUMBER,
                  accession="ACC55501234")
US_ACCESSION, MG_ACCESSION = "ACC55501235", "ACC55501236"
REFERRER = "HARGREAVES^ALAN"

#: The identifying text burned into the pixels, one value a line (so each line's glyphs must all go).
NAME_LINE, ID_LINE, DOB_LINE, NHS_LINE = "WHITTAKER^EDITH", PATIENT.patient_id, "23/08/1947", "485 777 3457"
IDENTIFYING_LINES = (NAME_LINE, ID_LINE, DOB_LINE, NHS_LINE)
#: What OCR of an output must not read (upper case, spaces kept and removed).
READ_NEVER = ("WHITTAKER", "EDITH", PATIENT.patient_id, "700123", "23/08/1947", "23/08/47", "1947",
              NHS_NUMBER, "485 777 3457", "4857773457")

FONT_SIZE = 24
_FONT = ImageFont.load_default(size=FONT_SIZE)


@dataclass
class Source:
    """One instance the PACS holds: what it is, its dataset, and where its identifying text lies."""

    kind: str
    ds: Dataset
    glyphs: np.ndarray | None  # (rows, columns): pixels the identifying text drew (None: no text)
    masked: bool  # its pixels must arrive covered (BurnedInAnnotation NO, 113101)
    kept_words: tuple[str, ...] = ()  # text that is not identifying and must still read


# --- builders ----------------------------------------------------------------------------


def _place(ds: Dataset, study_uid: str, series_uid: str, series_number: int, instance_number: int,
           accession: str) -> Dataset:
    """A burned_image() dataset made one of the patient's: their identifiers, study and series."""
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SeriesNumber, ds.InstanceNumber = series_number, instance_number
    ds.AccessionNumber, ds.ReferringPhysicianName = accession, REFERRER
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = NHS_NUMBER, "NHS", "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    return ds


def _burned(kind: str, texts: tuple[str, ...], *, study_uid: str, series_uid: str, series_number: int,
            instance_number: int, accession: str, kept: tuple[str, ...] = (), **variant: object) -> Source:
    """A burned_image() of the patient; its identifying glyphs are where it differs from the bare
    background, inside the boxes of the identifying lines."""
    common = {"patient_name": PATIENT.name, "patient_id": PATIENT.patient_id, "birth_date": PATIENT.birth_date,
              **variant}
    burned = burned_image(texts=texts, **common)  # type: ignore[arg-type]
    plain = decoded(burned_image(texts=(), **common).dataset)  # type: ignore[arg-type]
    drawn = decoded(burned.dataset) != plain
    while drawn.ndim > 3:
        drawn = drawn.any(axis=-1)
    drawn = drawn.any(axis=0)
    identifying = np.zeros_like(drawn)
    for (x0, y0, x1, y1), text in zip(burned.boxes, burned.texts):
        if text in IDENTIFYING_LINES:
            identifying[y0:y1, x0:x1] = drawn[y0:y1, x0:x1]
    ds = _place(burned.dataset, study_uid, series_uid, series_number, instance_number, accession)
    return Source(kind, ds, identifying, masked=True, kept_words=kept)


def _paint(ds: Dataset, rows: int, columns: int, lines: tuple[tuple[int, int, str], ...]) -> np.ndarray:
    """Give a CT-like dataset (16 bits, 12 stored) a black screen of rows x columns with `lines`
    (x, y, text) in white, as a scanner's dose screen; return where identifying lines drew."""
    canvas = Image.new("L", (columns, rows), 0)
    identifying = Image.new("L", (columns, rows), 0)
    for x, y, text in lines:
        ImageDraw.Draw(canvas).text((x, y), text, fill=255, font=_FONT)
        if text in IDENTIFYING_LINES:
            ImageDraw.Draw(identifying).text((x, y), text, fill=255, font=_FONT)
    alpha = np.asarray(canvas).astype(np.int64)
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = ((alpha * 4000 + 127) // 255).astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    if (0x6000, 0x0010) in ds:  # the planted overlay follows the image's size
        ds[0x60000010].value, ds[0x60000011].value = rows, columns
        ds[0x60003000].value = _overlay_bytes(rows, columns)
    return np.asarray(identifying) > 0


def _number(meaning: tuple[str, str, str], value: str, unit: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "NUM"
    item.ConceptNameCodeSequence = Sequence([_code(*meaning)])
    measured = Dataset()
    measured.NumericValue = value
    measured.MeasurementUnitsCodeSequence = Sequence([_code(unit, "UCUM", unit)])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def ultrasound_study() -> list[Source]:
    study, series, cine = generate_uid(), generate_uid(), generate_uid()
    size: dict[str, Any] = {"rows": 400, "columns": 560}
    at: dict[str, Any] = {"study_uid": study, "accession": US_ACCESSION, "modality": "US"}
    return [
        # No regions: OCR finds the identifying lines; the probe's settings stay.
        _burned("us-ocr", (NAME_LINE, ID_LINE, DOB_LINE, "LIVER 3.5 MHz"), series_uid=series, series_number=1,
                instance_number=1, kept=("LIVER",), **at, **size),
        _burned("us-ocr-rgb", (NAME_LINE, NHS_LINE, "RT KIDNEY"), series_uid=series, series_number=1,
                instance_number=2, kept=("KIDNEY",), photometric="RGB", **at, **size),
        # Calibrated regions: the shipped rule covers everything outside them.
        _burned("us-regions", (NAME_LINE, ID_LINE, DOB_LINE, "GB 5.0 MHz"), series_uid=series, series_number=1,
                instance_number=3, regions=True, **at, **size),
        # A cine of six frames, no regions: read by OCR, covered in every frame.
        _burned("us-cine", (NAME_LINE, DOB_LINE, "PANC 4.0 MHz"), series_uid=cine, series_number=2, instance_number=1,
                frames=6, kept=("PANC",), **at, **size),
    ]


def mammography_study() -> list[Source]:
    study, series = generate_uid(), generate_uid()
    at: dict[str, Any] = {"study_uid": study, "series_uid": series, "series_number": 1, "accession": MG_ACCESSION,
          "modality": "MG", "rows": 512, "columns": 512, "manufacturer": "ACME", "model": "MAMMO 3"}
    return [
        _burned("mg-16bit", (NAME_LINE, ID_LINE, "L CC"), instance_number=1, bits=16, **at),
        _burned("mg-mono1", (NAME_LINE, DOB_LINE, "L MLO"), instance_number=2, photometric="MONOCHROME1", **at),
    ]


def ct_study() -> list[Source]:
    slices = make_study(PATIENT, n_series=1, n_per_series=3)
    study = slices[0].StudyInstanceUID
    sources = [Source("ct", ds, None, masked=False) for ds in slices]

    report = dose_sr(PATIENT, study)
    irradiation = Dataset()
    irradiation.RelationshipType, irradiation.ValueType = "CONTAINS", "CONTAINER"
    irradiation.ConceptNameCodeSequence = Sequence([_code("113819", "DCM", "CT Acquisition")])
    irradiation.ContinuityOfContent = "SEPARATE"
    irradiation.ContentSequence = Sequence([_number(("113838", "DCM", "DLP"), "412.5", "mGy.cm"),
                                            _number(("113830", "DCM", "Mean CTDIvol"), "8.25", "mGy")])
    report.ContentSequence.append(irradiation)
    sources.append(Source("dose-sr", report, None, masked=False))

    # GE's dose screen: the patient in its top band (CTP's "Dose Report" rule covers 512 x 110).
    screen = ge_dose_screen(PATIENT, study)
    glyphs = _paint(screen, 512, 512, ((12, 10, NAME_LINE), (12, 42, ID_LINE), (300, 42, DOB_LINE),
                                       (12, 200, "Total Exam DLP: 412.50 mGy-cm"), (12, 240, "CTDIvol 8.25 mGy")))
    sources.append(Source("ge-dose-screen", screen, glyphs, masked=True, kept_words=("DLP",)))

    # A dose screen as a secondary capture, from a Philips scanner: no rule describes it, OCR reads it.
    capture = dose_screen_capture(PATIENT, study)
    capture.Manufacturer, capture.ManufacturerModelName = "Philips", "Ingenuity CT"
    glyphs = _paint(capture, 384, 512, ((12, 10, NAME_LINE), (12, 42, ID_LINE), (12, 74, NHS_LINE),
                                        (12, 200, "Dose Report"), (12, 240, "Total DLP 412.50 mGy-cm")))
    sources.append(Source("dose-capture", capture, glyphs, masked=True, kept_words=("DLP",)))
    return sources


# --- what arrived ------------------------------------------------------------------------


def planted(sources: list[Source]) -> set[str]:
    """Every identifier planted in the sources, in the forms they were written and more."""
    found: set[str] = set()
    for source in sources:
        found |= {v for k, v in planted_values(PATIENT, source.ds).items() if len(v) >= 6 and k not in KEPT_BY_PROFILE}
    surname, given = PATIENT.name.split("^")
    found |= {surname, surname.title(), surname.lower(), given, given.title(), given.lower(), "Hargreaves", "HARGREAVES",
              PATIENT.patient_id, NHS_NUMBER, "485 777 3457", US_ACCESSION, MG_ACCESSION, burnedin.INSTITUTION_NAME,
              "19470823", "1947-08-23", "23/08/1947", "23.08.1947", "23-08-1947", "23 Aug 1947", "14 Moorland Road",
              "Harrogate", PATIENT.phone}
    return found


def _codes(ds: Dataset) -> list[str]:
    return [str(item.CodeValue) for item in ds.get("DeidentificationMethodCodeSequence", [])]


def _ocr_text(ds: Dataset) -> str:
    """What OCR reads in every frame (up to 8) of an image: words upper-cased, space-joined."""
    native = masking.native_copy(ds)
    frames = ocr.sample(masking.frame_count(native), 8)
    return " ".join(word.text.upper() for grey in masking.grey_frames(native, frames) for word in ocr.read(grey, 60))


def _frames(ds: Dataset) -> np.ndarray:
    """Stored pixel values as (frames, rows, columns[, samples])."""
    return decoded(masking.native_copy(ds))


# --- the journey -------------------------------------------------------------------------


def test_ultrasound_mammography_and_ct_with_dose_objects_arrive_masked_and_clean(
        tmp_path: Path, clean_platform: Platform) -> None:
    studies = {"US": ultrasound_study(), "MG": mammography_study(), "CT": ct_study()}
    sources = [s for study in studies.values() for s in study]
    files = {s.ds.SOPInstanceUID: write(s.ds, tmp_path / "pacs" / f"{i:02d}-{s.kind}.dcm") for i, s in enumerate(sources)}

    agent = agent_for(tmp_path / "agent", clean_platform, pipeline__profile="nmip", pipeline__workers=2)
    with agent:
        with orthanc(tmp_path, modalities={"agent": ("NMIP_AGENT", "127.0.0.1", agent.port)}) as pacs:
            uploaded = [pacs.upload(f) for f in files.values()]
            assert {u["Status"] for u in uploaded} == {"Success"}
            for study in sorted({u["ParentStudy"] for u in uploaded}):
                pushed = pacs.push_study("agent", study)
                assert pushed.get("FailedInstancesCount", 0) == 0, pushed
        report = wait_for(lambda: (r := agent.status())["studies"].get("purged", 0) + r["studies"].get("quarantined", 0)
                          >= 3 and not r["studies"].get("receiving") and r, 180, 0.5, "three studies settled")
    assert report["quarantine"] == [], json.dumps(report["quarantine"], indent=1)
    assert report["studies"] == {"purged": 3}
    assert report["instances"] == {"purged": len(sources)}, report["instances"]

    # Every instance once, in its study; the manifests count nothing excluded or held.
    names = Pseudonymiser(load_key_file(agent.root / "site.key"), PseudonymSettings())
    stored = clean_platform.stored_instances()
    assert set(stored) == {names.uid(str(uid)) for uid in files}
    manifests = [json.loads(body) for body in clean_platform.put_files("manifests").values()]
    assert sorted(m["instance_count"] for m in manifests) == sorted(len(s) for s in studies.values())
    assert all(m["excluded_on_site"] == 0 and m["quarantined_on_site"] == 0 for m in manifests)

    arrived = {s.kind + f"-{i}": (s, clean_platform.instance_bytes(names.uid(str(s.ds.SOPInstanceUID))))
               for i, s in enumerate(sources)}
    for label, (_, body) in arrived.items():  # kept with the test's files, to look at after a failure
        (tmp_path / "arrived").mkdir(exist_ok=True)
        (tmp_path / "arrived" / f"{label}.dcm").write_bytes(body)

    # No planted identifier in any byte the platform holds.
    secrets = planted(sources)
    blobs = [body for _, body in arrived.values()] + list(clean_platform.put_files("manifests").values())
    for blob in blobs:
        leaked = sorted(value for value in secrets if value.encode() in blob)
        assert not leaked, f"identifiers reached the platform: {len(leaked)} value(s)"

    problems: list[str] = []
    for label, (source, body) in arrived.items():
        out = dcmread(io.BytesIO(body))
        codes = _codes(out)
        if source.kind == "dose-sr":
            figures = {}
            for container in out.ContentSequence:
                for item in container.get("ContentSequence", []):
                    if item.ValueType == "NUM":
                        figures[item.ConceptNameCodeSequence[0].CodeMeaning] = float(item.MeasuredValueSequence[0].NumericValue)
            assert figures == {"DLP": 412.5, "Mean CTDIvol": 8.25}, figures
            assert "113101" not in codes
            continue
        if source.kind == "ct":  # no risk of burned-in text: its pixels are its own, as sent
            assert out.PixelData == source.ds.PixelData and out.file_meta.TransferSyntaxUID == source.ds.file_meta.TransferSyntaxUID
            assert "113101" not in codes and out.get("BurnedInAnnotation") != "NO"
        if source.masked:
            if out.get("BurnedInAnnotation") != "NO" or "113101" not in codes:
                problems.append(f"{label}: BurnedInAnnotation {out.get('BurnedInAnnotation')}, codes {codes}")
        if source.glyphs is not None:
            before, after = _frames(source.ds), _frames(out)
            assert before.shape == after.shape, label
            glyph_before, glyph_after = before[:, source.glyphs], after[:, source.glyphs]
            left = int((glyph_after == glyph_before).sum())
            if left or len(np.unique(glyph_after.reshape(-1, *glyph_after.shape[2:]), axis=0)) != 1:
                problems.append(f"{label}: {left} pixel(s) of identifying text left as they were, or not covered alike")
        read = _ocr_text(out)
        squeezed = read.replace(" ", "")
        found = [value for value in READ_NEVER if value in read or value.replace(" ", "") in squeezed]
        if found:
            problems.append(f"{label}: OCR of the output reads {found}")
        missing = [word for word in source.kept_words if word not in read]
        if missing:
            problems.append(f"{label}: text that names nobody was covered too: {missing}")
    assert not problems, "\n".join(problems)
