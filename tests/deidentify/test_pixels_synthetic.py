"""Burned-in text in every stored form: text rendered into known rectangles (tests/burnedin.py).

Two ways text is covered. A site's region rule names the rectangles of its device: every glyph
pixel is covered whatever the photometric interpretation, bit depth, frame count or transfer
syntax. An at-risk image no rule describes is read by OCR: the identifying lines (the patient's
name, an NHS number, a date of birth) are covered, other text stays. Either way the pixels
outside what was covered are the source's own, the output decodes, OCR of the output reads none
of the identifiers, and dciodvfy reports no new error.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.deidentify import Profile, load_profile, masking, ocr
from agent.deidentify.profile import PROFILES_DIR
from agent.keys import SiteKey
from agent.process import InstanceProcessor, Outcome
from tests.burnedin import Burned, available, burned_image, decoded, rendered_mask
from tests.tools.dciodvfy import dciodvfy_available, dciodvfy_errors, dciodvfy_output

IDENTIFYING = ("SMITH^JOHN", "943 476 5919", "12/03/1961")  # whole lines: every glyph must go
SHOWN = ("SMITH", "9434765919", "943 476 5919", "12/03/1961", "PID-884411")


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _site_profile(folder: Path, burned: Burned) -> Profile:
    """nmip plus a site rule for the test device: its text rectangles, padded."""
    nmip = load_profile("nmip")
    rule = ["FORMAT dicom", "", "%filter graylist", "", "LABEL ACME SONO 1 # (test)",
            "  contains Manufacturer ACME", "  + contains ManufacturerModelName SONO 1"]
    rule += [f"  coordinates {max(0, x0 - 2)},{max(0, y0 - 2)},{x1 + 2},{y1 + 2}" for x0, y0, x1, y1 in burned.boxes]
    (folder / "site.pixels").write_text("\n".join(rule) + "\n")
    manifest = folder / "site.yaml"
    recipes = "\n".join(f"  - {path}" for path in nmip.recipes)
    manifest.write_text(f"name: site\nversion: '1'\nrecipes:\n{recipes}\nsop_classes: all-storage\n"
                        "pixels:\n  rules: [site.pixels]\n  ocr: {frames: 4}\n")
    return load_profile(str(manifest))


def _glyphs(burned: Burned, **variant: object) -> np.ndarray:
    """Where the text changed the pixels (any frame, any sample): the text's own footprint. After
    lossy JPEG, the 8x8 blocks around a glyph ring faintly: a change of a few levels is not text."""
    plain = decoded(burned_image(**{**variant, "texts": ()}).dataset).astype(np.int64)  # type: ignore[arg-type]
    with_text = decoded(burned.dataset).astype(np.int64)
    changed = np.abs(with_text - plain) > (32 if variant.get("syntax") == "jpeg-baseline" else 0)
    while changed.ndim > 3:
        changed = changed.any(axis=-1)
    return changed.any(axis=0)


def _before(source: Dataset, out: Dataset) -> np.ndarray:
    """The source's pixels as the output stores them: a JPEG's YCbCr comes out RGB, through the
    same decoder."""
    if out.PhotometricInterpretation == "RGB" and source.PhotometricInterpretation.startswith("YBR"):
        return np.asarray(source.pixel_array).reshape(after_shape(source))
    return decoded(source)


def after_shape(ds: Dataset) -> tuple[int, ...]:
    return (masking.frame_count(ds), int(ds.Rows), int(ds.Columns), -1)


def _covered(outcome: Outcome, shape: tuple[int, int]) -> np.ndarray:
    report = outcome.result.pixels
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in report.region_boxes + [hit.box for hit in report.ocr_hits]:
        mask[y0:y1, x0:x1] = True
    return mask


def _read_back(outcome: Outcome) -> str:
    out = masking.native_copy(dcmread(io.BytesIO(outcome.encoded)))
    frames = ocr.sample(masking.frame_count(out), 3)
    return " ".join(w.text.upper() for grey in masking.grey_frames(out, frames) for w in ocr.read(grey, 60))


VARIANTS = [
    {"photometric": "MONOCHROME2"},
    {"photometric": "MONOCHROME1"},
    {"photometric": "MONOCHROME2", "bits": 16, "modality": "OT"},
    {"photometric": "MONOCHROME2", "bits": 16, "signed": True, "modality": "OT"},
    {"photometric": "RGB"},
    {"photometric": "RGB", "planar": 1},
    {"photometric": "YBR_FULL"},
    {"photometric": "YBR_FULL", "planar": 1},
    {"photometric": "YBR_FULL_422"},
    {"photometric": "PALETTE COLOR"},
    {"photometric": "PALETTE COLOR", "bits": 16},
    {"photometric": "MONOCHROME2", "frames": 5, "regions": True},
    {"photometric": "RGB", "frames": 3},
    {"photometric": "MONOCHROME2", "modality": "MG"},
    {"photometric": "MONOCHROME2", "syntax": "implicit"},
    {"photometric": "MONOCHROME2", "syntax": "rle"},
    {"photometric": "RGB", "syntax": "rle", "frames": 2},
    {"photometric": "PALETTE COLOR", "syntax": "rle"},
    {"photometric": "MONOCHROME2", "syntax": "jpeg-ls"},
    {"photometric": "RGB", "syntax": "j2k-lossless"},
    {"photometric": "MONOCHROME2", "bits": 16, "syntax": "j2k-lossless", "modality": "OT"},
    {"photometric": "YBR_FULL_422", "syntax": "jpeg-baseline"},
    {"photometric": "MONOCHROME2", "syntax": "jpeg-baseline"},
]


def _id(variant: dict[str, object]) -> str:
    return "-".join(str(v).replace(" ", "_") for v in variant.values())


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_a_site_rule_covers_every_glyph_and_nothing_else(variant: dict[str, object], site_key: SiteKey,
                                                         tmp_path: Path) -> None:
    syntax = str(variant.get("syntax", "explicit"))
    if not available(syntax):
        pytest.skip(f"no encoder for {syntax} here")
    burned = burned_image(**variant)  # type: ignore[arg-type]
    processor = InstanceProcessor(_site_profile(tmp_path, burned), site_key)
    outcome = processor.process(_encode(burned.dataset), "synthetic")
    assert outcome.status == "passed", outcome.refusal
    report = outcome.result.pixels
    assert report.masked and report.rules == ("site.pixels: ACME SONO 1",)
    out = dcmread(io.BytesIO(outcome.encoded))
    before, after = _before(burned.dataset, out), decoded(out)  # the output decodes
    assert before.shape == after.shape
    covered = _covered(outcome, before.shape[1:3])
    if variant["photometric"] == "YBR_FULL_422":  # a pair of pixels shares its chroma: covered whole
        covered = covered.reshape(covered.shape[0], -1, 2).any(axis=2).repeat(2, axis=1)
    glyphs = _glyphs(burned, **variant)
    assert glyphs.any() and not (glyphs & ~covered).any(), "a glyph pixel lies outside what was covered"
    assert np.array_equal(before[:, ~covered], after[:, ~covered]), "pixels outside the covered areas changed"
    inside = after[:, rendered_mask(burned)]
    for frame in inside:  # each frame's text rectangles hold one value: no trace of the glyphs
        assert len(np.unique(frame.reshape(frame.shape[0], -1), axis=0)) == 1
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    # The keyed pseudonymous UID, not one a codec made up: the same source gives the same output.
    assert out.SOPInstanceUID == outcome.result.uid_map[burned.dataset.SOPInstanceUID]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    if burned.dataset.file_meta.TransferSyntaxUID.is_compressed:
        assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"  # decoded, masked, written RLE Lossless
        assert outcome.result.pixels.written_as == "RLE Lossless"
        if syntax == "jpeg-baseline":
            assert out.LossyImageCompression == "01"  # still said to have been lossy
    else:
        assert out.file_meta.TransferSyntaxUID == burned.dataset.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("variant", [
    {"photometric": "MONOCHROME2"},
    {"photometric": "RGB", "frames": 3},
    {"photometric": "PALETTE COLOR", "syntax": "rle"},
    {"photometric": "YBR_FULL_422", "syntax": "jpeg-baseline"},
], ids=_id)
def test_ocr_covers_the_identifying_lines_of_an_image_no_rule_describes(variant: dict[str, object],
                                                                       site_key: SiteKey) -> None:
    syntax = str(variant.get("syntax", "explicit"))
    if not available(syntax):
        pytest.skip(f"no encoder for {syntax} here")
    texts = IDENTIFYING + ("LIVER 4.0 MHz",)
    burned = burned_image(texts=texts, **variant)  # type: ignore[arg-type]
    outcome = InstanceProcessor(load_profile("nmip"), site_key).process(_encode(burned.dataset), "synthetic")
    assert outcome.status == "passed", outcome.refusal
    report = outcome.result.pixels
    assert not report.rules and report.ocr_hits and report.masked
    labels = {hit.label for hit in report.ocr_hits}
    assert {"patient_name", "nhs_number"} <= labels, labels
    covered = _covered(outcome, (burned.dataset.Rows, burned.dataset.Columns))
    if variant["photometric"] == "YBR_FULL_422":
        covered = covered.reshape(covered.shape[0], -1, 2).any(axis=2).repeat(2, axis=1)
    glyphs = _glyphs(burned, **{**variant, "texts": texts})
    for (x0, y0, x1, y1), text in zip(burned.boxes, burned.texts):
        line = glyphs[y0:y1, x0:x1]
        uncovered = (line & ~covered[y0:y1, x0:x1]).sum()
        if text in IDENTIFYING:
            assert uncovered == 0, f"{uncovered} glyph pixels of {text!r} left"
        else:
            assert uncovered > line.sum() // 2, f"{text!r} is not identifying and should stay"
    read = _read_back(outcome)
    assert not [value for value in SHOWN if value in read], read
    assert "LIVER" in read


def test_text_ocr_finds_outside_the_identifiers_is_kept_and_the_image_passes(site_key: SiteKey) -> None:
    burned = burned_image(texts=("LIVER SAG", "4.0 MHz 60%"))
    outcome = InstanceProcessor(load_profile("nmip"), site_key).process(_encode(burned.dataset), "synthetic")
    assert outcome.status == "passed", outcome.refusal
    report = outcome.result.pixels
    assert report.ocr_words >= 3 and not report.ocr_hits and not report.masked
    out = dcmread(io.BytesIO(outcome.encoded))
    assert np.array_equal(decoded(out), decoded(burned.dataset))
    assert out.BurnedInAnnotation == "YES"  # text is still there; it is not identifying
    assert "113101" not in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]


def test_ocr_also_reads_an_image_a_rule_covered_and_covers_what_the_rule_missed(site_key: SiteKey,
                                                                                tmp_path: Path) -> None:
    """A rule that covers the wrong place (the device moved its text): OCR still reads the
    at-risk image after the rule, and covers the identifying lines the rule left."""
    burned = burned_image(texts=IDENTIFYING)
    wrong = Burned(burned.dataset, ((0, 400, 100, 440),), ("elsewhere",))
    outcome = InstanceProcessor(_site_profile(tmp_path, wrong), site_key).process(_encode(burned.dataset), "synthetic")
    assert outcome.status == "passed", outcome.refusal
    report = outcome.result.pixels
    assert report.rules and report.ocr_hits and "patient_name" in {hit.label for hit in report.ocr_hits}
    assert not [value for value in SHOWN if value in _read_back(outcome)]


def test_the_gate_refuses_output_pixels_whose_identifiers_stay_readable(site_key: SiteKey, tmp_path: Path) -> None:
    """The gate reads the encoded output, not what the masking step believes it wrote: given
    bytes whose text is still there, it refuses them, naming kinds and boxes, never the text."""
    from agent.verify import verify_pixels

    burned = burned_image(texts=IDENTIFYING)
    processor = InstanceProcessor(load_profile("nmip"), site_key)
    outcome = processor.process(_encode(burned.dataset), "synthetic")
    assert outcome.status == "passed", outcome.refusal
    unmasked = burned_image(texts=IDENTIFYING)  # the same image, text and all, as if masking had failed
    refusal = verify_pixels(_encode(unmasked.dataset), outcome.result, processor.profile, processor.pixels)
    assert refusal is not None and refusal.reason.value == "burned_in_text"
    assert "patient_name" in refusal.detail and "SMITH" not in refusal.detail.upper()


def test_pixels_that_cannot_be_decoded_are_quarantined(site_key: SiteKey, tmp_path: Path) -> None:
    burned = burned_image(syntax="rle")
    damaged = burned.dataset
    damaged.PixelData = damaged.PixelData[:200] + b"\x00" * 16  # frames cut short
    outcome = InstanceProcessor(_site_profile(tmp_path, burned), site_key).process(_encode(damaged), "synthetic")
    assert outcome.status == "quarantined" and outcome.refusal.reason.value == "pixels_undecodable"


@pytest.mark.parametrize("variant", [
    {"photometric": "MONOCHROME2"},
    {"photometric": "PALETTE COLOR", "bits": 16},
    {"photometric": "RGB", "frames": 3, "syntax": "rle"},
    {"photometric": "MONOCHROME2", "frames": 5, "regions": True},
    {"photometric": "YBR_FULL_422", "syntax": "jpeg-baseline"},
    {"photometric": "MONOCHROME1", "modality": "MG"},
], ids=_id)
def test_no_new_dciodvfy_error(variant: dict[str, object], site_key: SiteKey, tmp_path: Path) -> None:
    if not dciodvfy_available():
        pytest.skip("dciodvfy (Debian dicom3tools) is installed by make test")
    syntax = str(variant.get("syntax", "explicit"))
    if not available(syntax):
        pytest.skip(f"no encoder for {syntax} here")
    burned = burned_image(**variant)  # type: ignore[arg-type]
    source = tmp_path / "in.dcm"
    source.write_bytes(_encode(burned.dataset))
    outcome = InstanceProcessor(_site_profile(tmp_path, burned), site_key).process(source.read_bytes(), "synthetic")
    assert outcome.status == "passed", outcome.refusal
    out = tmp_path / "out.dcm"
    out.write_bytes(outcome.encoded)
    assert dciodvfy_errors(out) - dciodvfy_errors(source) == set(), dciodvfy_output(out)


def test_the_shipped_rules_load_and_name_their_files() -> None:
    profile = load_profile("nmip")
    sources = {rule.source for rule in profile.pixels.rules}
    assert sources == {"deid.dicom", "deid.dicom.ultrasound"}  # site.nmip ships with no rule
    assert all(rule.coordinates for rule in profile.pixels.rules)  # flags without rectangles are left out
    assert (PROFILES_DIR / "pixels" / "README.md").is_file()
