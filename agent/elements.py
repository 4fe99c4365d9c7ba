"""Every element of an explicit VR little endian Part 10 file, at any depth, as raw bytes.

The release gate reads each output back and searches every value. pydicom builds a Dataset for
every sequence item it is asked for, which made reading nested outputs the gate's largest cost;
this walk only reads element headers and slices values. It raises `Unsure` for whatever it does
not handle (another transfer syntax, a value that does not fit, an unknown VR), and the caller
then reads the file with pydicom instead.
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator
from typing import NamedTuple

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_HEADER = struct.Struct("<HH2sH")
_LONG = struct.Struct("<I")
_ITEM_HEADER = struct.Struct("<HHI")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_MAX_DEPTH = 64


class Unsure(Exception):
    """The walk met something it does not handle: read the file with pydicom instead."""


class Element(NamedTuple):
    tag: int
    vr: str
    path: str  # "" at the top level, "(gggg,eeee)[i] > " inside items
    value: bytes


def walk(data: bytes) -> Iterator[Element]:
    """File meta and dataset elements up to the top-level Pixel Data (not included), depth first."""
    if data[128:132] != b"DICM":
        raise Unsure
    position = 132
    syntax = ""
    while position + 8 <= len(data) and data[position : position + 2] == b"\x02\x00":
        element = _element_at(data, position, len(data), "", 0)
        if element.tag == 0x00020010:
            syntax = element.value.rstrip(b"\0 ").decode("ascii", "replace")
        yield element
        position = _end_of(data, position)
    if syntax != EXPLICIT_VR_LITTLE_ENDIAN:
        raise Unsure
    yield from _elements(data, position, len(data), "", 0, top=True)


def _end_of(data: bytes, position: int) -> int:
    vr, short = _HEADER.unpack_from(data, position)[2:]
    if vr in _LONG_VRS:
        return position + 12 + int(_LONG.unpack_from(data, position + 8)[0])
    return position + 8 + int(short)


def _header(data: bytes, position: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, where the value starts, its declared length) of the element at `position`."""
    group, number, vr, short = _HEADER.unpack_from(data, position)
    if vr in _LONG_VRS:
        return group << 16 | number, vr, position + 12, int(_LONG.unpack_from(data, position + 8)[0])
    if vr in _SHORT_VRS:
        return group << 16 | number, vr, position + 8, int(short)
    raise Unsure


def _element_at(data: bytes, position: int, end: int, path: str, depth: int) -> Element:
    tag, vr, start, length = _header(data, position)
    if length == _UNDEFINED or start + length > end:
        raise Unsure
    return Element(tag, vr.decode("ascii"), path, data[start : start + length])


def _elements(data: bytes, position: int, end: int, path: str, depth: int, *, top: bool) -> Iterator[Element]:
    if depth > _MAX_DEPTH:
        raise Unsure
    while position < end:
        if position + 8 > end:
            raise Unsure
        if data[position : position + 2] == b"\xfe\xff":
            raise Unsure  # an item or delimiter where an element belongs
        tag, vr, start, length = _header(data, position)
        if top and tag == PIXEL_DATA:
            return  # the gate reads up to the Pixel Data
        if vr == b"SQ":
            where = f"{path}({tag >> 16:04X},{tag & 0xFFFF:04X})"
            position = yield from _items(data, start, length, end, where, depth + 1)
            continue
        if length == _UNDEFINED or start + length > end:
            raise Unsure  # encapsulated data in an item, or cut short: pydicom's job
        yield Element(tag, vr.decode("ascii"), path, data[start : start + length])
        position = start + length


def _items(data: bytes, start: int, length: int, end: int, where: str, depth: int) -> Generator[Element, None, int]:
    """The items of a sequence; returns the position after it."""
    stop = end if length == _UNDEFINED else start + length
    if stop > end:
        raise Unsure
    position, index = start, 0
    while position + 8 <= stop:
        group, number, item_length = _ITEM_HEADER.unpack_from(data, position)
        if (group, number) == (0xFFFE, 0xE0DD):
            return position + 8
        if (group, number) != (0xFFFE, 0xE000) or item_length == _UNDEFINED:
            raise Unsure  # undefined-length items: pydicom's job
        item_start = position + 8
        if item_start + item_length > stop:
            raise Unsure
        yield from _elements(data, item_start, item_start + item_length, f"{where}[{index}] > ", depth, top=False)
        position, index = item_start + item_length, index + 1
    if length == _UNDEFINED or position != stop:
        raise Unsure
    return position
