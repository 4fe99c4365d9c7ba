"""Covering rectangles of an image in every frame, in the colour space it is stored in.

Native pixel data is masked in place, as stored: greyscale (MONOCHROME1 and 2, any bit depth,
signed or not), RGB and YBR_FULL (either planar configuration), YBR_FULL_422 (a pair of pixels
shares its chroma, so a pair touched by the mask is covered whole), PALETTE COLOR (the index of the
darkest palette entry), and single-bit images. The fill is the image's own darkest value, so a
covered area reads as background whatever the window. Compressed pixel data is decoded first
(pydicom's decoders: RLE, and pylibjpeg for JPEG, JPEG-LS and JPEG 2000) and written RLE
Lossless (`encode_lossless`); lossy input stays marked as lossy and is never compressed lossy.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, RLELossless

from agent.deidentify.pixels import expected_length

PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
_GREY = ("MONOCHROME1", "MONOCHROME2")
_THREE = ("RGB", "YBR_FULL")
_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # retired, still read by `check` and `anonymise`


class PixelsUndecodable(Exception):
    """The pixel data cannot be decoded or masked; the message names no value of the instance."""


def is_native(ds: Dataset) -> bool:
    syntax = _syntax(ds)
    return syntax is None or not UID(syntax).is_compressed


def decode(ds: Dataset) -> bool:
    """Make `ds`'s pixel data native (decoding it if compressed); True if it was compressed."""
    if PIXEL_DATA not in ds:
        raise PixelsUndecodable("no Pixel Data (float pixel data is not masked)" if any(
            t in ds for t in _FLOAT_PIXEL_DATA) else "no Pixel Data")
    if is_native(ds):
        return False
    syntax = UID(_syntax(ds) or "")
    lossy = syntax.is_compressed and not _lossless(syntax)
    try:
        ds.decompress(as_rgb=True, generate_instance_uid=False)
    except Exception as exc:  # pydicom's and the plugins' errors; their messages name no value
        raise PixelsUndecodable(f"{syntax.name if syntax.is_transfer_syntax else 'this transfer syntax'} cannot be decoded here "
                                f"({type(exc).__name__})") from None
    if lossy and str(ds.get("LossyImageCompression", "") or "") != "01":
        ds.LossyImageCompression = "01"  # PS3.3 C.7.6.1.1.5: once lossy, always said to be
    return True


