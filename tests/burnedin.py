"""Synthetic DICOM images with text burned into known rectangles.

Pixel masking (removal of burned-in annotation) and OCR tests need images whose text is known
exactly: which strings, and where. Real ultrasound samples cannot give that, so this module
renders the strings itself (Pillow's bundled FreeType font, large enough for tesseract to read
back) into a deterministic, non-uniform background, and reports one box per line of text.

Because the background is a fixed function of the arguments, a test can check that a masker
changed nothing outside the boxes (compare with decoded(burned_image(texts=(), ...)), or with the
input), and that a masked box is uniform; a uniform background could not tell those apart.

Every variant a masker meets in the field is available: MONOCHROME1/2 (8 or 16 bits, signed or
not), RGB and YBR_FULL (either planar configuration), YBR_FULL_422 (natively subsampled),
PALETTE COLOR (8- or 16-bit indices, the darkest entry not at index 0), multi-frame, and the
native, RLE, JPEG-LS, JPEG 2000 and JPEG baseline transfer syntaxes.

    from tests.burnedin import Burned, burned_image, decoded, rendered_mask
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont, features
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.processing import convert_color_space
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

__all__ = [
    "Burned",
    "burned_image",
    "decoded",
    "rendered_mask",
    "available",
    "PHOTOMETRICS",
    "SYNTAXES",
    "UNAVAILABLE_SYNTAXES",
    "FONT_SIZE",
    "PAD",
    "INSTITUTION_NAME",
]

PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR")

SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,  # needs pyjpegls
    "j2k-lossless": JPEG2000Lossless,  # pylibjpeg-openjpeg
    "jpeg-baseline": JPEGBaseline8Bit,  # encoded by Pillow (pydicom has no JPEG encoder)
}

# Asked for, but nothing installed can write it.
UNAVAILABLE_SYNTAXES: dict[str, str] = {
    "jpeg-lossless": (
        "JPEG Lossless SV1 (1.2.840.10008.1.2.4.70): pydicom 3.0.2 has no encoder for it "
        "(only RLE, JPEG-LS and JPEG 2000), and neither has Pillow"
    ),
}

FONT_SIZE = 24  # px: tesseract 5 reads Pillow's default font reliably from about 20 px up
PAD = 2  # px added on every side of a line's ink bounding box
MARGIN = 8  # px between the text and the image edge
LINE_GAP = 4  # px between the boxes of consecutive lines in the top band
JPEG_QUALITY = 90

INSTITUTION_NAME = "ST ELSEWHERE HOSPITAL"
STUDY_DATE = "20240117"
STUDY_TIME = "101500"

# Colour of the text in RGB-like images (pale yellow: bright, and not grey, so that a colour
# masker that only looks at one channel is caught).
_TEXT_RGB = (255, 250, 170)


@dataclass(frozen=True)
class Burned:
    """An image with burned-in text, and where that text is.

    `boxes` are (x0, y0, x1, y1) in pixels, x1 and y1 exclusive: the ink bounding box of one
    rendered line padded by PAD, so every pixel the text touched lies inside its box and every
    pixel outside all boxes is the plain background. The same boxes apply to every frame.
    """

    dataset: pydicom.Dataset
    boxes: tuple[tuple[int, int, int, int], ...]
    texts: tuple[str, ...]


def available(syntax: str) -> bool:
    """True when burned_image(syntax=...) can be produced here (tests skip otherwise)."""
    if syntax in ("explicit", "implicit"):
        return True
    if syntax == "jpeg-baseline":
        return bool(features.check("jpg"))
    if syntax in SYNTAXES:
        return bool(get_encoder(SYNTAXES[syntax]).is_available)
    return False


def burned_image(
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    signed: bool = False,
    frames: int = 1,
    rows: int = 480,
    columns: int = 640,
    planar: int = 0,
    syntax: str = "explicit",
    texts: Sequence[str] = ("SMITH^JOHN", "NHS 943 476 5919", "DOB 12/03/1961"),
    modality: str = "US",
    patient_name: str = "SMITH^JOHN",
    patient_id: str = "PID-884411",
    birth_date: str = "19610312",
    manufacturer: str = "ACME",
    model: str = "SONO 1",
    regions: bool = False,
) -> Burned:
    """A complete dataset (file meta and transfer syntax set) with `texts` burned into its pixels.

    Layout, as on an ultrasound screen: the lines go left-aligned into a band at the top; when
    there are three or more, the last goes to the bottom-right corner instead. With
    regions=True one ultrasound region covers the full width between the top band and the
    bottom-right line (or the bottom edge), so no text lies inside it.

    Pixel values: 8 bits stored for 8-bit images; 16-bit MONOCHROME images store 12 bits
    (0..4095, or -2048..2047 when signed); 16-bit PALETTE COLOR indices go up to 4095 into a
    4096-entry LUT. The text is at the bright end of the range (the dark end, in stored values,
    for MONOCHROME1, so it displays bright there too). texts=() gives the bare background.

    `planar` applies to native syntaxes only: compressed ones get the Planar Configuration their
    codec requires (1 for RLE, 0 otherwise). With "j2k-lossless" an RGB image is encoded with
    the reversible colour transform and labelled YBR_RCT. "jpeg-baseline" is lossy (Lossy Image
    Compression "01"): artefacts spread a few pixels beyond the boxes there. YBR_FULL_422 exists
    natively and as JPEG baseline with 4:2:2 chroma only.

    The SOP class follows `modality`: US gives (Multi-frame) Ultrasound Image Storage, MG
    Digital Mammography For Presentation, OT or SC Secondary Capture (the multi-frame SC class
    that fits, when frames > 1). Combinations the IOD forbids are still produced (a masker
    must cope with them), but dciodvfy reports errors on them. Clean are: US with 8-bit
    MONOCHROME1/2, RGB (not as JPEG baseline) or PALETTE COLOR (8 or 16), YBR_FULL as RLE,
    YBR_FULL_422 as JPEG baseline; MG with unsigned MONOCHROME1/2; single-frame OT with
    anything; multi-frame OT with MONOCHROME2 or RGB. Not clean, for instance: US with 16-bit
    MONOCHROME, native YBR_FULL or YBR_FULL_422, or RGB as JPEG baseline.
    """
    texts = tuple(texts)
    _check(photometric, bits, signed, frames, rows, columns, planar, syntax, texts, modality)
    args = (photometric, bits, signed, frames, rows, columns, planar, syntax, texts, modality,
            patient_name, patient_id, birth_date, manufacturer, model, regions)  # fmt: skip

    alpha, boxes, band_bottom, footer_top = _render(texts, rows, columns)
    stored = _stored_pixels(photometric, bits, signed, frames, rows, columns, alpha)

    ds = _header(
        args=args,
        modality=modality,
        photometric=photometric,
        bits=bits,
        frames=frames,
        patient_name=patient_name,
        patient_id=patient_id,
        birth_date=birth_date,
        manufacturer=manufacturer,
        model=model,
    )
    _image_pixel(ds, photometric, bits, signed, frames, rows, columns, planar)
    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence([_region(columns, band_bottom, footer_top)])
    _encode(ds, stored, syntax, photometric, planar)
    return Burned(dataset=ds, boxes=boxes, texts=texts)


def decoded(ds: pydicom.Dataset) -> np.ndarray:
    """The pixel values as stored, shaped (frames, rows, columns) or (frames, rows, columns, 3).

    "As stored": no rescale, no VOI, no palette lookup (PALETTE COLOR gives indices) and no
    conversion of YBR_FULL / YBR_FULL_422 to RGB (pydicom's raw=True). Two exceptions are the
    codecs': natively encoded YBR_FULL_422 comes back upsampled to one Cb/Cr per pixel (each pair
    of pixels shares its chroma), and JPEG 2000 YBR_RCT comes back as RGB (the codec undoes the
    colour transform). Either way, pixels that were equal before encoding are equal after
    (lossy JPEG aside), which is what masking tests compare.
    """
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    arr, _ = decoder.as_array(ds, raw=True)
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        arr = arr[np.newaxis]
    return arr


def rendered_mask(burned: Burned) -> np.ndarray:
    """Boolean (rows, columns): True inside any of the burned text's boxes."""
    ds = burned.dataset
    mask = np.zeros((int(ds.Rows), int(ds.Columns)), dtype=bool)
    for x0, y0, x1, y1 in burned.boxes:
        mask[y0:y1, x0:x1] = True
    return mask


