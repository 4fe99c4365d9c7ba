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
from pydicom.multival import MultiValue

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
#: Classes at risk whatever their Modality says: ultrasound (single, multi-frame, the retired
#: ones, enhanced volumes) and visible light (endoscopy, microscopy, photography, video).
_AT_RISK_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.3", "1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.77.1.1",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1", "1.2.840.10008.5.1.4.1.1.77.1.2", "1.2.840.10008.5.1.4.1.1.77.1.2.1",
    "1.2.840.10008.5.1.4.1.1.77.1.3", "1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2", "1.2.840.10008.5.1.4.1.1.77.1.5.4",
    "1.2.840.10008.5.1.4.1.1.77.1.6",
})  # fmt: skip


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
    overlay_bits_cleared: bool = False  # an embedded overlay's bits were zeroed
    every_frame: bool = False  # OCR read every frame, not a sample


@dataclass(frozen=True)
class PixelDecision:
    """What the source's header says about its pixels, before de-identification changes it."""

    risk: Refusal | None
    regions: RegionMatch | None
    refusal: Refusal | None  # the profile cannot make this image safe
    note: str = ""
    embedded_overlay: bool = False  # a retired overlay kept in the pixel data's unused bits
    every_frame: bool = False  # OCR reads every frame: a secondary capture's frames are pages, not a cine


def risk(ds: Dataset) -> Refusal | None:
    """Why this image may carry burned-in text, as the refusal it earns if nothing cleans it.
    By its class as well as by its Modality (which can be missing, or multi-valued)."""
    if _words_of(ds, "BurnedInAnnotation") & {"YES"}:
        return Refusal(Reason.BURNED_IN_ANNOTATION, "BurnedInAnnotation is YES")
    modality = sorted(_words_of(ds, "Modality") & BURNED_IN_RISK_MODALITIES)
    if modality:
        return Refusal(Reason.BURNED_IN_RISK, f"modality {modality[0]} usually carries burned-in text")
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if _SECONDARY_CAPTURE.match(sop_class):
        return Refusal(Reason.BURNED_IN_RISK, "secondary capture (screen capture)")
    if sop_class in _AT_RISK_CLASSES:
        return Refusal(Reason.BURNED_IN_RISK, "an ultrasound or visible-light class usually carries burned-in text")
    image_type = "\\".join(_words_of(ds, "ImageType", split=False))
    if any(kind in image_type for kind in _SCREEN_IMAGE_TYPES):
        return Refusal(Reason.BURNED_IN_RISK, "ImageType says screen capture")
    return None


def _words_of(ds: Dataset, keyword: str, *, split: bool = True) -> set[str]:
    """An attribute's values, upper-cased: single- or multi-valued, a damaged one as no value."""
    try:
        value = ds.get(keyword)
    except Exception:  # a damaged value: the other tests still run
        return set()
    if value is None:
        return set()
    values = [value] if isinstance(value, (str, bytes)) else list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    found: set[str] = set()
    for item in values:
        text = item.decode("latin-1") if isinstance(item, bytes) else str(item)
        parts = text.split("\\") if split else [text]
        found.update(part.strip().upper() for part in parts if part.strip())
    return found


def decide(ds: Dataset, profile: Profile) -> PixelDecision:
    """Risk and region rules from the source's header; a refusal when neither a rule nor OCR
    can clean an at-risk image."""
    at_risk = risk(ds)
    regions, note, refusal = _regions(ds, profile)
    if refusal is None and at_risk is not None and regions is None and not profile.pixels.ocr:
        why = note or "no pixel rule covers it"
        refusal = Refusal(at_risk.reason, f"{at_risk.detail}; {why} and profile {profile.name} has no OCR")
    every_frame = bool(_SECONDARY_CAPTURE.match(str(ds.get("SOPClassUID", "") or "").strip()))
    return PixelDecision(at_risk, regions, refusal, note, _embedded_overlay(ds), every_frame)


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


