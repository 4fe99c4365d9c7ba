"""Fuzzing the engine with damaged files: no traceback, no warning, no planted value released.

Every variant of tests/fuzz/mutate.py (about 2,600: planted synthetic slices in nine character
sets and a dozen public samples, in every transfer syntax, damaged in every way listed there) goes
through `InstanceProcessor.process` under nccid, and a third of them (all of those whose SOP class
only the Basic Profile accepts) under basic too. For each run:

  * `process` returns an Outcome or raises UnreadableInput: any other exception is a failure;
  * no warning comes out of it (pydicom's warnings can quote values, and production logs them);
  * it finishes within a few seconds;
  * when it passed, none of the source's planted values (tests/synthetic.planted_values, the
    script text planted by mutate.py, and every original instance UID) that survived the damage
    intact is in the output: not in its bytes up to the pixel data (deflated ones inflated),
    searched in UTF-8, Latin-1 and the declared character set, any case, and not in any value of
    the output read back, at any depth. nccid keeps Station Name and Device Serial Number on
    purpose (Retain Device Identity); the Basic Profile keeps nothing.

The variants run in chunks (one test each); a chunk's failures come in one message, by variant id
and label, never with a value. Reproduce one with:

    from tests.fuzz.mutate import build
    variant = build("CT_small.evrbe-trunc-0003")   # variant.data, variant.notes
"""

from __future__ import annotations

import functools
import io
import signal
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from agent.errors import UnreadableInput
from agent.keys import SiteKey
from agent.process import InstanceProcessor, Outcome
from agent.quarantine import EXCLUSIONS
from tests.conftest import REPO, shipped
from tests.fuzz.mutate import RETAINED_BY_NCCID, Variant, build, encoded_forms, python_codecs, scan, variant_ids

CHUNKS = 24
SLOW_S = 3.0  # a variant slower than this is a failure
DEADLINE_S = 15  # and one this slow is stopped
# Sources whose SOP class nccid refuses before de-identifying: run under basic every time.
BASIC_ALWAYS = ("rtplan.", "rtstruct.", "rtdose.", "liver_1frame.")
PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
AGENT_DIR = str(REPO / "agent") + "/"


@functools.lru_cache(maxsize=1)
def all_ids() -> tuple[str, ...]:
    return tuple(variant_ids())


def chunk_ids(chunk: int) -> list[str]:
    return list(all_ids()[chunk::CHUNKS])


def runs_basic(variant_id: str) -> bool:
    return variant_id.startswith(BASIC_ALWAYS) or sum(variant_id.encode()) % 3 == 0


# --- running one variant -----------------------------------------------------------------------


class _Deadline(BaseException):
    """Raised by the alarm: a BaseException, so the engine's `except Exception` cannot swallow it."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Stop the block after `seconds` (SIGALRM: main thread only; elsewhere SLOW_S still reports it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise _Deadline

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _where(exc: BaseException) -> str:
    """The innermost agent/ line of the traceback, and the innermost line overall."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(AGENT_DIR)]
    inner = frames[-1] if frames else None
    text = f"{_short(ours[-1].filename)}:{ours[-1].lineno}" if ours else "(no agent/ frame)"
    if inner is not None and (not ours or inner is not ours[-1]):
        text += f" (innermost {_short(inner.filename)}:{inner.lineno})"
    return text


def _short(filename: str) -> str:
    """agent/verify.py, pydicom/valuerep.py: a path without the machine's prefix."""
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1]
    if filename.startswith(str(REPO) + "/"):
        return filename[len(str(REPO)) + 1 :]
    return filename


@dataclass
class Run:
    """What one variant did under one profile."""

    variant: Variant
    profile: str
    status: str = ""  # passed, excluded, quarantined, skipped, unreadable, exception, timeout
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # failures, no values
    warnings: list[str] = field(default_factory=list)  # category and location of each warning
    checked: int = 0  # planted values that survived the damage (so were searched for)
    destroyed: int = 0  # planted values the damage destroyed (their exact form not required)
    oracle_notes: list[str] = field(default_factory=list)  # read-back warnings of passed outputs (not failures)
    refusal: str = ""