# --- Checks


def _check(
    photometric: str,
    bits: int,
    signed: bool,
    frames: int,
    rows: int,
    columns: int,
    planar: int,
    syntax: str,
    texts: tuple[str, ...],
    modality: str,
) -> None:
    """Refuse combinations that no encoder (or no DICOM rule) allows, with the reason."""
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, not {photometric!r}")
    if syntax in UNAVAILABLE_SYNTAXES:
        raise NotImplementedError(UNAVAILABLE_SYNTAXES[syntax])
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax must be one of {tuple(SYNTAXES)}, not {syntax!r}")
    if not available(syntax):
        raise RuntimeError(f"no encoder for {syntax!r} is installed (jpeg-ls needs pyjpegls)")
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    if bits == 16 and photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"):
        raise ValueError("16 bits only for MONOCHROME1, MONOCHROME2 and PALETTE COLOR")
    if signed and not (bits == 16 and photometric.startswith("MONOCHROME")):
        raise ValueError("signed pixels only for 16-bit MONOCHROME1/2")
    if frames < 1 or rows < 1 or columns < 1:
        raise ValueError("frames, rows and columns must be positive")
    if planar not in (0, 1):
        raise ValueError("planar must be 0 or 1")
    if photometric == "YBR_FULL_422":
        if columns % 2:
            raise ValueError("YBR_FULL_422 needs an even number of columns")
        if planar != 0:
            raise ValueError("YBR_FULL_422 has Planar Configuration 0 only")
        if syntax not in ("explicit", "implicit", "jpeg-baseline"):
            raise ValueError("YBR_FULL_422 exists natively or as JPEG baseline only")
    if syntax == "jpeg-baseline" and (bits != 8 or photometric == "PALETTE COLOR"):
        raise ValueError("JPEG baseline is 8-bit greyscale or colour only (no palette)")
    if syntax == "jpeg-ls" and photometric == "YBR_FULL_422":
        raise ValueError("JPEG-LS cannot carry YBR_FULL_422")
    if any(not t.strip() for t in texts):
        raise ValueError("every text line must have something to render")
    if modality not in ("US", "MG", "OT", "SC"):
        raise ValueError("modality must be US, MG, OT or SC")


