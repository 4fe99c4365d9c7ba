"""The burned-in text generator is what the pixel masking and OCR tests trust: check that every
variant decodes, that the text is where the boxes say and nowhere else, and that tesseract can
read it."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pydicom
import pytest

from tests.burnedin import (
    UNAVAILABLE_SYNTAXES,
    Burned,
    available,
    burned_image,
    decoded,
    rendered_mask,
)
from tests.synthetic import write
from tests.tools.dciodvfy import dciodvfy_available, dciodvfy_errors, dciodvfy_output

needs_dciodvfy = pytest.mark.skipif(
    not dciodvfy_available(), reason="dciodvfy missing: run scripts/install-debian-packages.sh (make test does)"
)

# Small enough to be quick, large enough for the three default lines.
SMALL = {"rows": 160, "columns": 320}


def _syntax(name: str, **kw: object) -> object:
    """A pytest param that skips when no encoder for `name` is installed (jpeg-ls needs pyjpegls)."""
    marks = [pytest.mark.skipif(not available(name), reason=f"no encoder for {name} installed")]
    return pytest.param(dict(syntax=name, **kw), marks=marks, id=f"{name}-" + "-".join(f"{v}" for v in kw.values()))


VARIANTS = [
    _syntax("explicit", photometric="MONOCHROME2", bits=8),
    _syntax("implicit", photometric="MONOCHROME2", bits=8),
    _syntax("rle", photometric="MONOCHROME2", bits=8),
    _syntax("jpeg-ls", photometric="MONOCHROME2", bits=8),
    _syntax("j2k-lossless", photometric="MONOCHROME2", bits=8),
    _syntax("jpeg-baseline", photometric="MONOCHROME2", bits=8),
    _syntax("explicit", photometric="MONOCHROME2", bits=16, signed=True),
    _syntax("jpeg-ls", photometric="MONOCHROME2", bits=16, signed=True),
    _syntax("j2k-lossless", photometric="MONOCHROME2", bits=16, signed=True),
    _syntax("explicit", photometric="MONOCHROME1", bits=16),
    _syntax("rle", photometric="MONOCHROME1", bits=16, signed=True),
    _syntax("jpeg-baseline", photometric="MONOCHROME1", bits=8),
    _syntax("explicit", photometric="RGB", planar=0),
    _syntax("explicit", photometric="RGB", planar=1),
    _syntax("rle", photometric="RGB"),
    _syntax("jpeg-ls", photometric="RGB", planar=1),
    _syntax("j2k-lossless", photometric="RGB"),
    _syntax("jpeg-baseline", photometric="RGB"),
    _syntax("explicit", photometric="YBR_FULL", planar=1),
    _syntax("rle", photometric="YBR_FULL"),
    _syntax("j2k-lossless", photometric="YBR_FULL"),
    _syntax("explicit", photometric="YBR_FULL_422"),
    _syntax("jpeg-baseline", photometric="YBR_FULL_422"),
    _syntax("explicit", photometric="PALETTE COLOR", bits=8),
    _syntax("rle", photometric="PALETTE COLOR", bits=8),
    _syntax("explicit", photometric="PALETTE COLOR", bits=16),
    _syntax("jpeg-ls", photometric="PALETTE COLOR", bits=16),
    _syntax("j2k-lossless", photometric="PALETTE COLOR", bits=16),
    _syntax("rle", photometric="MONOCHROME2", bits=8, frames=3),
    _syntax("j2k-lossless", photometric="RGB", frames=2),
    _syntax("explicit", photometric="YBR_FULL_422", frames=2),
    _syntax("jpeg-baseline", photometric="YBR_FULL_422", frames=2),
]


def _pair(kw: dict[str, object]) -> tuple[Burned, np.ndarray, np.ndarray]:
    """The image, its decoded pixels, and the decoded pixels of the same image without text."""
    burned = burned_image(**SMALL, **kw)
    bare = burned_image(**SMALL, **kw, texts=())
    return burned, decoded(burned.dataset), decoded(bare.dataset)


def _part10(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("kw", VARIANTS)
def test_variant_decodes_with_text_only_in_its_boxes(kw):
    burned, pixels, bare = _pair(kw)
    ds = burned.dataset
    frames = int(kw.get("frames", 1))
    colour = kw["photometric"] in ("RGB", "YBR_FULL", "YBR_FULL_422")
    shape = (frames, SMALL["rows"], SMALL["columns"]) + ((3,) if colour else ())
    assert pixels.shape == bare.shape == shape

    # pydicom's own pixel_array works too, and a Part 10 round trip keeps the pixels.
    assert ds.pixel_array.shape == (shape[1:] if frames == 1 else shape)
    back = _part10(ds)
    assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(decoded(back), pixels)

    # Every line changed its box, in every frame.
    assert len(burned.boxes) == len(burned.texts) == 3
    for x0, y0, x1, y1 in burned.boxes:
        for f in range(frames):
            assert (pixels[f, y0:y1, x0:x1] != bare[f, y0:y1, x0:x1]).any(), (f, (x0, y0, x1, y1))

    outside = ~rendered_mask(burned)
    if kw["syntax"] == "jpeg-baseline":
        # Lossy: ringing leaks out of the boxes, but only a little and only near them.
        difference = np.abs(pixels.astype(np.int64) - bare.astype(np.int64))[:, outside]
        assert difference.mean() < 1.0
        assert ds.LossyImageCompression == "01"
    else:
        np.testing.assert_array_equal(pixels[:, outside], bare[:, outside])
        assert ds.LossyImageCompression == "00"


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "RGB", "YBR_FULL_422", "PALETTE COLOR"])
def test_boxes_are_ink_bounds_padded_by_two(photometric):
    """The 2-px rim of each box is untouched, and the ink reaches the rim on all four sides.

    For YBR_FULL_422 only luma counts: a pixel of the rim shares its chroma with its inked
    neighbour (that is still inside the box, which the test above checks).
    """
    burned, pixels, bare = _pair({"photometric": photometric})
    if photometric == "YBR_FULL_422":
        pixels, bare = pixels[..., 0], bare[..., 0]
    changed = pixels != bare
    if changed.ndim == 4:
        changed = changed.any(axis=-1)
    changed = changed[0]
    for x0, y0, x1, y1 in burned.boxes:
        inner = changed[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
        assert changed[y0:y1, x0:x1].sum() == inner.sum(), "ink in the padding"
        assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()


def test_default_image():
    burned = burned_image()
    ds = burned.dataset
    assert burned.texts == ("SMITH^JOHN", "NHS 943 476 5919", "DOB 12/03/1961")
    assert ds.SOPClassUID == pydicom.uid.UltrasoundImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PhotometricInterpretation) == (480, 640, 8, "MONOCHROME2")
    assert ds.PatientName == "SMITH^JOHN" and ds.PatientID == "PID-884411" and ds.PatientBirthDate == "19610312"
    assert ds.BurnedInAnnotation == "YES" and ds.InstitutionName == "ST ELSEWHERE HOSPITAL"
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.Modality) == ("ACME", "SONO 1", "US")
    # Two lines in the top band, left-aligned; the third at the bottom right.
    (a, b, c) = burned.boxes
    assert abs(a[0] - b[0]) <= 2 and a[3] <= b[1] and b[3] < 100  # ink starts at the glyph's bearing
    assert c[2] > 600 and c[3] > 440
    # Repeatable, UIDs included; different arguments give different UIDs.
    again = burned_image().dataset
    assert again.SOPInstanceUID == ds.SOPInstanceUID and again.StudyInstanceUID == ds.StudyInstanceUID
    assert burned_image(patient_id="OTHER").dataset.SOPInstanceUID != ds.SOPInstanceUID
    np.testing.assert_array_equal(decoded(again), decoded(ds))
    mask = rendered_mask(burned)
    assert mask.shape == (480, 640) and mask.sum() == sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in burned.boxes)


def test_background_is_not_uniform():
    pixels = decoded(burned_image(texts=()).dataset)[0].astype(np.int64)
    assert len(np.unique(pixels)) > 50
    assert (np.diff(pixels, axis=1) != 0).mean() > 0.5  # neighbours differ: a texture, not bands


def test_monochrome1_text_is_stored_dark():
    burned, pixels, bare = _pair({"photometric": "MONOCHROME1"})
    x0, y0, x1, y1 = burned.boxes[0]
    assert pixels[0, y0:y1, x0:x1].min() < bare[0, y0:y1, x0:x1].min()
    assert pixels[0, y0:y1, x0:x1].min() == 0  # full coverage: the displayed white


@pytest.mark.parametrize("bits,entries", [(8, 256), (16, 4096)])
def test_palette_index_zero_is_not_the_darkest(bits, entries):
    ds = burned_image(photometric="PALETTE COLOR", bits=bits, **SMALL).dataset
    luminance = np.zeros(entries)
    for colour in ("Red", "Green", "Blue"):
        assert list(ds[f"{colour}PaletteColorLookupTableDescriptor"].value) == [entries, 0, 16]
        lut = np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, dtype="<u2")
        assert lut.size == entries
        luminance += lut
    darkest = int(luminance.argmin())
    assert darkest != 0 and luminance[0] > luminance.mean()
    assert luminance[darkest] == 0  # black exists, elsewhere
    rgb = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    assert rgb.shape == (SMALL["rows"], SMALL["columns"], 3)


def test_multiframe_header_and_per_frame_background():
    burned = burned_image(frames=3, **SMALL)
    ds = burned.dataset
    assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
    assert ds.NumberOfFrames == 3 and ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) > 0
    pixels = decoded(ds)
    outside = ~rendered_mask(burned)
    assert (pixels[0][outside] != pixels[1][outside]).any()  # the texture moves between frames


def test_ultrasound_region_lies_between_the_text():
    burned = burned_image(regions=True)
    (region,) = burned.dataset.SequenceOfUltrasoundRegions
    top, bottom = region.RegionLocationMinY0, region.RegionLocationMaxY1
    assert (region.RegionLocationMinX0, region.RegionLocationMaxX1) == (0, 639)
    assert (region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection) == (3, 3)
    assert (region.PhysicalDeltaX, region.PhysicalDeltaY) == (0.01, 0.01)
    assert (region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags) == (1, 1, 0)
    assert bottom - top > 300
    for _, y0, _, y1 in burned.boxes:
        assert y1 <= top or y0 > bottom


@pytest.mark.parametrize(
    "modality,frames,photometric,sop_class",
    [
        ("MG", 1, "MONOCHROME1", pydicom.uid.DigitalMammographyXRayImageStorageForPresentation),
        ("OT", 1, "RGB", pydicom.uid.SecondaryCaptureImageStorage),
        ("SC", 2, "RGB", pydicom.uid.MultiFrameTrueColorSecondaryCaptureImageStorage),
    ],
)
def test_sop_class_follows_modality(modality, frames, photometric, sop_class):
    ds = burned_image(modality=modality, frames=frames, photometric=photometric, **SMALL).dataset
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == sop_class


@needs_dciodvfy
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"frames": 2, "regions": True},
        {"photometric": "RGB", "syntax": "rle"},
        {"photometric": "YBR_FULL_422", "syntax": "jpeg-baseline"},
        {"photometric": "PALETTE COLOR", "bits": 16, "syntax": "j2k-lossless"},
        {"modality": "MG", "bits": 16, "photometric": "MONOCHROME1"},
        {"modality": "OT", "bits": 16, "frames": 2},
    ],
    ids=lambda kw: "-".join(str(v) for v in kw.values()) or "default",
)
def test_dciodvfy_reports_no_errors(tmp_path, kw):
    path = write(burned_image(**SMALL, **kw).dataset, tmp_path / "burned.dcm")
    assert dciodvfy_errors(path) == set(), dciodvfy_output(path)


def test_refuses_what_cannot_be_encoded():
    for syntax in UNAVAILABLE_SYNTAXES:
        with pytest.raises(NotImplementedError, match="encoder"):
            burned_image(syntax=syntax)
    with pytest.raises(ValueError):
        burned_image(photometric="RGB", bits=16)
    with pytest.raises(ValueError):
        burned_image(photometric="YBR_FULL_422", syntax="rle")
    with pytest.raises(ValueError):
        burned_image(photometric="PALETTE COLOR", syntax="jpeg-baseline")
    with pytest.raises(ValueError, match="fit"):
        burned_image(rows=40, columns=80)


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")
def test_tesseract_reads_the_text():
    from agent.deidentify import ocr

    pixels = decoded(burned_image().dataset)[0]
    text = " ".join(word.text for word in ocr.read(pixels.astype("uint8"), 60))
    digits = "".join(ch for ch in text if ch.isdigit())
    assert "SMITH" in text
    assert "943" in text or "9434765919" in digits
    assert "12031961" in digits  # the bottom-right line too