def run_variant(variant: Variant, processor: InstanceProcessor, profile: str) -> Run:
    run = Run(variant, profile)
    outcome: Outcome | None = None
    start = time.perf_counter()
    caught: list[str] = []

    def record(message: Any, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        ours = [f for f in traceback.extract_stack() if f.filename.startswith(AGENT_DIR)]
        via = f" via {_short(ours[-1].filename)}:{ours[-1].lineno}" if ours else ""
        caught.append(f"{category.__name__} from {_short(filename)}:{lineno}{via}")

    with warnings.catch_warnings():  # restores showwarning on the way out
        warnings.simplefilter("always")
        warnings.showwarning = record
        try:
            with deadline(DEADLINE_S):
                outcome = processor.process(variant.data, "fuzz")
        except UnreadableInput:
            run.status = "unreadable"
        except _Deadline:
            run.status = "timeout"
            run.problems.append(f"did not finish within {DEADLINE_S}s")
        except Exception as exc:  # the failure this suite looks for
            run.status = "exception"
            run.problems.append(f"{type(exc).__name__} raised at {_where(exc)}")
    run.seconds = time.perf_counter() - start
    for label in caught:
        if label not in run.warnings:
            run.warnings.append(label)
            run.problems.append(f"warning escaped: {label}")
    if run.seconds > SLOW_S and run.status != "timeout":
        run.problems.append(f"took {run.seconds:.1f}s")
    if outcome is not None:
        if not isinstance(outcome, Outcome) or outcome.status not in ("passed", "excluded", "quarantined", "skipped"):
            run.problems.append(f"returned {type(outcome).__name__} with status {getattr(outcome, 'status', '?')}")
            return run
        run.status = outcome.status
        run.refusal = outcome.refusal.reason.value if outcome.refusal is not None else ""
        if outcome.status == "excluded" and (outcome.encoded is not None or outcome.refusal is None
                                             or outcome.refusal.reason not in EXCLUSIONS):
            run.problems.append("excluded with output bytes or without an exclusion reason")
        if outcome.status == "passed":
            if outcome.encoded is None:
                run.problems.append("passed without encoded bytes")
            else:
                check_output(run, outcome.encoded)
    return run


# --- the leak oracle ---------------------------------------------------------------------------


def _survivors(variant: Variant, profile: str) -> tuple[dict[str, str], int]:
    """The planted values still whole in the damaged input (any case-exact encoded form)."""
    retained = RETAINED_BY_NCCID if profile == "nccid" else frozenset()
    kept: dict[str, str] = {}
    destroyed = 0
    for label, value in variant.source.planted.items():
        if label in retained:
            continue
        if any(form in variant.plain for form in encoded_forms(value, variant.source.charset)):
            kept[label] = value
        else:
            destroyed += 1
    return kept, destroyed


def _plain_output(encoded: bytes, out: Dataset | None) -> bytes:
    """The output with its deflated dataset inflated."""
    meta = getattr(out, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian or encoded[128:132] != b"DICM":
        return encoded
    meta_end = 144 + int.from_bytes(encoded[140:144], "little")
    try:
        return encoded[:meta_end] + zlib.decompressobj(-zlib.MAX_WBITS).decompress(encoded[meta_end:])
    except zlib.error:
        return encoded


def _header(plain: bytes) -> bytes:
    """Everything before the top-level pixel data (its last tag: cutting later is only stricter)."""
    cut = max(plain.rfind(tag) for tag in PIXEL_TAGS)
    return plain[:cut] if cut > 0 else plain


def _charset_of(ds: Dataset | None) -> tuple[str, ...]:
    if ds is None:
        return ()
    try:
        value = ds.get("SpecificCharacterSet")
    except Exception:
        return ()
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return tuple(str(v) for v in value)
    return (str(value),)


def _texts(ds: Dataset, codecs: list[str], path: str = "") -> Iterator[tuple[str, str]]:
    """(attribute path, decoded text) of every element at any depth, file meta included."""
    groups = [ds.file_meta, ds] if not path and getattr(ds, "file_meta", None) is not None else [ds]
    for group in groups:
        for tag in list(group.keys()):
            where = f"{path}({tag >> 16:04X},{tag & 0xFFFF:04X})"
            raw = group.get_item(tag, keep_deferred=True)
            raw_bytes = raw.value if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) else None
            try:
                elem = group[tag]
                value, vr = elem.value, elem.VR
            except Exception:  # a value pydicom cannot convert: search its raw bytes
                value, vr = raw_bytes or b"", "UN"
            if raw_bytes is not None and vr != "SQ":
                # The bytes as they were read, whatever the VR makes of them (numbers, say).
                for codec in codecs:
                    yield where, raw_bytes.decode(codec, "replace")
            if vr == "SQ" and value is not None and not isinstance(value, (bytes, str)):
                for index, item in enumerate(value):
                    yield from _texts(item, codecs, f"{where}[{index}]>")
                continue
            if isinstance(value, (bytes, bytearray)):
                for codec in codecs:
                    yield where, bytes(value).decode(codec, "replace")
                continue
            if value is None:
                continue
            if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                yield where, "\\".join(str(v) for v in value)
            else:
                yield where, str(value)


def _holds(text: str, value: str, uid: bool) -> bool:
    """`value` in `text`, any case; a UID only as a whole UID, not as the prefix of a longer one."""
    if not uid:
        return value.casefold() in text.casefold()
    start = text.find(value)
    while start >= 0:
        end = start + len(value)
        before = text[start - 1 : start]
        after = text[end : end + 2]
        longer = after[:1].isdigit() or (after[:1] == "." and after[1:2].isdigit())
        if not (before.isdigit() or before == ".") and not longer:
            return True
        start = text.find(value, start + 1)
    return False


def _raw_places(plain: bytes, out: Dataset | None, offsets: list[int]) -> list[str]:
    """The attributes whose encoded value holds these offsets of the output (pydicom may have
    converted them to numbers, or not parsed them at all), by our own scanner of the output."""
    syntax = str(out.file_meta.get("TransferSyntaxUID", "")) if out is not None and hasattr(out, "file_meta") else ""
    start = 144 + int.from_bytes(plain[140:144], "little") if plain[128:132] == b"DICM" else 0
    layout = scan(plain[start:], syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
    places = []
    for offset in offsets:
        inside = [i for i, el in enumerate(layout)
                  if el.kind == "element" and el.end >= 0 and el.start <= offset - start < el.end]
        if not inside:
            places.append(f"output bytes at {offset} (in no element)")
            continue
        index = min(inside, key=lambda i: layout[i].end - layout[i].start)
        path = ""
        while index >= 0:
            el = layout[index]
            if el.kind == "item":
                siblings = [i for i, o in enumerate(layout) if o.kind == "item" and o.parent == el.parent]
                path = f"[{siblings.index(index)}]>" + path
            else:
                path = f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})" + path
            index = el.parent
        places.append(f"{path} (raw bytes)")
    return places


