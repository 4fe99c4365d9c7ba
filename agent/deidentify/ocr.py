"""Reading burned-in text with Tesseract, and finding the identifying words in it.

OCR finds the unknown: text on an image no region rule describes. It is only as good as what
Tesseract reads, so it runs on at-risk images only, twice (to find what to mask, then again on
the output, by the release gate), and a word it reads is judged by the same searches the gate
runs on header text: the source's own identifiers in every written form and near misses, and the
detectors (NHS numbers, dates, postcodes, phone numbers, titled names). Small images are read at twice
their size, light text on a dark image is read inverted, which is how Tesseract reads best, and
each frame is read with two binarisations (global and local).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import subprocess
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from agent.deidentify.identifiers import SourceIdentifiers
from agent.deidentify.regions import Rect
from agent.detectors.scan import TextScanner

_UPSCALE_BELOW = 600  # rows: smaller images are read at twice their size
_LONGEST = 2048  # pixels: larger frames are read shrunk to this
_MIN_CONFIDENCE = 0  # every word Tesseract reads is searched: an ID read at confidence 5 is still the ID
_PAD = 3  # pixels around a word's box that are masked with it (antialiased edges)
#: Tesseract's binarisations, each read: global Otsu misses text once a few bright lines are gone
#: (a masked image's threshold falls into the speckle), Sauvola's local threshold does not; text
#: either one reads counts.
_THRESHOLDING = (0, 2)
_NAME_DETECTORS = frozenset({"name_lexicon", "titled_name"})
_NAME_INSIDE = 4  # name parts this long are also found inside a longer word
_CACHE = 64  # frames: the gate re-reads a frame masking did not change, and gets the same words


class OcrUnavailable(Exception):
    """Tesseract is not installed, failed, or ran out of time; the message names no value."""


@dataclass(frozen=True)
class Word:
    text: str
    box: Rect  # in the image's pixels
    line: tuple[int, int, int, int]  # thresholding method, and Tesseract's block, paragraph and line
    confidence: float = 100.0



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
    """Run Tesseract on the frame, PNG in on stdin and TSV out on stdout.

    Tesseract is called directly rather than through pytesseract, which writes every frame to a
    temporary file (a patient's image, outside the agent's private folders, and left behind when
    a worker is killed) and does not stop Tesseract when its caller is interrupted.
    """
    executable = shutil.which("tesseract")
    if executable is None:
        raise OcrUnavailable("tesseract is not installed (Debian: tesseract-ocr tesseract-ocr-eng)")
    from PIL import Image

    scale = _scale(grey.shape)
    image = Image.fromarray(255 - grey if float(grey.mean()) < 128 else grey)
    if scale != 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BOX)
    png = io.BytesIO()
    image.save(png, format="PNG", compress_level=1)
    words: list[Word] = []
    for method in _THRESHOLDING:
        words += _words(_run(executable, png.getvalue(), method, timeout_s), scale, method)
    return tuple(words)


def _run(executable: str, png: bytes, method: int, timeout_s: float) -> str:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_THREAD_LIMIT": "1", "LC_ALL": "C"}
    command = [executable, "stdin", "stdout", "--psm", "11", "-l", "eng", "-c", f"thresholding_method={method}", "tsv"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env=environment, close_fds=True)
    try:
        output, _ = process.communicate(png, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise OcrUnavailable(f"tesseract did not finish a frame within {timeout_s:g} s") from None
    finally:
        if process.poll() is None:  # timed out, or this worker's own time limit interrupted it
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise OcrUnavailable(f"tesseract failed (exit status {process.returncode})")
    return output.decode("utf-8", "replace")


def _scale(shape: tuple[int, ...]) -> float:
    """Small frames are read at twice their size; a large one (a mammogram, 4000 pixels a side,
    whose labels are tall) at most _LONGEST pixels a side, which keeps Tesseract to seconds."""
    longest = max(shape[0], shape[1])
    if shape[0] < _UPSCALE_BELOW and longest * 2 <= _LONGEST:
        return 2.0
    return min(1.0, _LONGEST / longest)


def _words(tsv: str, scale: float, method: int) -> list[Word]:
    """Tesseract's TSV: level, page, block, par, line, word, left, top, width, height, conf, text."""
    words = []
    for row in tsv.splitlines()[1:]:
        fields = row.split("\t")
        if len(fields) < 12 or not fields[11].strip():
            continue
        try:
            block, par, line = int(fields[2]), int(fields[3]), int(fields[4])
            left, top, width, height = (int(v) for v in fields[6:10])
            confidence = float(fields[10])
        except ValueError:
            continue
        if confidence < _MIN_CONFIDENCE:
            continue
        slack = math.ceil(1 / scale) - 1 if scale < 1 else 0  # a shrunk pixel is several of the frame's
        box = (max(0, int(left / scale) - slack), max(0, int(top / scale) - slack),
               math.ceil((left + width) / scale) + slack, math.ceil((top + height) / scale) + slack)
        words.append(Word(fields[11].strip(), box, (method, block, par, line), confidence))
    return words


