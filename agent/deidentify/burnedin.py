"""Burned-in text: which images are at risk of it, and cleaning their pixels.

Decided from the source's header before anything changes it (`decide`): whether the image is at
risk (ultrasound, mammography, screen and secondary captures, BurnedInAnnotation YES), and which
rectangles the profile's region rules cover. Then, once the header is de-identified and the
source's identifiers are known (`PixelCleaner.clean`): an at-risk image that no rule describes
is read by OCR and its identifying words are masked; the rules' rectangles and those words are
covered in every frame. Only an image whose pixels were masked is re-encoded. The release gate
(agent/verify.py) reads the output's pixels again before anything leaves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from agent.deidentify import masking, ocr
from agent.deidentify.identifiers import SourceIdentifiers
from agent.deidentify.masking import PixelsUndecodable
from agent.deidentify.profile import Profile
from agent.deidentify.regions import Rect, RegionMatch, mask_boxes, match
from agent.detectors.scan import TextScanner
from agent.quarantine import Reason, Refusal

#: Modalities whose pixels usually carry burned-in text (ultrasound, secondary capture, external
#: camera, endoscopy, other; mammography, whose labels can name the patient or the site).
BURNED_IN_RISK_MODALITIES = frozenset({"US", "SC", "XC", "ES", "OT", "MG"})
_SECONDARY_CAPTURE = re.compile(r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.7(\.\d)?$")
_SCREEN_IMAGE_TYPES = ("SCREEN SAVE", "SCREENSHOT", "DOSE REPORT", "DOSE INFO")


@dataclass
class PixelReport:
    """What happened to an instance's pixels: for the dry run, the preview and the gate."""

    risk: Refusal | None = None  # why the image is at risk of burned-in text (None: it is not)
    rules: tuple[str, ...] = ()  # the region rules that matched
    region_boxes: list[Rect] = field(default_factory=list)
    ocr_frames: list[int] = field(default_factory=list)  # frames OCR read to find text
    ocr_hits: list[ocr.Hit] = field(default_factory=list)  # identifying words it found (masked)
    ocr_words: int = 0  # words it read in all
    gate_frames: list[int] = field(default_factory=list)  # frames the gate read again
    gate_hits: list[ocr.Hit] = field(default_factory=list)  # identifying words still readable
    masked: bool = False  # pixels were covered (and the instance re-encoded if it was compressed)
    reencoded: str = ""  # the transfer syntax it was decoded from, when it was
    written_as: str = ""  # what it was written in then: RLE Lossless, or "" for native
    note: str = ""
    device_words: frozenset[str] = frozenset()
    overlay_bits_cleared: bool = False  # an embedded overlay's bits were zeroed


@dataclass(frozen=True)
class PixelDecision:
    """What the source's header says about its pixels, before de-identification changes it."""

    risk: Refusal | None
    regions: RegionMatch | None
    refusal: Refusal | None  # the profile cannot make this image safe
    note: str = ""
    device_words: frozenset[str] = frozenset()  # the maker's and model's words: on screen, not a name
    embedded_overlay: bool = False  # a retired overlay kept in the pixel data's unused bits


def risk(ds: Dataset) -> Refusal | None:
    """Why this image may carry burned-in text, as the refusal it earns if nothing cleans it."""
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        return Refusal(Reason.BURNED_IN_ANNOTATION, "BurnedInAnnotation is YES")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in BURNED_IN_RISK_MODALITIES:
        return Refusal(Reason.BURNED_IN_RISK, f"modality {modality} usually carries burned-in text")
    if _SECONDARY_CAPTURE.match(str(ds.get("SOPClassUID", "") or "")):
        return Refusal(Reason.BURNED_IN_RISK, "secondary capture (screen capture)")
    image_type = "\\".join(str(v) for v in (ds.get("ImageType") or []) if v).upper()
    if any(kind in image_type for kind in _SCREEN_IMAGE_TYPES):
        return Refusal(Reason.BURNED_IN_RISK, "ImageType says screen capture")
    return None


def decide(ds: Dataset, profile: Profile) -> PixelDecision:
    """Risk and region rules from the source's header; a refusal when neither a rule nor OCR
    can clean an at-risk image."""
    at_risk = risk(ds)
    regions, note = _regions(ds, profile)
    refusal = None
    if at_risk is not None and regions is None and not profile.pixels.ocr:
        why = note or "no pixel rule covers it"
        refusal = Refusal(at_risk.reason, f"{at_risk.detail}; {why} and profile {profile.name} has no OCR")
    return PixelDecision(at_risk, regions, refusal, note, _device_words(ds), _embedded_overlay(ds))