def check_output(run: Run, encoded: bytes) -> None:
    variant = run.variant
    survivors, run.destroyed = _survivors(variant, run.profile)
    run.checked = len(survivors)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out: Dataset | None = dcmread(io.BytesIO(encoded))
        except Exception as exc:
            out = None
            run.problems.append(f"passed output does not read back ({type(exc).__name__})")
        plain = _plain_output(encoded, out)
        header = _header(plain)
        charset = tuple(dict.fromkeys(variant.source.charset + _charset_of(out)))
        codecs = list(dict.fromkeys(["utf-8", "latin-1", *python_codecs(charset)]))
        decoded_header = {codec: header.decode(codec, "replace").casefold() for codec in codecs}
        lowered = header.lower()
        try:
            texts = list(_texts(out, codecs)) if out is not None else []
        except Exception as exc:  # the oracle's own walk failed: say so, and still search the bytes
            texts = []
            run.problems.append(f"oracle could not walk the passed output ({type(exc).__name__})")
    run.oracle_notes += sorted({f"{w.category.__name__} from {_short(w.filename)}:{w.lineno}" for w in caught})
    for label, value in survivors.items():
        uid = label.startswith("uid.")
        places = sorted({where for where, text in texts if _holds(text, value, uid)})
        if uid:
            offsets = [m for m in _uid_offsets(header, value)]
            in_text = bool(offsets)
        else:
            forms = encoded_forms(value, variant.source.charset) | encoded_forms(value, charset)
            offsets = sorted({i for form in forms for i in _find_all(lowered, form.lower())})
            in_text = any(value.casefold() in text for text in decoded_header.values())
        if not places and (offsets or in_text):
            places = sorted(set(_raw_places(plain, out, offsets[:3]))) if offsets else ["the output bytes"]
        if places:
            run.problems.append(f"leak {label} in {', '.join(places[:4])}")


