"""Burned-in text where a reviewer hid it: each of these passed with its identifier once."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UltrasoundImageStorage

from agent.deidentify import load_profile, masking, ocr
from agent.keys import SiteKey
from agent.process import InstanceProcessor, Outcome
from tests.burnedin import available, burned_image, decoded

NAME = ("SMITH^JOHN", "943 476 5919", "12/03/1961")


def _run(ds, site_key: SiteKey) -> Outcome:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return InstanceProcessor(load_profile("nmip"), site_key).process(buffer.getvalue(), "hostile")


def _readable(outcome: Outcome) -> str:
    out = masking.native_copy(dcmread(io.BytesIO(outcome.encoded)))
    frames = range(masking.frame_count(out))
    return " ".join(w.text.upper() for g in masking.grey_frames(out, list(frames)) for w in ocr.read(g, 60))


@pytest.mark.skipif(not available("jpeg-baseline"), reason="no JPEG encoder here")
def test_text_hidden_in_a_jpeg_stream_of_an_at_risk_image_does_not_leave(site_key: SiteKey) -> None:
    """A comment segment and a second image after the end: the gate vouches for decoded pixels
    only, so an at-risk compressed image always leaves decoded and re-encoded."""
    burned = burned_image(texts=("LIVER",), syntax="jpeg-baseline")
    ds = burned.dataset
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    comment = b"SMITH^JOHN 9434765919"
    hidden = frame[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + frame[2:] + b"SMITH^JOHN"
    ds.PixelData = encapsulate([hidden])
    outcome = _run(ds, site_key)
    assert outcome.status == "passed", outcome.refusal
    assert b"SMITH" not in outcome.encoded and b"9434765919" not in outcome.encoded
    assert dcmread(io.BytesIO(outcome.encoded)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"


@pytest.mark.parametrize("change", [{"Modality": None}, {"Modality": ["US", "US"]}], ids=["no-modality", "multi-valued"])
def test_an_ultrasound_is_at_risk_by_its_class_whatever_its_modality(change: dict, site_key: SiteKey) -> None:
    ds = burned_image(texts=NAME).dataset
    assert ds.SOPClassUID == UltrasoundImageStorage
    del ds.BurnedInAnnotation  # at risk by its class alone
    for keyword, value in change.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    outcome = _run(ds, site_key)
    assert outcome.status == "passed", outcome.refusal
    assert outcome.result.pixels.risk is not None and outcome.result.pixels.ocr_hits
    assert "SMITH" not in _readable(outcome)


def test_a_single_valued_screen_save_image_type_is_at_risk(site_key: SiteKey) -> None:
    ds = burned_image(texts=NAME, modality="OT").dataset
    ds.Modality = "CT"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.ImageType = "SCREEN SAVE"
    del ds.BurnedInAnnotation
    outcome = _run(ds, site_key)
    assert outcome.result.pixels is not None and outcome.result.pixels.risk is not None


def test_text_a_few_levels_above_a_bright_16_bit_background_is_read_and_covered(site_key: SiteKey) -> None:
    burned = burned_image(texts=NAME, bits=16, modality="OT")
    ds = burned.dataset
    stored = decoded(ds).astype(np.uint16)
    text = stored > np.percentile(stored, 99.5)
    ds.BitsStored, ds.HighBit = 16, 15
    faint = np.where(text, 61200, 60000 + (stored % 97)).astype("<u2")
    ds.PixelData = faint.tobytes()
    outcome = _run(ds, site_key)
    assert outcome.status == "passed", outcome.refusal
    assert outcome.result.pixels.ocr_hits
    assert "SMITH" not in _readable(outcome)


def test_red_text_on_a_grey_of_the_same_luminance_is_read_and_covered(site_key: SiteKey) -> None:
    burned = burned_image(texts=NAME, photometric="RGB")
    ds = burned.dataset
    pixels = decoded(ds)[0]
    text = pixels.max(axis=-1) > 200
    grey = np.full_like(pixels, 76)  # luminance of pure red (255, 0, 0) is 76
    grey[text] = (255, 0, 0)
    ds.PixelData = grey.tobytes()
    outcome = _run(ds, site_key)
    assert outcome.status == "passed", outcome.refusal
    assert outcome.result.pixels.ocr_hits
    assert "SMITH" not in _readable(outcome)


def test_text_drawn_in_the_bits_above_bits_stored_is_cleared(site_key: SiteKey) -> None:
    burned = burned_image(texts=("LIVER",), bits=16, modality="OT")
    ds = burned.dataset
    assert ds.BitsStored == 12
    stored = decoded(ds).astype(np.uint16)
    ds.PixelData = (stored | (1 << 15)).astype("<u2").tobytes()  # a name's bitmap would be in bit 15
    outcome = _run(ds, site_key)
    assert outcome.status == "passed", outcome.refusal
    out = np.frombuffer(dcmread(io.BytesIO(outcome.encoded)).PixelData, dtype="<u2")
    assert not (out & 0xF000).any()


def test_palette_indices_outside_the_table_refuse_the_image(site_key: SiteKey) -> None:
    ds = burned_image(texts=NAME, photometric="PALETTE COLOR").dataset
    descriptor = list(ds.RedPaletteColorLookupTableDescriptor)
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [descriptor[0], 200, descriptor[2]])
    outcome = _run(ds, site_key)
    assert (outcome.status, outcome.refusal.reason.value) == ("quarantined", "pixels_undecodable")


def test_a_header_value_never_reaches_a_refusal_detail(site_key: SiteKey) -> None:
    ds = burned_image(texts=NAME).dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that this is no CS
        ds.PhotometricInterpretation = "SMITH^JOHN 1961"
        outcome = _run(ds, site_key)
    assert outcome.status == "quarantined"
    assert "SMITH" not in outcome.refusal.detail and "1961" not in outcome.refusal.detail


def test_bytes_after_a_native_ybr_full_422_image_are_trimmed(site_key: SiteKey) -> None:
    ds = burned_image(texts=("LIVER",), photometric="YBR_FULL_422").dataset
    size = len(ds.PixelData)
    ds.PixelData = ds.PixelData + b"SMITH^JOHN" * 1000
    outcome = _run(ds, site_key)
    assert outcome.status == "passed", outcome.refusal
    assert b"SMITH" not in outcome.encoded
    assert len(dcmread(io.BytesIO(outcome.encoded)).PixelData) == size


def test_every_page_of_a_multi_frame_secondary_capture_is_read(site_key: SiteKey) -> None:
    """A document's pages are not a cine: the name on page 2 of 12 is read and covered."""
    pages = burned_image(texts=("REPORT PAGE",), frames=12, modality="OT")
    named = burned_image(texts=NAME, frames=12, modality="OT")
    ds = pages.dataset
    frame_bytes = len(ds.PixelData) // 12
    ds.PixelData = ds.PixelData[:frame_bytes] + named.dataset.PixelData[frame_bytes:2 * frame_bytes] + ds.PixelData[2 * frame_bytes:]
    assert str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.7")
    outcome = _run(ds, site_key)
    assert outcome.status == "passed", outcome.refusal
    assert outcome.result.pixels.ocr_frames == list(range(12))
    assert {hit.frame for hit in outcome.result.pixels.ocr_hits} == {1}
    assert "SMITH" not in _readable(outcome)