def identifying(words: tuple[Word, ...], frame: int, identifiers: SourceIdentifiers, scanner: TextScanner,
                shape: tuple[int, int]) -> list[Hit]:
    """The words that are, or are part of, an identifier.

    Searched three ways, since OCR joins and splits words at random: each line whole (a name is
    often two words), each word alone, and each run of words that touch on the page read as one
    (WHIT and TAKERAEDITH are WHITTAKER^EDITH). A word found covers its whole run: the glyphs
    of one printed word go together, whichever part was recognised.
    """
    labels: dict[int, str] = {}
    label: str | None
    names = _name_parts(identifiers)
    lines: dict[tuple[int, int, int, int], list[int]] = {}
    for index, word in enumerate(words):
        lines.setdefault(word.line, []).append(index)
    for members in lines.values():
        text, starts = "", []
        for index in members:
            starts.append(len(text))
            text += words[index].text + " "
        spans = [(start, end, label) for start, end, label in identifiers.spans(text)]
        for finding in scanner.findings(text, "prose"):
            # A lexicon name alone is not searched for in what OCR reads: speckle, scan lines and
            # words the masking cut short read as names ("Ath", "Gener"), and the source's own
            # names (the patient's, the staff's) are searched for as identifiers.
            if finding.detector != "name_lexicon":
                spans.append((finding.start, finding.end, finding.detector))
        for start, end, label in spans:
            for index, begin in zip(members, starts):
                if begin < end and start < begin + len(words[index].text):
                    labels.setdefault(index, label)
    runs = _touching(words)
    for run in runs:
        joined = "".join(words[index].text for index in run)
        label = identifiers.find_in_text(joined) or _name_inside(joined, names)
        if label is None and len(run) > 1:  # a number split in two (943 4765919); not names: speckle
            found = [f.detector for f in scanner.findings(joined, "kept") if f.detector not in _NAME_DETECTORS]
            label = found[0] if found else None
        for index in run:
            alone = identifiers.find_in_text(words[index].text) or _name_inside(words[index].text, names)
            label = label or alone
        if label is None and any(index in labels for index in run):
            label = next(labels[index] for index in run if index in labels)
        if label is not None:
            for index in run:
                labels.setdefault(index, label)
    return [Hit(frame, _padded(words[index].box, shape), label) for index, label in sorted(labels.items())]


def _touching(words: tuple[Word, ...]) -> list[list[int]]:
    """Runs of words read side by side on one line with at most half a character's height
    between them: one printed word, or a name run together. Linear in the words of a line."""
    lines: dict[tuple[int, int, int, int], list[int]] = {}
    for index, word in enumerate(words):
        lines.setdefault(word.line, []).append(index)
    runs: list[list[int]] = []
    for members in lines.values():
        members.sort(key=lambda i: words[i].box[0])
        run = [members[0]]
        for index in members[1:]:
            x0, y0, _, y1 = words[index].box
            _, ly0, lx1, ly1 = words[run[-1]].box
            height = max(y1 - y0, ly1 - ly0, 1)
            if min(y1, ly1) - max(y0, ly0) >= height // 2 and -2 <= x0 - lx1 <= height // 2:
                run.append(index)
            else:
                runs.append(run)
                run = [index]
        runs.append(run)
    return runs


def _name_parts(identifiers: SourceIdentifiers) -> dict[str, str]:
    """The source's name parts long enough to find inside a word OCR ran together with its
    neighbours ("SMITHAJOHN" for SMITH^JOHN, "ZZZDOWNTIME,MARY")."""
    return {value: label for value, label in identifiers.values.items()
            if "name" in label and len(value) >= _NAME_INSIDE and value.isalpha()}


def _name_inside(word: str, names: dict[str, str]) -> str | None:
    lowered = word.lower()
    return next((label for part, label in names.items() if part in lowered), None)


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
