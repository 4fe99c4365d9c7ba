"""One scanner for every detector that does not depend on the source: the gate's second opinion.

`TextScanner.findings(text)` runs the recognisers (NHS numbers, phones, postcodes, e-mails,
labelled identifiers, dates) and the name finders over one text value. Results are cached by
text: the values of a study repeat from instance to instance, so after the first instance most
lookups cost a dictionary hit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from agent.detectors import lexicon
from agent.detectors.names import NameFinder
from agent.detectors.recognisers import RECOGNISERS

_CACHE_LIMIT = 50_000
#: How much a value is searched:
#: - "prose": everything; a distinctive lexicon name counts alone (free text, names, cleaned text);
#: - "kept": a lexicon name counts only beside another name signal (values a profile keeps);
#: - "device": device and institution values a profile keeps (Retain Device Identity, Retain
#:   Institution Identity): no lexicon, and none of the recognisers a hospital's own address or a
#:   serial number sets off (postcode, phone, NHS number, date). Titles, e-mails and labelled
#:   identifiers still count there.
Mode = Literal["prose", "kept", "device"]
_NOT_FOR_DEVICES = frozenset({"nhs_number", "phone", "date", "postcode"})


@dataclass(frozen=True)
class Finding:
    """What a detector found: its name and where. Holds no value, so it can be reported."""

    detector: str
    start: int
    end: int


class TextScanner:
    """The detectors of one profile (its vocabulary); build once per process and reuse."""

    def __init__(self, extra_vocabulary: Iterable[str] = ()) -> None:
        self.vocabulary = lexicon.imaging_vocabulary() | frozenset(w.upper() for w in extra_vocabulary)
        self.names = NameFinder(self.vocabulary)
        self._cache: dict[tuple[str, Mode], tuple[Finding, ...]] = {}
        #: For the release gate: per set of source identifiers, the (VR, tag, nested, value) it found
        #: clean, so the values a study repeats are searched once per patient. Kept here because
        #: what is clean depends on this scanner's vocabulary.
        self.verified: dict[frozenset[str], set[tuple[str, int, bool, str]]] = {}

    def findings(self, text: str, mode: Mode = "prose") -> tuple[Finding, ...]:
        """Every finding in `text`, in order of position."""
        key = (text, mode)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        found: list[Finding] = []
        if text.strip():
            for name, recogniser in RECOGNISERS:
                if mode != "device" or name not in _NOT_FOR_DEVICES:
                    found.extend(Finding(name, start, end) for start, end in recogniser(text))
            found.extend(Finding("titled_name", start, end) for start, end in self.names.titled(text))
            if mode != "device":
                spans = self.names.lexicon_names(text, alone=mode == "prose")
                found.extend(Finding("name_lexicon", start, end) for start, end in spans)
        result = tuple(sorted(found, key=lambda f: (f.start, -f.end)))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    def first(self, text: str, mode: Mode = "prose") -> Finding | None:
        found = self.findings(text, mode)
        return found[0] if found else None


def redact(text: str, spans: Iterable[tuple[int, int]], mark: str = "*") -> str:
    """`text` with each span (merged where they overlap) replaced by `mark`."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, position = [], 0
    for start, end in merged:
        out.append(text[position:start])
        out.append(mark)
        position = end
    out.append(text[position:])
    return "".join(out)


__all__ = ["Finding", "Mode", "TextScanner", "redact"]
