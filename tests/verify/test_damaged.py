"""Damaged input cannot carry an identifier past cleaning or the gate.

An inflated length makes a text value swallow the elements after it: the swallowed Patient's Name
is then no attribute the engine knows of, only bytes inside "text". A byte flipped in a name makes
it no longer match exactly.
"""

from __future__ import annotations

import io
import struct
from typing import Callable

from pydicom import dcmread

from agent.quarantine import Reason
from tests.conftest import encode
from tests.synthetic import Patient, make_ct_slice

PATIENT = Patient()
SURNAME = PATIENT.name.split("^")[0]


def _swallowing(keyword_tag: bytes, vr: bytes) -> bytes:
    """A planted slice whose element `keyword_tag` (explicit VR LE) swallows Patient's Name after it."""
    ds = make_ct_slice(PATIENT)
    ds.StudyDescription = "CT CHEST"
    data = bytearray(encode(ds))
    start = data.index(keyword_tag + vr)
    name = data.index(b"\x10\x00\x10\x00PN")
    (name_length,) = struct.unpack("<H", data[name + 6 : name + 8])
    swallowed = name + 8 + name_length - (start + 8)
    assert swallowed % 2 == 0 and swallowed < 0x10000
    data[start + 6 : start + 8] = struct.pack("<H", swallowed)
    return bytes(data)


def test_swallowed_name_never_leaves_under_nccid(site_key: object, run_bytes: Callable) -> None:
    """A descriptor that swallowed Patient's Name keeps only imaging words; the name is not written."""
    outcome = run_bytes(_swallowing(b"\x08\x00\x30\x10", b"LO"), "nccid")
    if outcome.status == "passed":
        assert SURNAME.encode() not in outcome.encoded
        out = dcmread(io.BytesIO(outcome.encoded))
        assert SURNAME.lower() not in str(out.get("StudyDescription", "")).lower()
        assert "\x00" not in str(out.get("StudyDescription", ""))
    else:
        assert outcome.refusal is not None


def test_swallowed_elements_in_kept_text_are_refused(compose: Callable, run_bytes: Callable) -> None:
    """Kept as it came, a value holding another element's bytes is refused by the gate."""
    profile = compose("retain_patient_characteristics", site_recipe="KEEP (0008,1030)")
    outcome = run_bytes(_swallowing(b"\x08\x00\x30\x10", b"LO"), profile)
    assert outcome.status == "quarantined" and outcome.refusal is not None
    assert outcome.refusal.reason in (Reason.INVALID_OUTPUT, Reason.RESIDUAL_IDENTIFIER)
    assert SURNAME.lower() not in outcome.refusal.detail.lower()


def test_a_flipped_byte_in_a_name_is_still_found(compose: Callable, run: Callable) -> None:
    """A surname with one character changed, kept in a descriptor, is a near miss the gate refuses."""
    ds = make_ct_slice(PATIENT)
    ds.StudyDescription = "CT " + SURNAME[:-2] + "X" + SURNAME[-1]
    outcome = run(ds, compose(site_recipe="KEEP (0008,1030)"))
    assert outcome.refusal is not None and outcome.refusal.detail == "near_miss_patient_name found in (0008,1030)"
