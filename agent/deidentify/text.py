"""Cleaning text: what PS3.15's "clean" means for free text and descriptors here.

- `clean`: the text keeps its words but loses every identifying value of the source (in every
  written form) and everything the detectors find (names, NHS numbers, phones, postcodes, e-mails,
  dates, labelled identifiers).
- `keep_vocabulary`: safe by construction for short descriptors. After `clean`, only tokens of
  the imaging vocabulary (and short numbers with their units) stay; every other token becomes `*`.
  "CT CHEST WITH CONTRAST - Dr Helen Brookes" becomes "CT CHEST WITH CONTRAST - *".
"""

from __future__ import annotations

import re

from agent.deidentify.identifiers import SourceIdentifiers
from agent.detectors.scan import TextScanner, redact

_TOKEN = re.compile(r"[^\W_]+(?:\.\d+)?")
_NUMBER = re.compile(r"\d{1,4}(?:\.\d{1,3})?")
_NUMBER_UNIT = re.compile(r"(\d{1,4}(?:\.\d{1,3})?)([A-Z]{1,4})")
# Dotted digit groups (a UID, a version, an IP address): never a measurement, starred whole.
_DOTTED = re.compile(r"\d+(?:\.\d+){2,}\.?")
_WORD_NUMBER = re.compile(r"([A-Z]{1,8})(\d{1,3})")
_STARS = re.compile(r"\*(?:[\s\-_/.,:;+&]*\*)+")
# Printable separators kept between vocabulary words; control characters never survive (a damaged
# length can make a value swallow the next elements' bytes).
_SEPARATORS = frozenset(" -_/.,:;+&()[]#%'=<>")


def clean(text: str, identifiers: SourceIdentifiers, scanner: TextScanner) -> str:
    """`text` without the source's identifiers and without what the detectors find."""
    spans = [(start, end) for start, end, _ in identifiers.spans(text)]
    spans += [(f.start, f.end) for f in scanner.findings(text)]
    cleaned = redact(text, spans) if spans else text
    if any(ord(c) < 32 and c not in "\t\n\r\f\x1b" for c in cleaned):
        cleaned = "".join(c if ord(c) >= 32 or c in "\t\n\r\f\x1b" else " " for c in cleaned)
    return cleaned


def keep_vocabulary(text: str, identifiers: SourceIdentifiers, scanner: TextScanner) -> str:
    """Only imaging vocabulary (and short numbers) survives; every other token becomes `*`."""
    cleaned = _DOTTED.sub("*", clean(text, identifiers, scanner))
    vocabulary = scanner.vocabulary
    out: list[str] = []
    position = 0
    for match in _TOKEN.finditer(cleaned):
        out.append(_separators(cleaned[position : match.start()]))
        token = match.group(0)
        out.append(token if _allowed(token.upper(), vocabulary) else "*")
        position = match.end()
    out.append(_separators(cleaned[position:]))
    result = _STARS.sub("*", "".join(out)).strip()
    return re.sub(r"\s{2,}", " ", result)


def _separators(text: str) -> str:
    return "".join(c if c in _SEPARATORS or c == "*" else " " for c in text)


def _allowed(token: str, vocabulary: frozenset[str]) -> bool:
    if token in vocabulary or _NUMBER.fullmatch(token):
        return True
    if match := _NUMBER_UNIT.fullmatch(token):
        return match.group(2) in vocabulary
    if match := _WORD_NUMBER.fullmatch(token):
        return match.group(1) in vocabulary
    return False


__all__ = ["clean", "keep_vocabulary"]