# --- Text


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _render(
    texts: tuple[str, ...], rows: int, columns: int
) -> tuple[np.ndarray, tuple[tuple[int, int, int, int], ...], int, int]:
    """Text coverage (uint8 alpha, rows x columns), one box per line, the top band's bottom edge and
    the top edge of the footer (rows when there is no bottom-right line).

    Each line is drawn on its own canvas, so its box comes from its own ink, not from font
    metrics: a glyph that overhangs its advance width is still inside.
    """
    font = _font()
    alpha = np.zeros((rows, columns), dtype=np.uint8)
    boxes: list[tuple[int, int, int, int]] = []
    footer = texts[-1] if len(texts) >= 3 else None
    header = texts[:-1] if footer is not None else texts

    y = MARGIN
    for text in header:
        box = _draw(alpha, text, (MARGIN, y), "la", font)
        boxes.append(box)
        y = box[3] + LINE_GAP
    band_bottom = (boxes[-1][3] + MARGIN // 2) if boxes else 0

    footer_top = rows
    if footer is not None:
        box = _draw(alpha, footer, (columns - MARGIN, rows - MARGIN), "rd", font)
        boxes.append(box)
        footer_top = box[1] - MARGIN // 2
        if footer_top <= band_bottom:
            raise ValueError(f"{rows} rows are too few for {len(texts)} lines of text")
    return alpha, tuple(boxes), min(band_bottom, rows), footer_top


def _draw(
    alpha: np.ndarray,
    text: str,
    xy: tuple[int, int],
    anchor: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> tuple[int, int, int, int]:
    """Render one line into `alpha` (max-combined) and return its padded ink box."""
    rows, columns = alpha.shape
    canvas = Image.new("L", (columns, rows), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox(xy, text, font=font, anchor=anchor)
    if left < PAD or top < PAD or right > columns - PAD or bottom > rows - PAD:
        raise ValueError(f"text {text!r} does not fit in {columns}x{rows} pixels")
    draw.text(xy, text, fill=255, font=font, anchor=anchor)
    ink = np.asarray(canvas)
    ys, xs = np.nonzero(ink)
    if ys.size == 0:
        raise ValueError(f"text {text!r} rendered no pixels")
    box = (int(xs.min()) - PAD, int(ys.min()) - PAD, int(xs.max()) + 1 + PAD, int(ys.max()) + 1 + PAD)
    x0, y0, x1, y1 = box
    if (alpha[y0:y1, x0:x1] > 0).any():
        raise ValueError(f"text {text!r} overlaps another line: too few rows or columns")
    np.maximum(alpha, ink, out=alpha)
    return box


# --- Pixels


def _background(rows: int, columns: int, frames: int, channels: int) -> np.ndarray:
    """Float levels in [0.03, 0.46] (the dark half), shape (frames, channels, rows, columns).

    A smooth diagonal gradient with a ripple, plus fixed-seed noise that shifts from frame to
    frame (so a masker that reuses frame 0's pixels for every frame is caught). Kept dark
    enough that tesseract reads every line against it, the bottom-right one included.
    """
    y, x = np.mgrid[0:rows, 0:columns]
    u, v = x / max(columns - 1, 1), y / max(rows - 1, 1)
    smooth = 0.06 + 0.15 * u + 0.08 * v + 0.03 * np.sin(2 * np.pi * (3 * u + 2 * v))
    noise = np.random.RandomState(0).random_sample((channels, rows, columns))
    tints = np.array([1.0, 0.8, 1.15])[:channels, None, None]  # colour images: bluish
    out = np.empty((frames, channels, rows, columns))
    for f in range(frames):
        shifted = np.roll(noise, (3 * f, 5 * f), axis=(1, 2))
        out[f] = np.clip(smooth[None] * tints + 0.08 * shifted, 0.0, 0.5)
    return out


def _blend(background: np.ndarray, foreground: int, alpha: np.ndarray) -> np.ndarray:
    """Integer compositing, exact where alpha is 0 (the pixel stays the background)."""
    a = alpha.astype(np.int64)
    return (background * (255 - a) + foreground * a + 127) // 255


def _levels(frames: int, rows: int, columns: int, maximum: int, alpha: np.ndarray) -> np.ndarray:
    """Grey levels 0..maximum (dark background, text at maximum), shape (frames, rows, columns)."""
    bg = np.rint(_background(rows, columns, frames, 1)[:, 0] * maximum).astype(np.int64)
    return _blend(bg, maximum, alpha)


def _stored_pixels(
    photometric: str, bits: int, signed: bool, frames: int, rows: int, columns: int, alpha: np.ndarray
) -> np.ndarray:
    """The values to store, (frames, rows, columns[, 3]), in the photometric's colour space.

    YBR_FULL_422 is returned at full resolution (YBR_FULL); _encode subsamples it.
    """
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        maximum = 255 if bits == 8 else 4095
        levels = _levels(frames, rows, columns, maximum, alpha)
        if photometric == "MONOCHROME1":
            levels = maximum - levels  # high values display dark: text stored low shows bright
        if signed:
            return (levels - 2048).astype(np.int16)
        return levels.astype(np.uint8 if bits == 8 else np.uint16)

    if photometric == "PALETTE COLOR":
        entries = 256 if bits == 8 else 4096
        levels = _levels(frames, rows, columns, entries - 1, alpha)
        return _palette_index(levels, entries).astype(np.uint8 if bits == 8 else np.uint16)

    bg = np.rint(_background(rows, columns, frames, 3) * 255).astype(np.int64)
    rgb = np.stack([_blend(bg[:, c], _TEXT_RGB[c], alpha) for c in range(3)], axis=-1).astype(np.uint8)
    if photometric == "RGB":
        return rgb
    return convert_color_space(rgb, "RGB", "YBR_FULL")


def _palette_index(levels: np.ndarray, entries: int) -> np.ndarray:
    """Grey level -> LUT index, rotated so that index 0 is a bright entry and black is elsewhere
    (entries // 4 + 7: 71 of 256, 1031 of 4096)."""
    return (levels + entries // 4 + 7) % entries


def _palette_lut(entries: int) -> tuple[bytes, bytes, bytes]:
    """16-bit Red, Green, Blue LUT data: a warm ramp by grey level, stored at rotated indices."""
    level = np.arange(entries) / (entries - 1)
    ramps = [level**0.8, level, level**1.4]  # each increasing: level 0 is black in all three
    index = _palette_index(np.arange(entries), entries)
    out = []
    for ramp in ramps:
        lut = np.empty(entries, dtype="<u2")
        lut[index] = np.rint(ramp * 65535).astype(np.uint16)
        out.append(lut.tobytes())
    return out[0], out[1], out[2]


# --- Header


def _uid(args: tuple[object, ...], role: str) -> UID:
    """A UID that depends only on the arguments (repeatable test data, distinct per variant)."""
    return generate_uid(entropy_srcs=[role, hashlib.sha256(repr(args).encode()).hexdigest()])


def _sop_class(modality: str, photometric: str, bits: int, frames: int) -> UID:
    if modality == "US":
        return UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    if modality == "MG":
        return DigitalMammographyXRayImageStorageForPresentation
    if frames > 1 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        return MultiFrameTrueColorSecondaryCaptureImageStorage
    if frames > 1 and photometric == "MONOCHROME2":
        if bits == 8:
            return MultiFrameGrayscaleByteSecondaryCaptureImageStorage
        return MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    return SecondaryCaptureImageStorage


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _header(
    *,
    args: tuple[object, ...],
    modality: str,
    photometric: str,
    bits: int,
    frames: int,
    patient_name: str,
    patient_id: str,
    birth_date: str,
    manufacturer: str,
    model: str,
) -> Dataset:
    """Every module but Image Pixel: patient, study, series, equipment, image, and per-IOD extras."""
    sop_class = _sop_class(modality, photometric, bits, frames)
    sop_uid = _uid(args, "sop")

    ds = Dataset()
    # SOP Common
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = STUDY_DATE
    ds.InstanceCreationTime = STUDY_TIME
    # Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "M"
    # General Study
    ds.StudyInstanceUID = _uid(args, "study")
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    # General Series
    ds.Modality = "OT" if modality == "SC" else modality
    ds.SeriesInstanceUID = _uid(args, "series")
    ds.SeriesNumber = 1
    # General Equipment
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.InstitutionName = INSTITUTION_NAME
    # General Image
    ds.InstanceNumber = 1
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.BurnedInAnnotation = "YES"

    if modality == "US":
        ds.BodyPartExamined = "ABDOMEN"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
        ds.PatientOrientation = ""
        if frames > 1:
            # Multi-frame + Cine
            ds.FrameTime = 33.3
            ds.FrameIncrementPointer = 0x00181063  # Frame Time
    elif modality == "MG":
        _mammography(ds, bits)
    else:
        # SC Equipment, SC Image, and for multi-frame SC Multi-frame Image (+ Cine)
        ds.BodyPartExamined = "ABDOMEN"
        ds.ConversionType = "WSD"
        ds.PatientOrientation = ""
        if frames > 1:
            ds.FrameIncrementPointer = 0x00181063  # Frame Time
            ds.FrameTime = 33.3
        if sop_class in (
            MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
            MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        ):
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
            ds.RescaleType = "US"
            ds.PresentationLUTShape = "IDENTITY"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta = meta
    return ds


def _mammography(ds: Dataset, bits: int) -> None:
    """DX Series, DX Anatomy Imaged, DX Image, DX Detector, Mammography Image, Acquisition Context."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.ImageLaterality = "L"
    ds.AnatomicRegionSequence = DicomSequence([_code("T-04000", "SRT", "Breast")])
    ds.PatientOrientation = ["A", "R"]
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.ViewPosition = "CC"
    view = _code("R-10242", "SRT", "cranio-caudal")
    view.ViewModifierCodeSequence = DicomSequence([])
    ds.ViewCodeSequence = DicomSequence([view])
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.PixelSpacing = [0.1, 0.1]
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.BodyPartExamined = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.OrganExposed = "BREAST"
    ds.KVP = 28
    ds.DistanceSourceToDetector = 660
    ds.DistanceSourceToPatient = 640
    ds.BodyPartThickness = 45
    ds.CompressionForce = 100
    ds.EstimatedRadiographicMagnificationFactor = 1.0
    ds.AcquisitionContextSequence = DicomSequence([])
    full = 256 if bits == 8 else 4096  # the stored range (_image_pixel: 8 or 12 bits)
    ds.WindowCenter = full // 2
    ds.WindowWidth = full


def _image_pixel(
    ds: Dataset, photometric: str, bits: int, signed: bool, frames: int, rows: int, columns: int, planar: int
) -> None:
    """Image Pixel module (plus the palette LUT and the multi-frame count); no Pixel Data yet."""
    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422")
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    if photometric.startswith("MONOCHROME") and bits == 16:
        ds.BitsStored = 12
    else:
        ds.BitsStored = bits
    ds.HighBit = int(ds.BitsStored) - 1
    ds.PixelRepresentation = 1 if signed else 0
    if colour:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    if photometric == "MONOCHROME1" and ds.Modality == "MG":
        ds.PresentationLUTShape = "INVERSE"
    elif ds.Modality == "MG":
        ds.PresentationLUTShape = "IDENTITY"
    if photometric == "PALETTE COLOR":
        entries = 256 if bits == 8 else 4096
        red, green, blue = _palette_lut(entries)
        for group_element, data in ((0x1101, red), (0x1102, green), (0x1103, blue)):
            ds.add_new(0x00280000 | group_element, "US", [entries, 0, 16])  # descriptor
            ds.add_new(0x00280000 | (group_element + 0x100), "OW", data)  # LUT data
    ds.LossyImageCompression = "00"


def _region(columns: int, top: int, bottom: int) -> Dataset:
    """One US region: the full width from `top` to `bottom` (exclusive), calibrated in cm."""
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = top
    region.RegionLocationMaxX1 = columns - 1  # inclusive, as in DICOM
    region.RegionLocationMaxY1 = bottom - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = 0.01
    region.PhysicalDeltaY = 0.01
    return region


# --- Encoding


def _native_bytes(stored: np.ndarray, photometric: str, planar: int) -> bytes:
    """Pixel Data for a native syntax: little-endian, planar as asked, YBR_FULL_422 subsampled."""
    if photometric == "YBR_FULL_422":
        y, cb, cr = (stored[..., c].astype(np.int64) for c in range(3))
        packed = np.empty(stored.shape[:2] + (stored.shape[2] // 2, 4), dtype=np.uint8)
        packed[..., 0] = y[..., 0::2]
        packed[..., 1] = y[..., 1::2]
        packed[..., 2] = (cb[..., 0::2] + cb[..., 1::2] + 1) // 2
        packed[..., 3] = (cr[..., 0::2] + cr[..., 1::2] + 1) // 2
        data = packed.tobytes()
    elif stored.ndim == 4 and planar == 1:
        data = np.ascontiguousarray(stored.transpose(0, 3, 1, 2)).tobytes()
    else:
        data = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    return data + b"\0" if len(data) % 2 else data


def _encode(ds: Dataset, stored: np.ndarray, syntax: str, photometric: str, planar: int) -> None:
    """Set Pixel Data (and the transfer syntax, and what the codec changes) on `ds`."""
    uid = SYNTAXES[syntax]
    if syntax in ("explicit", "implicit"):
        ds.PixelData = _native_bytes(stored, photometric, planar)
        ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) == 8 else "OW"
        ds.file_meta.TransferSyntaxUID = uid
        return

    if int(ds.SamplesPerPixel) == 3:
        ds.PlanarConfiguration = 1 if syntax == "rle" else 0
    if syntax == "jpeg-baseline":
        _encode_jpeg_baseline(ds, stored, photometric)
        return

    if syntax == "j2k-lossless" and photometric == "RGB":
        ds.PhotometricInterpretation = "YBR_RCT"  # encoder applies the reversible transform
    arr = stored if stored.shape[0] > 1 else stored[0]
    plugin = {"rle": "pydicom", "jpeg-ls": "pyjpegls", "j2k-lossless": "pylibjpeg"}[syntax]
    ds.compress(uid, arr, encoding_plugin=plugin, generate_instance_uid=False)


def _encode_jpeg_baseline(ds: Dataset, stored: np.ndarray, photometric: str) -> None:
    """JPEG baseline by Pillow (libjpeg): RGB with RGB components, YBR_FULL as 4:4:4 YCbCr,
    YBR_FULL_422 as 4:2:2 YCbCr, greyscale as one component."""
    frames: list[bytes] = []
    for frame in stored:
        buffer = io.BytesIO()
        size = (frame.shape[1], frame.shape[0])
        if frame.ndim == 2:
            Image.frombytes("L", size, frame.tobytes()).save(buffer, "JPEG", quality=JPEG_QUALITY)
        else:
            # Stored values go in as they are: "RGB" is written with RGB components (no colour
            # transform), "YCbCr" as YCbCr (JFIF), so the codestream matches the label.
            mode = "RGB" if photometric == "RGB" else "YCbCr"
            subsampling = "4:2:2" if photometric == "YBR_FULL_422" else "4:4:4"
            Image.frombytes(mode, size, frame.tobytes()).save(
                buffer, "JPEG", quality=JPEG_QUALITY, subsampling=subsampling, keep_rgb=mode == "RGB"
            )
        frames.append(buffer.getvalue())
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    native = stored.size * stored.itemsize
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{native / sum(len(f) for f in frames):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