def _embedded_overlay(ds: Dataset) -> bool:
    """Whether an overlay group says its bitmap is in the pixel data (Overlay Bit Position > 0)."""
    for group in range(0x6000, 0x6020, 2):
        position = ds.get((group, 0x0102))
        try:
            if position is not None and int(position.value or 0) > 0:
                return True
        except (TypeError, ValueError):
            return True  # a damaged position: clear the unused bits anyway
    return False


def _device_words(ds: Dataset) -> frozenset[str]:
    words: set[str] = set()
    for keyword in ("Manufacturer", "ManufacturerModelName"):
        try:
            words.update(re.findall(r"[^\W\d_]{3,}", str(ds.get(keyword, "") or "")[:128].upper()))
        except Exception:  # a damaged value names no device
            continue
    return frozenset(words)


def _regions(ds: Dataset, profile: Profile) -> tuple[RegionMatch | None, str]:
    if not profile.pixels.rules or 0x7FE00010 not in ds:
        return None, ""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return None, ""
    if rows <= 0 or columns <= 0 or rows * columns > 1 << 28:
        return None, ""
    found = match(ds, profile.pixels.rules, rows, columns)
    note = f"left out, as they would cover the whole image: {'; '.join(found.ignored)}" if found and found.ignored else ""
    return (found if found is not None and found.covers_anything else None), note


class PixelCleaner:
    """Masks what the rules and OCR find; one per process, like the Deidentifier."""

    def __init__(self, profile: Profile, scanner: TextScanner) -> None:
        self.settings = profile.pixels
        self.scanner = scanner

    def clean(self, ds: Dataset, decision: PixelDecision, identifiers: SourceIdentifiers) -> PixelReport:
        """Cover the rule's rectangles and the identifying words OCR reads, in every frame.
        Raises PixelsUndecodable or ocr.OcrUnavailable when that cannot be done safely."""
        report = PixelReport(risk=decision.risk, note=decision.note, device_words=decision.device_words)
        if decision.embedded_overlay:
            report.overlay_bits_cleared = masking.clear_unused_bits(ds)
        mask = None
        if decision.regions is not None:
            mask = decision.regions.mask.copy()
            report.rules = decision.regions.labels
            report.region_boxes = decision.regions.boxes
        elif decision.risk is not None and self.settings.ocr:
            mask = self._find_text(ds, identifiers, report)
        if mask is None or not mask.any():
            return report
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
        if masking.decode(ds):
            report.reencoded = syntax
        masking.cover(ds, mask)
        report.masked = True
        if report.reencoded and masking.encode_lossless(ds):
            report.written_as = "RLE Lossless"
        return report

    def read(self, ds: Dataset, identifiers: SourceIdentifiers,
             device_words: frozenset[str] = frozenset()) -> tuple[list[int], list[ocr.Hit], int]:
        """OCR of a sample of `ds`'s frames: (frames read, identifying words, words read).
        `ds` is not changed: compressed pixels are decoded in a copy."""
        native = masking.native_copy(ds)
        frames = ocr.sample(masking.frame_count(native), self.settings.ocr_frames)
        hits: list[ocr.Hit] = []
        count = 0
        for index, grey in zip(frames, masking.grey_frames(native, frames)):
            words = ocr.read(grey, self.settings.ocr_timeout_s)
            count += len(words)
            hits += ocr.identifying(words, index, identifiers, self.scanner, grey.shape, device_words)
        return frames, hits, count

    def _find_text(self, ds: Dataset, identifiers: SourceIdentifiers, report: PixelReport) -> np.ndarray:
        report.ocr_frames, report.ocr_hits, report.ocr_words = self.read(ds, identifiers, report.device_words)
        mask = np.zeros((int(ds.Rows), int(ds.Columns)), dtype=bool)
        for hit in report.ocr_hits:  # a word read in one frame is covered in every frame
            x0, y0, x1, y1 = hit.box
            mask[y0:y1, x0:x1] = True
        return mask


def boxes_text(boxes: list[Rect], limit: int = 6) -> str:
    """Rectangles for a refusal's detail: coordinates only, never what they hold."""
    shown = ", ".join(f"({x0},{y0})-({x1},{y1})" for x0, y0, x1, y1 in boxes[:limit])
    return shown + (f" and {len(boxes) - limit} more" if len(boxes) > limit else "")


__all__ = ["BURNED_IN_RISK_MODALITIES", "PixelCleaner", "PixelDecision", "PixelReport", "PixelsUndecodable",
           "decide", "mask_boxes", "risk"]