def _find_all(haystack: bytes, needle: bytes) -> list[int]:
    found: list[int] = []
    start = haystack.find(needle)
    while start >= 0 and len(found) < 10:
        found.append(start)
        start = haystack.find(needle, start + 1)
    return found


def _uid_offsets(header: bytes, uid: str) -> list[int]:
    text = header.decode("latin-1")
    return [i for i in _find_all(header, uid.encode("ascii")) if _holds(text[max(0, i - 1) : i + len(uid) + 2],
                                                                        uid, True)]


# --- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processors(site_key: SiteKey) -> dict[str, InstanceProcessor]:
    return {name: InstanceProcessor(shipped(name), site_key) for name in ("nccid", "basic")}


def runs_of(variant_id: str, processors: dict[str, InstanceProcessor]) -> list[Run]:
    variant = build(variant_id)
    profiles = ["nccid", "basic"] if runs_basic(variant_id) else ["nccid"]
    return [run_variant(variant, processors[p], p) for p in profiles]


def test_enough_variants_of_every_kind() -> None:
    """At least 1,000 variants, from synthetic slices in every character set and the samples."""
    ids = all_ids()
    assert len(ids) >= 1000
    assert len(set(ids)) == len(ids)
    sources = {vid.split(".", 1)[0] for vid in ids}
    assert {"syn-ascii", "syn-ir100", "syn-ir192", "syn-ir87", "syn-ir144", "syn-ir126", "syn-ir127", "syn-ir138",
            "syn-ir166"} <= sources
    assert len([s for s in sources if not s.startswith("syn-")]) >= 8
    kinds = {vid.rsplit("-", 2)[1] for vid in ids}
    assert {"trunc", "flip", "multiflip", "inflate", "ffffe", "undelim", "dup", "append", "reorder", "tslie"} <= kinds
    syntaxes = {vid.split(".", 1)[1].rsplit("-", 2)[0] for vid in ids}
    assert {"ivrle", "evrle", "evrbe", "defl"} <= syntaxes


def test_variants_are_reproducible() -> None:
    """The same id gives the same bytes."""
    for vid in all_ids()[:: len(all_ids()) // 25]:
        assert build(vid).data == build(vid).data


def test_clean_encodings_carry_every_planted_value() -> None:
    """The generator's own check: undamaged, every planted value is in the file, so it is searched for."""
    missing = []
    for vid in all_ids():
        if "-clean-" not in vid:
            continue
        variant = build(vid)
        for label, value in variant.source.planted.items():
            if not any(form in variant.plain for form in encoded_forms(value, variant.source.charset)):
                missing.append(f"{vid}: {label}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_damaged_input_never_crashes_warns_or_leaks(chunk: int, processors: dict[str, InstanceProcessor]) -> None:
    """Every variant of this chunk: UnreadableInput or an Outcome, no warning, in time, nothing planted released."""
    failures = []
    for vid in chunk_ids(chunk):
        for run in runs_of(vid, processors):
            failures += [f"{vid} [{run.profile}] {problem}" for problem in run.problems]
    assert not failures, f"{len(failures)} failure(s) in chunk {chunk}:\n" + "\n".join(failures)
