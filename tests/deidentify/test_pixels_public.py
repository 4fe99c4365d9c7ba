"""Burned-in text on public files with real burned-in text (pydicom's and deid-data's samples).

Each file goes through every stage under `nmip`, gate included: what the region rules and OCR
found is covered, everything else is the source's pixels unchanged, the output decodes, the
gate's OCR reads none of the source's identifiers, and dciodvfy reports no new error.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import deid_data
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from agent.deidentify import masking, ocr
from agent.deidentify.burnedin import PixelReport
from agent.process import Outcome
from tests.tools.dciodvfy import dciodvfy_available, dciodvfy_errors, dciodvfy_output

ULTRASOUNDS = Path(os.path.dirname(deid_data.__file__)) / "data" / "ultrasounds"
#: A realistic patient planted in every header (some samples are named "OB" or "Anonymized"): the
#: gate then searches the output's pixels for these too.
PLANTED = {"PatientName": "WHITTAKER^EDITH^ROSE", "PatientID": "RJ884411", "PatientBirthDate": "19610312"}


def _public(name: str) -> Path:
    found = get_testdata_file(name)
    return Path(found) if found else ULTRASOUNDS / name


#: file, what should cover its text: region rules ("rules") or OCR ("ocr").
FILES = [
    ("examples_palette.dcm", "rules"),  # Philips CX50, PALETTE COLOR, regions
    ("OBXXXX1A.dcm", "rules"),
    ("OBXXXX1A_rle.dcm", "rules"),  # RLE: decoded, masked, written native
    ("OBXXXX1A_2frame.dcm", "rules"),  # both frames
    ("US1_UNCR.dcm", "ocr"),  # GE LOGIQ 700, RGB, no regions: OCR finds the institution
    ("US1_J2KR.dcm", "ocr"),  # the same image, JPEG 2000 lossless (YBR_RCT)
    ("gdcm-US-ALOKA-16.dcm", "rules"),  # 16-bit PALETTE COLOR, regions
    ("GREYSCALE_IMAGE.dcm", "rules"),  # Philips EPIQ, MONOCHROME2, name and DOB in the top band
    ("RGB_IMAGE.dcm", "rules"),  # Siemens S2000, RGB, name and MRN in the top band
]


def _planted(path: Path, tmp_path: Path) -> Path:
    ds = dcmread(path)
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    out = tmp_path / f"source-{path.name}"
    ds.save_as(out)
    return out


def _covered(report: PixelReport, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in report.region_boxes + [hit.box for hit in report.ocr_hits]:
        mask[y0:y1, x0:x1] = True
    return mask


def _stored(ds: Dataset) -> np.ndarray:
    """Stored values (palette indices, RGB after a colour decoder), frames first."""
    array = ds.pixel_array
    return array.reshape((masking.frame_count(ds), int(ds.Rows), int(ds.Columns), -1))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, site_key) -> dict[str, tuple[Path, Outcome]]:
    """Every file once (OCR costs about a second a frame), shared by the tests below."""
    from agent.deidentify import load_profile
    from agent.process import InstanceProcessor

    folder = tmp_path_factory.mktemp("public")
    processor = InstanceProcessor(load_profile("nmip"), site_key)
    results = {}
    for name, _ in FILES:
        source = _planted(_public(name), folder)
        results[name] = (source, processor.process(source.read_bytes(), name))
    return results


@pytest.mark.parametrize(("name", "by"), FILES)
def test_text_is_covered_and_nothing_else_changes(outcomes: dict[str, tuple[Path, Outcome]], name: str, by: str) -> None:
    source_path, outcome = outcomes[name]
    assert outcome.status == "passed", outcome.refusal
    report = outcome.result.pixels
    assert report is not None and report.masked
    assert bool(report.rules) == (by == "rules")
    assert bool(report.ocr_hits) == (by == "ocr")
    out = dcmread(io.BytesIO(outcome.encoded))
    source = dcmread(source_path)
    before, after = _stored(source), _stored(out)  # the output decodes
    assert before.shape == after.shape
    mask = _covered(report, before.shape[1:3])
    assert mask.any() and not mask.all()
    assert np.array_equal(before[:, ~mask], after[:, ~mask]), "pixels outside the covered areas changed"
    for frame in range(after.shape[0]):  # every covered pixel holds the same fill: no trace of a glyph
        assert len(np.unique(after[frame][mask].reshape(-1, after.shape[-1]), axis=0)) == 1


@pytest.mark.parametrize(("name", "by"), FILES)
def test_the_output_says_its_pixels_were_cleaned(outcomes: dict[str, tuple[Path, Outcome]], name: str, by: str) -> None:
    source_path, outcome = outcomes[name]
    out = dcmread(io.BytesIO(outcome.encoded))
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    source = dcmread(source_path)
    if source.file_meta.TransferSyntaxUID.is_compressed:  # decoded, masked, written lossless
        assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"  # RLE Lossless
        assert "LossyImageCompression" not in out or out.LossyImageCompression == source.get("LossyImageCompression")
    else:
        assert out.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    if "SequenceOfUltrasoundRegions" in source:  # the calibration stays
        for kept, original in zip(out.SequenceOfUltrasoundRegions, source.SequenceOfUltrasoundRegions):
            assert (kept.PhysicalDeltaX, kept.PhysicalDeltaY, kept.RegionLocationMinX0, kept.RegionLocationMaxY1) == (
                original.PhysicalDeltaX, original.PhysicalDeltaY, original.RegionLocationMinX0, original.RegionLocationMaxY1)


@pytest.mark.parametrize(("name", "by"), FILES)
def test_ocr_of_the_output_reads_no_identifier(outcomes: dict[str, tuple[Path, Outcome]], name: str, by: str) -> None:
    """The gate read the output (its verdict is the pass), and so does this test, independently:
    none of the planted or the file's own identifying words is readable in any frame."""
    source_path, outcome = outcomes[name]
    report = outcome.result.pixels
    assert report.gate_frames and not report.gate_hits
    source = dcmread(source_path)
    wanted = {"WHITTAKER", "EDITH", "RJ884411", str(source.get("InstitutionName", "") or "").split(" ")[0].upper()} - {""}
    if name in ("GREYSCALE_IMAGE.dcm", "RGB_IMAGE.dcm"):  # what their top bands show
        wanted |= {"ZZZ", "DOWNTIME", "00079241539", "00047431395", "08/29/1951"}
    out = masking.native_copy(dcmread(io.BytesIO(outcome.encoded)))
    for grey in masking.grey_frames(out, ocr.sample(masking.frame_count(out), 4)):
        text = " ".join(word.text.upper() for word in ocr.read(grey, 60))
        assert not [w for w in wanted if w in text], text


@pytest.mark.parametrize(("name", "by"), FILES)
def test_no_new_dciodvfy_error(outcomes: dict[str, tuple[Path, Outcome]], name: str, by: str, tmp_path: Path) -> None:
    if not dciodvfy_available():
        pytest.skip("dciodvfy (Debian dicom3tools) is installed by make test")
    source_path, outcome = outcomes[name]
    out = tmp_path / "out.dcm"
    out.write_bytes(outcome.encoded)
    assert dciodvfy_errors(out) - dciodvfy_errors(source_path) == set(), dciodvfy_output(out)


def test_a_profile_without_pixel_rules_or_ocr_still_refuses_them(run: Callable, tmp_path: Path) -> None:
    """basic takes every storage class but has no pixel rules and no OCR: an ultrasound is refused."""
    outcome = run(_planted(_public("US1_UNCR.dcm"), tmp_path), "basic")
    assert outcome.status == "quarantined" and outcome.refusal.reason.value == "burned_in_risk"