def encode_lossless(ds: Dataset) -> bool:
    """Compress masked native pixels as RLE Lossless (pylibjpeg-rle): an input the PACS sent
    compressed leaves compressed, losslessly, rather than five to ten times larger. False (left
    native, which is lossless too) when the encoder cannot take this layout."""
    if _photometric(ds) not in ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL"):
        return False
    try:
        ds.compress(RLELossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    except Exception:  # an encoder's refusal names no value; native is still lossless
        return False
    return True


def native_copy(ds: Dataset) -> Dataset:
    """`ds` itself when its pixel data is native; else its image (Image Pixel attributes and
    Pixel Data) decoded in a new dataset, `ds` left as it is (pydicom decodes in place)."""
    if is_native(ds):
        return ds
    image = Dataset()
    for elem in ds.group_dataset(0x0028):
        image.add(DataElement(elem.tag, elem.VR, elem.value))
    if PIXEL_DATA in ds:
        image.add(DataElement(PIXEL_DATA, ds[PIXEL_DATA].VR, ds.PixelData))
    image.file_meta = FileMetaDataset()
    image.file_meta.TransferSyntaxUID = UID(_syntax(ds) or "")
    decode(image)
    return image


def cover(ds: Dataset, mask: np.ndarray) -> None:
    """Set every pixel under `mask` (rows x columns, True = cover) to the fill, in every frame."""
    view, layout = _view(ds)
    photometric = _photometric(ds)
    if layout == "422":
        pairs = mask.reshape(mask.shape[0], -1, 2).any(axis=2)
        view[:, pairs, 0:2] = 0
        view[:, pairs, 2:4] = 128
    elif layout == "bits":
        view[:, mask] = 0 if photometric != "MONOCHROME1" else 1
    elif layout == "planar":
        for sample, value in enumerate(_colour_fill(ds, photometric)):
            view[:, sample][:, mask] = value
    elif layout == "interleaved":
        view[:, mask] = np.asarray(_colour_fill(ds, photometric), dtype=view.dtype)
    else:
        view[:, mask] = _grey_fill(ds, view, photometric)
    _store(ds, view, layout)


def clear_unused_bits(ds: Dataset) -> bool:
    """Zero every bit outside Bits Stored, where a retired embedded overlay (60xx,0102 Overlay Bit
    Position above zero) keeps its bitmap: once its group is removed the bits mean nothing, but
    they still draw whatever text the overlay held. True if any bit was set."""
    if not is_native(ds):
        return False  # embedded overlays are native only (PS3.5 8.1.2)
    view, layout = _view(ds)
    if layout != "grey" or view.dtype.itemsize == 1:
        return False
    try:
        stored, high = int(ds.BitsStored), int(ds.HighBit)
    except (AttributeError, TypeError, ValueError):
        raise PixelsUndecodable("Bits Stored or High Bit is missing or damaged") from None
    keep = ((1 << stored) - 1) << max(0, high - stored + 1)
    unused = ~np.array(keep, dtype=view.dtype)
    if not (view & unused).any():
        return False
    view &= ~unused
    _store(ds, view, layout)
    return True


def grey_frames(ds: Dataset, indices: list[int]) -> list[np.ndarray]:
    """The frames at `indices` as 8-bit greyscale for OCR: each pixel's largest difference, in
    any channel, from the frame's median colour, stretched to the frame's range. Text of any
    colour on any background becomes bright on dark: red on a grey of the same luminance, dark
    print on a light label, and a 16-bit image whose text is a few levels above its background."""
    frames = []
    for index in indices:
        values = _displayed(ds, index).astype(np.float32)
        median = np.median(values.reshape(-1, values.shape[-1]), axis=0)
        distance = np.abs(values - median).max(axis=-1)
        high = float(distance.max(initial=0.0))
        scaled = distance * (255.0 / high) if high > 0 else distance
        frames.append(scaled.astype(np.uint8))
    return frames


def _displayed(ds: Dataset, index: int) -> np.ndarray:
    """A frame as the numbers a viewer shows, channels last: stored values for greyscale (every
    bit of Bits Stored, not a window), RGB for colour, the palette's colours for PALETTE COLOR."""
    from pydicom.pixels.processing import convert_color_space

    view, layout = _view(ds, writable=False)
    photometric = _photometric(ds)
    frame = view[index]
    if layout == "422":
        luma = frame[..., 0:2].reshape(frame.shape[0], -1)
        ycc = np.dstack([luma, np.repeat(frame[..., 2], 2, axis=1), np.repeat(frame[..., 3], 2, axis=1)])
        return np.asarray(convert_color_space(ycc, "YBR_FULL", "RGB"))
    if layout == "planar":
        frame = np.moveaxis(frame, 0, -1)
    if layout in ("planar", "interleaved"):
        return np.asarray(convert_color_space(frame, "YBR_FULL", "RGB")) if photometric == "YBR_FULL" else frame
    if photometric == "PALETTE COLOR":
        return _palette_colours(ds, frame)
    return _values(ds, frame)[..., np.newaxis]


def rgb_frame(ds: Dataset, index: int) -> np.ndarray:
    """One frame as 8-bit RGB, as a viewer would show it (greyscale stretched to its range)."""
    values = _displayed(ds, index)
    if values.shape[-1] == 1:
        grey = values[..., 0].astype(np.float64)
        low, high = float(grey.min()), float(grey.max())
        scaled = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
        if _photometric(ds) == "MONOCHROME1":
            scaled = 255.0 - scaled
        return np.dstack([scaled.astype(np.uint8)] * 3)
    shift = 8 if int(values.max(initial=0)) > 255 else 0  # 16-bit colour or palette entries
    return np.ascontiguousarray((values.astype(np.int64) >> shift).astype(np.uint8))


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


# -- the stored layout -----------------------------------------------------------------------


def _view(ds: Dataset, *, writable: bool = True) -> tuple[np.ndarray, str]:
    """An array over the native pixel data, and its layout name: writable over a copy, or a
    read-only view of the data itself (reading frames for OCR copies nothing)."""
    if not is_native(ds):
        raise PixelsUndecodable("pixel data is compressed")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
        planar = int(ds.get("PlanarConfiguration", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        raise PixelsUndecodable("the image attributes are missing or damaged") from None
    photometric = _photometric(ds)
    frames = frame_count(ds)
    data = ds.PixelData if PIXEL_DATA in ds else None
    if expected_length(ds) is None or not isinstance(data, (bytes, bytearray)):
        raise PixelsUndecodable("the image attributes are missing or damaged")
    needed = (frames * rows * columns * samples * bits + 7) // 8
    if photometric == "YBR_FULL_422":
        needed = frames * rows * columns * 2
    if len(data) < needed:
        raise PixelsUndecodable("Pixel Data is shorter than its image")
    buffer = np.frombuffer(bytearray(data) if writable else data, dtype=np.uint8)
    if bits == 1:
        if samples != 1:
            raise PixelsUndecodable("single-bit colour is not an image layout")
        bits_array = np.unpackbits(buffer, bitorder="little")[: frames * rows * columns]
        return bits_array.reshape(frames, rows, columns).copy(), "bits"
    if bits not in (8, 16, 32):
        raise PixelsUndecodable(f"Bits Allocated {bits} is not masked")
    dtype = np.dtype(f"{'>' if _syntax(ds) == _BIG_ENDIAN else '<'}u{bits // 8}")
    if photometric == "YBR_FULL_422":
        if bits != 8 or samples != 3 or columns % 2:
            raise PixelsUndecodable("YBR_FULL_422 other than 8-bit with even columns")
        size = frames * rows * columns * 2
        return buffer[:size].reshape(frames, rows, columns // 2, 4), "422"
    count = frames * rows * columns * samples
    values = buffer[: count * dtype.itemsize].view(dtype)
    if samples == 1:
        if photometric not in _GREY and photometric != "PALETTE COLOR":
            raise PixelsUndecodable("a Photometric Interpretation masking does not handle, with one sample")
        return values.reshape(frames, rows, columns), "grey"
    if samples != 3 or photometric not in _THREE:
        raise PixelsUndecodable("a Photometric Interpretation or Samples per Pixel masking does not handle")
    if planar == 1:
        return values.reshape(frames, 3, rows, columns), "planar"
    return values.reshape(frames, rows, columns, 3), "interleaved"


def _store(ds: Dataset, view: np.ndarray, layout: str) -> None:
    if layout == "bits":
        packed = np.packbits(view.reshape(-1), bitorder="little").tobytes()
    else:
        packed = np.ascontiguousarray(view).tobytes()
    if len(packed) % 2:
        packed += b"\x00"
    ds.PixelData = packed


def _photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def _syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(syntax) if syntax else None


def _lossless(syntax: UID) -> bool:
    return syntax in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                      "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201",
                      "1.2.840.10008.1.2.4.202")  # RLE, JPEG lossless (14, 14 SV1), JPEG-LS, J2K and HTJ2K lossless


def _values(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """Stored values as the numbers they mean: bits above Bits Stored dropped, sign extended."""
    bits = frame.dtype.itemsize * 8
    try:
        stored = int(ds.get("BitsStored") or bits)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
    except (TypeError, ValueError):
        stored, signed = bits, False
    stored = min(max(stored, 1), bits)
    values = frame.astype(np.int64) & ((1 << stored) - 1)
    if signed:
        values = np.where(values >= 1 << (stored - 1), values - (1 << stored), values)
    return values


def _grey_fill(ds: Dataset, view: np.ndarray, photometric: str) -> int:
    """The stored value that shows darkest: the darkest palette entry, or the image's own
    extreme (lowest for MONOCHROME2, highest for MONOCHROME1), found a frame at a time."""
    if photometric == "PALETTE COLOR":
        return _darkest_palette_index(ds, view)
    best: tuple[int, int] | None = None  # (meaning, stored value)
    for frame in view:
        values = _values(ds, frame)
        flat = int(values.argmax() if photometric == "MONOCHROME1" else values.argmin())
        meaning = int(values.reshape(-1)[flat])
        if best is None or (meaning > best[0] if photometric == "MONOCHROME1" else meaning < best[0]):
            best = (meaning, int(frame.reshape(-1)[flat]))
    assert best is not None
    return best[1]


def _palette(ds: Dataset) -> tuple[int, int]:
    """(first index mapped, number of entries) of the palette."""
    try:
        descriptor = ds.RedPaletteColorLookupTableDescriptor
        entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
    except Exception:  # a damaged descriptor
        raise PixelsUndecodable("the palette cannot be read") from None
    return first, entries


def _palette_colours(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """The frame through its palette. An index outside the table refuses the image: the table
    would show it as its first or last colour, and text drawn in such indices as nothing."""
    from pydicom.pixels.processing import apply_color_lut

    first, entries = _palette(ds)
    if int(frame.min(initial=first)) < first or int(frame.max(initial=first)) >= first + entries:
        raise PixelsUndecodable("pixel values outside the palette's table")
    try:
        return np.asarray(apply_color_lut(frame, ds))
    except Exception:  # a damaged table (odd length, missing, bad bits): pydicom raises many types
        raise PixelsUndecodable("the palette cannot be read") from None


def _darkest_palette_index(ds: Dataset, view: np.ndarray) -> int:
    first, entries = _palette(ds)
    indices = np.arange(first, first + entries, dtype=np.int64).astype(view.dtype)
    colours = _palette_colours(ds, indices).astype(np.int64).reshape(-1, 3)
    return int(indices[int(colours.sum(axis=1).argmin())])


def _colour_fill(ds: Dataset, photometric: str) -> tuple[int, int, int]:
    bits = int(ds.BitsAllocated)
    middle = 1 << (bits - 1)
    return (0, 0, 0) if photometric == "RGB" else (0, middle, middle)
