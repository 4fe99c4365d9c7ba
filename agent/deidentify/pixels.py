"""What the native Pixel Data of an instance should measure: nothing may hide after the image.

A damaged or hostile length (0xFFFFFFFE, or data appended after the frames) makes Pixel Data
carry bytes that are no image, and the release gate does not search pixels. De-identification
trims them, and the gate refuses an output whose native Pixel Data is still longer.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

_FRAME_ATTRIBUTES = (0x00280010, 0x00280011, 0x00280002, 0x00280100)  # Rows, Columns, Samples, Bits Allocated


def expected_length(ds: Dataset) -> int | None:
    """The byte length of native Pixel Data for `ds`'s image attributes (even), or None if unknown."""
    values = []
    for tag in _FRAME_ATTRIBUTES:
        try:
            value = ds[tag].value if tag in ds else None
            values.append(int(value) if value not in (None, "") else 0)
        except (TypeError, ValueError, KeyError, NotImplementedError):
            return None
    rows, columns, samples, bits = values
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return None
    if min(rows, columns, samples, bits, frames) <= 0:
        return None
    if str(ds.get("PhotometricInterpretation", "") or "").strip().upper() == "YBR_FULL_422":
        samples = 2  # a pair of pixels shares its Cb and Cr: two samples a pixel, not three
    bits_total = rows * columns * samples * frames * bits
    length = (bits_total + 7) // 8
    return length + length % 2
