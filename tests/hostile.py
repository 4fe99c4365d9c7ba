"""Hostile instances, built in the tests: what a broken or malicious sender could push.

Each is a CT slice of the synthetic patient with one thing made hostile: sequences nested
thousands deep, a 10 MB value, 500,000 values in one element, a value declaring 2 GiB.
"""

from __future__ import annotations

import struct
import warnings
from typing import Callable

from pydicom.dataset import Dataset

from tests.conftest import encode
from tests.synthetic import Patient, make_ct_slice


def nested(depth: int) -> bytes:
    """A CT slice whose Content Sequence nests `depth` deep, built as bytes (pydicom would recurse)."""
    inner = b"\x08\x00\x04\x01LO\x02\x00x "  # (0008,0104) CodeMeaning "x"
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
        inner = b"\x40\x00\x30\xa7SQ\x00\x00" + struct.pack("<I", len(item)) + item
    data = encode(make_ct_slice(Patient(), plant=False))
    at = data.index(b"\x28\x00\x02\x00")  # before the image pixel module: (0040,A730) sorts later, pydicom does not mind
    return data[:at] + inner + data[at:]


def quietly(build: Callable[[Dataset], None]) -> bytes:
    """A slice changed by `build`, encoded: hostile values make pydicom warn, the point of them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = make_ct_slice(Patient(), plant=False)
        build(ds)
        return encode(ds)


def huge_value() -> bytes:
    return quietly(lambda ds: setattr(ds, "StudyDescription", "CT " * ((10 << 20) // 3)))


def many_values() -> bytes:
    def build(ds: Dataset) -> None:
        # Potential Reasons for Procedure (UC, 1-n): 500,000 one-letter values, 1 MB, under max_value_bytes
        ds.add_new(0x00189908, "UC", ["A"] * 500_000)

    return quietly(build)


def huge_declared_length() -> bytes:
    ds = make_ct_slice(Patient(), plant=False)
    ds.StudyDescription = "CT CHEST"
    data = bytearray(encode(ds))
    at = data.index(b"\x08\x00\x30\x10LO")  # StudyDescription, made a UT of 2 GiB declared
    data[at + 4 : at + 8] = b"UT\x00\x00"
    return bytes(data[: at + 8]) + struct.pack("<I", 0x7FFFFFF0) + bytes(data[at + 8 :])
