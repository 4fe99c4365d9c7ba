"""Reading burned-in text with Tesseract, and finding the identifying words in it.

OCR finds the unknown: text on an image no region rule describes. It is only as good as what
Tesseract reads, so it runs on at-risk images only, twice (to find what to mask, then again on
the output, by the release gate), and a word it reads is judged by the same searches the gate
runs on header text: the source's own identifiers in every written form and near misses, and the
detectors (names, NHS numbers, dates, postcodes, phone numbers). Small images are read at twice
their size, and light text on a dark image is read inverted, which is how Tesseract reads best.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from agent.deidentify.identifiers import SourceIdentifiers
from agent.deidentify.regions import Rect
from agent.detectors.scan import TextScanner

_UPSCALE_BELOW = 600  # rows: smaller images are read at twice their size
_MIN_CONFIDENCE = 10  # Tesseract's confidence below which a "word" is noise (lines, speckle)
_PAD = 3  # pixels around a word's box that are masked with it (antialiased edges)
_NAME_CONFIDENCE = 70  # a lexicon name alone counts only when Tesseract is this sure of it
_CACHE = 64  # frames: the gate re-reads a frame masking did not change, and gets the same words


class OcrUnavailable(Exception):
    """Tesseract is not installed, failed, or ran out of time; the message names no value."""


@dataclass(frozen=True)
class Word:
    text: str
    box: Rect  # in the image's pixels
    line: tuple[int, int, int]  # Tesseract's block, paragraph and line numbers
    confidence: float = 100.0

    def could_be_a_name(self, device_words: frozenset[str]) -> bool:
        """A lexicon name read by OCR counts only if it reads like one: read with confidence,
        letters only, capitalised, and not the device's maker (SIEMENS, PHILIPS). Speckle and
        scan lines read as "ee", "die" or "See" otherwise refuse half of all ultrasounds."""
        letters = self.text.strip(".,:;'\"()")
        return (self.confidence >= _NAME_CONFIDENCE and len(letters) >= 3 and letters.isalpha()
                and letters[0].isupper() and letters.upper() not in device_words)


@dataclass(frozen=True)
class Hit:
    """An identifying word OCR read: where, and what kind (never the text, so it can be reported)."""

    frame: int
    box: Rect
    label: str


_cache: OrderedDict[bytes, tuple[Word, ...]] = OrderedDict()


def available() -> bool:
    return shutil.which("tesseract") is not None


def read(grey: np.ndarray, timeout_s: float) -> tuple[Word, ...]:
    """The words Tesseract reads in an 8-bit greyscale frame, boxes in the frame's pixels."""
    digest = hashlib.sha256(grey.tobytes() + str(grey.shape).encode()).digest()
    cached = _cache.get(digest)
    if cached is not None:
        _cache.move_to_end(digest)
        return cached
    words = _tesseract(grey, timeout_s)
    _cache[digest] = words
    if len(_cache) > _CACHE:
        _cache.popitem(last=False)
    return words


def _tesseract(grey: np.ndarray, timeout_s: float) -> tuple[Word, ...]:
    if not available():
        raise OcrUnavailable("tesseract is not installed (Debian: tesseract-ocr tesseract-ocr-eng)")
    import pytesseract
    from PIL import Image

    scale = 2 if grey.shape[0] < _UPSCALE_BELOW else 1
    image = Image.fromarray(grey)
    if float(grey.mean()) < 128:
        image = Image.fromarray(255 - grey)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)
    try:
        data = pytesseract.image_to_data(image, output_type=pytesseract.Output.DICT, config="--psm 11",
                                         timeout=timeout_s)
    except RuntimeError:  # pytesseract's timeout
        raise OcrUnavailable(f"tesseract did not finish a frame within {timeout_s:g} s") from None
    except Exception as exc:  # its errors quote tesseract's output, which can hold what it read
        raise OcrUnavailable(f"tesseract failed ({type(exc).__name__})") from None
    words = []
    for index, text in enumerate(data["text"]):
        text = str(text).strip()
        if not text or float(data["conf"][index]) < _MIN_CONFIDENCE:
            continue
        left, top = int(data["left"][index]) // scale, int(data["top"][index]) // scale
        right = left + -(-int(data["width"][index]) // scale)
        bottom = top + -(-int(data["height"][index]) // scale)
        line = (int(data["block_num"][index]), int(data["par_num"][index]), int(data["line_num"][index]))
        words.append(Word(text, (left, top, right, bottom), line, float(data["conf"][index])))
    return tuple(words)


def identifying(words: tuple[Word, ...], frame: int, identifiers: SourceIdentifiers, scanner: TextScanner,
                shape: tuple[int, int], device_words: frozenset[str] = frozenset()) -> list[Hit]:
    """The words that are, or are part of, an identifier: each line is searched whole (a name
    is often two words), and each word alone (OCR joins and splits words at random)."""
    hits: list[Hit] = []
    lines: dict[tuple[int, int, int], list[Word]] = {}
    for word in words:
        lines.setdefault(word.line, []).append(word)
    for line_words in lines.values():
        text, starts = "", []
        for word in line_words:
            starts.append(len(text))
            text += word.text + " "
        spans = [(start, end, label) for start, end, label in identifiers.spans(text)]
        for finding in scanner.findings(text, "prose"):
            if finding.detector == "name_lexicon" and not any(
                    word.could_be_a_name(device_words) for word, begin in zip(line_words, starts)
                    if begin < finding.end and finding.start < begin + len(word.text)):
                continue
            spans.append((finding.start, finding.end, finding.detector))
        for word, begin in zip(line_words, starts):
            alone = identifiers.find_in_text(word.text)
            if alone is not None:
                spans.append((begin, begin + len(word.text), alone))
        for start, end, label in spans:
            for word, begin in zip(line_words, starts):
                if begin < end and start < begin + len(word.text):
                    hits.append(Hit(frame, _padded(word.box, shape), label))
    return hits


def sample(frames: int, wanted: int) -> list[int]:
    """Which frames to read: all of a short clip; of a long cine, the first, the last and evenly
    between (burned-in text is the same on every frame of a cine, or changes slowly)."""
    if frames <= wanted:
        return list(range(frames))
    if wanted == 1:
        return [0]
    return sorted({round(i * (frames - 1) / (wanted - 1)) for i in range(wanted)})


def _padded(box: Rect, shape: tuple[int, int]) -> Rect:
    rows, columns = shape
    x0, y0, x1, y1 = box
    return (max(0, x0 - _PAD), max(0, y0 - _PAD), min(columns, x1 + _PAD), min(rows, y1 + _PAD))