def _regions(ds: Dataset, profile: Profile) -> tuple[RegionMatch | None, str, Refusal | None]:
    """The rules' mask, a note on rules left out, and a refusal when a rule matches an image whose
    size cannot be read (its rectangles cannot be placed: it is not passed uncovered)."""
    if not profile.pixels.rules or 0x7FE00010 not in ds:
        return None, "", None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        sized = 0 < rows * columns <= 1 << 28 and rows > 0
    except (AttributeError, TypeError, ValueError):
        sized = False
    if not sized:
        if any(rule.matches(ds) for rule in profile.pixels.rules):
            return None, "", Refusal(Reason.PIXELS_UNDECODABLE, "a pixel rule matches, and Rows or Columns is damaged")
        return None, "", None
    found = match(ds, profile.pixels.rules, rows, columns)
    note = f"left out, as they would cover the whole image: {'; '.join(found.ignored)}" if found and found.ignored else ""
    return (found if found is not None and found.covers_anything else None), note, None


class PixelCleaner:
    """Masks what the rules and OCR find; one per process, like the Deidentifier."""

    def __init__(self, profile: Profile, scanner: TextScanner) -> None:
        self.settings = profile.pixels
        self.scanner = scanner

    def clean(self, ds: Dataset, decision: PixelDecision, identifiers: SourceIdentifiers) -> PixelReport:
        """Cover the rules' rectangles, then the identifying words OCR reads (of an at-risk image,
        rule-masked or not), in every frame. Raises PixelsUndecodable or ocr.OcrUnavailable when
        that cannot be done safely.

        An at-risk image the PACS sent compressed is always decoded and written RLE Lossless,
        masked or not: the gate can vouch only for the pixels it decoded, and a JPEG stream can
        carry text besides them (comment and application segments, a second image after the end).
        """
        report = PixelReport(risk=decision.risk, note=decision.note, every_frame=decision.every_frame)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
        if decision.risk is not None or decision.regions is not None:
            if masking.decode(ds):
                report.reencoded = syntax
        if decision.risk is not None or decision.embedded_overlay:
            # Bits above Bits Stored mean nothing to a viewer and are not read by OCR: an overlay
            # (declared or not) can draw text there.
            report.overlay_bits_cleared = masking.clear_unused_bits(ds)
        if decision.regions is not None:
            report.rules = decision.regions.labels
            report.region_boxes = decision.regions.boxes
            masking.cover(ds, decision.regions.mask)
            report.masked = True
        if decision.risk is not None and self.settings.ocr:
            mask = self._find_text(ds, identifiers, report)
            if mask.any():
                masking.cover(ds, mask)
                report.masked = True
        if report.reencoded and masking.encode_lossless(ds):
            report.written_as = "RLE Lossless"
        return report

    def read(self, ds: Dataset, identifiers: SourceIdentifiers,
             every_frame: bool = False) -> tuple[list[int], list[ocr.Hit], int]:
        """OCR of a sample of `ds`'s frames (or of every frame): (frames read, identifying words,
        words read). `ds` is not changed: compressed pixels are decoded in a copy."""
        native = masking.native_copy(ds)
        count = masking.frame_count(native)
        frames = list(range(count)) if every_frame else ocr.sample(count, self.settings.ocr_frames)
        hits: list[ocr.Hit] = []
        read = 0
        for index in frames:  # a frame at a time: a long document is not held whole as images
            grey = masking.grey_frames(native, [index])[0]
            words = ocr.read(grey, self.settings.ocr_timeout_s)
            read += len(words)
            hits += ocr.identifying(words, index, identifiers, self.scanner, grey.shape)
        return frames, hits, read

    def _find_text(self, ds: Dataset, identifiers: SourceIdentifiers, report: PixelReport) -> np.ndarray:
        report.ocr_frames, report.ocr_hits, report.ocr_words = self.read(ds, identifiers, report.every_frame)
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
