"""Burned-in text: masking a cine by a region rule against a plain pydicom decode+encode floor,
and what OCR costs per frame.

    .venv/bin/python bench/pixels.py                  # or: make bench-pixels
    .venv/bin/python bench/pixels.py --repeats 9 --ocr-repeats 3 --json
    .venv/bin/python bench/pixels.py --skip-ocr       # the region-rule ratios only (seconds, not minutes)
    .venv/bin/python bench/pixels.py --cprofile rle   # where the agent spends its time on the RLE cine

What it does, all in one run on one machine (so the machine's speed cancels out of the ratios):

1. Builds the input with tests/burnedin.py: a 30-frame 640x480 RGB ultrasound cine (Ultrasound
   Multi-frame Image Storage) with three lines of text burned into every frame (the patient's
   name, an NHS number, a date of birth), once native (Explicit VR Little Endian) and once RLE
   Lossless. The agent decodes compressed input, masks it and writes it native, or, where
   masking.encode_lossless exists, RLE Lossless again; the table says which it wrote.
2. Floor: plain pydicom decode + encode of the same file bytes, in memory: `dcmread`,
   `pixel_array`, `PixelData = arr.tobytes()`, `save_as(enforce_file_format=True)`; for RLE,
   `dcmread`, `decompress()` (decoded and relabelled Explicit VR Little Endian), `save_as`, and
   the same with `compress(RLELossless)` (pylibjpeg-rle, the agent's encoder) before `save_as`.
   The ratio that counts is against the floor "in kind", the one that writes what the agent wrote.
3. Agent: `InstanceProcessor.process` (read, screen, de-identify the header, mask, encode, release
   gate) with nmip's recipes and one region rule for the fixture's device (ACME SONO 1) covering
   its text, OCR off. Every run must pass the gate with its pixels masked.
   Floor and agent alternate, one untimed run of each first; the median of each is reported, and
   the ratio floor/agent (the agent's throughput as a share of the floor's: >= 0.5 is the target).
   Then the agent's time per stage (wall clock, the stages' entry points wrapped), and the floor's.
   Each run's buffers are tens of MB: glibc gives buffers that big fresh pages from the kernel and
   returns them when freed, so every run pays its page faults (counted in the table), unless the
   heap already holds big buffers. `--reuse-pages` measures that other state (glibc mallopt), in
   which both sides run about twice as fast; the ratios move less.
4. OCR: the shipped nmip profile (region rules for known devices, none for ACME; OCR on), so OCR
   reads a sample of frames to find the text, the text is masked in every frame, and the release
   gate reads the sample of the output again. Reported: seconds per frame read (both passes), for
   frame samples (`pixels: ocr: frames:`, nmip's is 8) of 1, 4, 8 and 30 on the 30-frame cine
   (nmip's manifest copied with that one setting changed), and for cines of 1, 10 and 30 frames
   with nmip's sample. agent/deidentify/ocr.py caches what it read for identical frame images
   (a frame the gate reads unchanged is not read twice); the cache is emptied before every run so
   each run pays in full, and any hit within a run is counted.

A benchmark, not a test: it prints figures and exits 0 unless the agent refused the cine or did
not mask it with the region rule.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import gc
import io
import json
import os
import platform
import pstats
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# As in bench/deid.py: this folder must not be sys.path[0] (it would shadow the deid package).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
import yaml  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.pixels.encoders.base import get_encoder  # noqa: E402
from pydicom.uid import RLELossless  # noqa: E402

import agent.process as process_module  # noqa: E402
from agent.deidentify import Deidentifier, Profile, burnedin, load_profile, masking, ocr  # noqa: E402
from agent.deidentify.profile import resolve  # noqa: E402
from agent.keys import SiteKey  # noqa: E402
from agent.process import InstanceProcessor, Outcome  # noqa: E402
from bench.deid import busy_cpu_seconds, own_cpu_seconds, source_version  # noqa: E402
from tests.burnedin import Burned, burned_image  # noqa: E402

ROWS, COLUMNS, FRAMES = 480, 640, 30
SYNTAXES = ("native", "rle")  # tests/burnedin.py's "explicit" and "rle"
FIXTURE_SYNTAX = {"native": "explicit", "rle": "rle"}
OCR_PROFILE = "nmip"
TARGET_RATIO = 0.5
KEY = SiteKey(bytes(range(32)))
RULE_PAD = 2  # px around each burned-in line's box, as the tests' site rule
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
RLE_ENCODER = "pylibjpeg" if "pylibjpeg" in get_encoder(RLELossless).available_plugins else ""


# --- inputs and profiles --------------------------------------------------------------------


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_cines: dict[tuple[int, str], tuple[bytes, Burned]] = {}


def cine(frames: int, syntax: str = "native") -> tuple[bytes, Burned]:
    """The file's bytes and the fixture: `frames` RGB 640x480 frames, text in every one."""
    if (frames, syntax) not in _cines:
        burned = burned_image(photometric="RGB", frames=frames, rows=ROWS, columns=COLUMNS,
                              syntax=FIXTURE_SYNTAX[syntax])
        _cines[frames, syntax] = encode(burned.dataset), burned
    return _cines[frames, syntax]


def rule_profile(folder: Path, burned: Burned) -> Profile:
    """nmip's recipes, every storage class, one region rule for the fixture's device, no OCR."""
    ds = burned.dataset
    lines = ["FORMAT dicom", "", "%filter graylist", "", "LABEL Bench device # (bench/pixels.py)",
             f"  contains Manufacturer {ds.Manufacturer}", f"  + contains ManufacturerModelName {ds.ManufacturerModelName}"]
    lines += [f"  coordinates {max(0, x0 - RULE_PAD)},{max(0, y0 - RULE_PAD)},"
              f"{min(COLUMNS, x1 + RULE_PAD)},{min(ROWS, y1 + RULE_PAD)}" for x0, y0, x1, y1 in burned.boxes]
    (folder / "site.pixels").write_text("\n".join(lines) + "\n")
    recipes = "\n".join(f"  - {path}" for path in load_profile(OCR_PROFILE).recipes)
    manifest = folder / "bench-rule.yaml"
    manifest.write_text(f"name: bench-rule\nversion: '1'\nrecipes:\n{recipes}\nsop_classes: all-storage\n"
                        "pixels:\n  rules: [site.pixels]\n")  # no `ocr` key: OCR off
    profile = load_profile(str(manifest))
    assert not profile.pixels.ocr and profile.pixels.rules
    return profile


def ocr_profile(folder: Path, sample: int) -> Profile:
    """The shipped nmip profile, or a copy of its manifest reading `sample` frames per instance."""
    shipped = load_profile(OCR_PROFILE)
    if sample == shipped.pixels.ocr_frames:
        return shipped
    source = resolve(OCR_PROFILE)
    data = yaml.safe_load(source.read_text(encoding="utf-8"))

    def absolute(name: str) -> str:
        return str((source.parent / name).resolve())

    data["recipes"] = [absolute(r) for r in data["recipes"]]
    if isinstance(data.get("vocabulary"), list):
        data["vocabulary"] = [absolute(v) for v in data["vocabulary"]]
    pixels = data["pixels"]
    pixels["rules"] = [absolute(r) if isinstance(r, str) else {**r, "file": absolute(r["file"])}
                       for r in pixels.get("rules") or []]
    pixels["ocr"] = {**(pixels.get("ocr") if isinstance(pixels.get("ocr"), dict) else {}), "frames": sample}
    manifest = folder / f"{OCR_PROFILE}-frames{sample}.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    profile = load_profile(str(manifest))
    assert profile.pixels.ocr and profile.pixels.ocr_frames == sample
    return profile


# --- the two sides --------------------------------------------------------------------------


def floor(data: bytes, syntax: str, *, spent: dict[str, float] | None = None, rle_out: bool = False) -> None:
    """Plain pydicom: decode the pixels and write the file back, in memory; native, or with
    `rle_out` RLE Lossless again (the encoder the agent uses, pylibjpeg-rle, when installed)."""
    marks = [time.perf_counter()]
    ds = dcmread(io.BytesIO(data))
    marks.append(time.perf_counter())
    if syntax == "native":
        arr = ds.pixel_array
        marks.append(time.perf_counter())
        ds.PixelData = arr.tobytes()
    else:
        ds.decompress()  # pixel_array, PixelData = its bytes, Explicit VR Little Endian
        marks.append(time.perf_counter())
        if rle_out:
            ds.compress(RLELossless, encoding_plugin=RLE_ENCODER)
    marks.append(time.perf_counter())
    ds.save_as(io.BytesIO(), enforce_file_format=True)
    marks.append(time.perf_counter())
    if spent is not None:
        labels = ("read (dcmread)", "decode (pixel_array)" if syntax == "native" else "decode (decompress)",
                  "PixelData = arr.tobytes()" if syntax == "native" else "re-encode (compress, RLE Lossless)",
                  "encode (save_as)")
        for label, start, end in zip(labels, marks, marks[1:]):
            spent[label] = spent.get(label, 0.0) + end - start


def agent(processor: InstanceProcessor, data: bytes, *, masked: bool = True) -> Outcome:
    outcome = processor.process(data, "bench")
    if masked:
        if outcome.status != "passed" or outcome.encoded is None:
            detail = outcome.refusal.as_dict() if outcome.refusal else outcome.skip_reason
            raise SystemExit(f"bench: the cine was {outcome.status}, not passed: {detail}")
        report = outcome.result.pixels if outcome.result else None
        if report is None or not report.masked or not report.rules:
            raise SystemExit("bench: the region rule did not mask the cine")
    return outcome


def timed(fn: Callable[..., object], *args: Any, faults: list[int] | None = None, **kwargs: Any) -> float:
    """Seconds for one call (its result dropped inside the timing); `faults` gets its minor page faults."""
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    if faults is not None:
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return seconds


def reuse_pages() -> bool:
    """Keep freed memory in the process (glibc): big buffers no longer come fresh from the kernel,
    so a run takes no page faults, as in a worker whose heap already holds buffers that size."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def floors_for(syntax: str) -> dict[str, bool]:
    """The floors measured for an input: native output always; for compressed input also the
    same decode re-encoded as RLE Lossless, the floor in kind for an agent that writes RLE."""
    if syntax == "native":
        return {"native": False}
    return {"native": False, "rle": True}  # name: rle_out


def rounds(data: bytes, syntax: str, processor: InstanceProcessor, repeats: int) -> dict[str, list[float]]:
    """Floor(s) and agent alternately, after one untimed run of each."""
    floors = floors_for(syntax)
    for rle_out in floors.values():
        floor(data, syntax, rle_out=rle_out)
    agent(processor, data)
    names = [f"floor_{name}_out" for name in floors] + ["agent"]
    times: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, rle_out in floors.items():
            key = f"floor_{name}_out"
            times[key].append(timed(floor, data, syntax, faults=faults[key], rle_out=rle_out))
        times["agent"].append(timed(agent, processor, data, faults=faults["agent"]))
    times.update({f"{name}_faults": [float(x) for x in faults[name]] for name in names})
    return times


def written_as(encoded: bytes) -> str:
    """The output's transfer syntax, "native" or "rle" (or its name, for anything else)."""
    uid = dcmread(io.BytesIO(encoded), stop_before_pixels=True).file_meta.TransferSyntaxUID
    return "rle" if uid == RLELossless else "native" if not uid.is_compressed else str(uid.name)


def sop_instance_uid(encoded: bytes) -> str:
    return str(dcmread(io.BytesIO(encoded), stop_before_pixels=True).SOPInstanceUID)


# --- where the time goes --------------------------------------------------------------------


@contextmanager
def wrapped(targets: list[tuple[object, str, str]], spent: dict[str, float],
            calls: dict[str, int] | None = None) -> Iterator[None]:
    """Time every call of owner.name into spent[label] (and count it), restoring them after."""
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def wrap(original: Callable[..., Any], label: str) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
                if calls is not None:
                    calls[label] = calls.get(label, 0) + 1
        return timed_call

    for (owner, name, label), (_, _, original) in zip(targets, originals):
        setattr(owner, name, wrap(original, label))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


#: The agent's stages; a label indented by two spaces is part of the one above it.
AGENT_STAGES: list[tuple[object, str, str]] = [
    (process_module, "read_dataset", "read (dcmread of the source)"),
    (burnedin, "decide", "burned-in decision (region rules matched)"),
    (process_module, "screen", "screen"),
    (Deidentifier, "deidentify", "header de-identification"),
    (InstanceProcessor, "_clean_pixels", "pixels: decode if compressed, mask"),
    (masking, "decode", "  decode (decompress of RLE input)"),
    (masking, "cover", "  mask (masking.cover)"),
    (masking, "_view", "    pixel bytes to a writable array (copy)"),
    (masking, "_store", "    array back to Pixel Data bytes (copy)"),
    (masking, "encode_lossless", "  re-encode compressed input (RLE Lossless)"),
    (Dataset, "save_as", "encode (save_as to memory)"),
    (process_module, "verify_output", "release gate: verify_output (header read back, searched)"),
    (process_module, "verify_pixels", "release gate: verify_pixels (OCR; off here)"),
]
AGENT_STAGES = [(owner, name, label) for owner, name, label in AGENT_STAGES if hasattr(owner, name)]


def agent_stages(data: bytes, processor: InstanceProcessor, runs: int) -> dict[str, float]:
    """Milliseconds per instance in each stage, the mean of `runs` (after one untimed run)."""
    agent(processor, data)
    spent: dict[str, float] = {}
    total = 0.0
    with wrapped(AGENT_STAGES, spent):
        for _ in range(runs):
            total += timed(agent, processor, data)
    out = {label: spent.get(label, 0.0) / runs * 1000 for _, _, label in AGENT_STAGES}
    top = sum(v for k, v in out.items() if not k.startswith(" "))
    out["rest (process() outside these, the check of the outcome)"] = total / runs * 1000 - top
    out["total"] = total / runs * 1000
    return out


def floor_stages(data: bytes, syntax: str, runs: int, rle_out: bool) -> dict[str, float]:
    floor(data, syntax, rle_out=rle_out)
    spent: dict[str, float] = {}
    for _ in range(runs):
        gc.collect()
        floor(data, syntax, spent=spent, rle_out=rle_out)
    out = {label: v / runs * 1000 for label, v in spent.items()}
    if syntax != "native" and not rle_out:
        out.pop("re-encode (compress, RLE Lossless)", None)
    out["total"] = sum(out.values())
    return out


def profile_agent(data: bytes, processor: InstanceProcessor, runs: int, top: int = 15) -> str:
    agent(processor, data)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        agent(processor, data)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


# --- OCR ------------------------------------------------------------------------------------


OCR_TARGETS: list[tuple[object, str, str]] = [
    (burnedin.PixelCleaner, "read", "ocr_path"),  # both passes: decode copy, grey frames, read, judge words
    (ocr, "read", "read"),  # one frame: the cache, or PNG + tesseract twice (two binarisations)
    (ocr, "_tesseract", "tesseract"),  # a frame not in the cache
]


def ocr_run(processor: InstanceProcessor, data: bytes) -> dict[str, Any]:
    """One instance with OCR on, the OCR cache emptied first so every frame is read in full."""
    ocr._cache.clear()
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    with wrapped(OCR_TARGETS, spent, calls):
        gc.collect()
        start = time.perf_counter()
        outcome = processor.process(data, "bench")
        wall = time.perf_counter() - start
    report = outcome.result.pixels if outcome.result else None
    if report is None or report.rules or not report.ocr_frames:
        raise SystemExit(f"bench: profile {processor.profile.name} did not read the cine by OCR "
                         f"(rules {report.rules if report else None}): the OCR figures would mean nothing")
    read_frames = len(report.ocr_frames) + len(report.gate_frames)
    return {
        "status": outcome.status,
        "refusal": outcome.refusal.as_dict() if outcome.refusal else None,
        "seconds": wall,
        "mask_frames": len(report.ocr_frames),
        "gate_frames": len(report.gate_frames),
        "frames_read": read_frames,
        "tesseract_frames": calls.get("tesseract", 0),  # frames Tesseract read (two runs each)
        "cache_hits": calls.get("read", 0) - calls.get("tesseract", 0),
        "ocr_seconds": spent.get("ocr_path", 0.0),
        "tesseract_seconds": spent.get("tesseract", 0.0),
        "hits": len(report.ocr_hits),
        "masked": report.masked,
    }


def ocr_point(processor: InstanceProcessor, data: bytes, repeats: int, floor_s: float) -> dict[str, Any]:
    """The median run of `repeats` (by wall time), with the per-frame figures worked out."""
    runs = sorted((ocr_run(processor, data) for _ in range(repeats)), key=lambda r: r["seconds"])
    point = dict(runs[len(runs) // 2])
    point["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    n = max(point["frames_read"], 1)
    point["ocr_s_per_frame_read"] = point["ocr_seconds"] / n
    point["tesseract_s_per_frame_read"] = point["tesseract_seconds"] / max(point["tesseract_frames"], 1)
    point["floor_seconds"] = floor_s
    point["ratio"] = floor_s / point["seconds"]
    return point


def ocr_figures(folder: Path, samples: list[int], lengths: list[int], repeats: int, floor_repeats: int,
                log: Callable[..., None]) -> dict[str, Any]:
    shipped = load_profile(OCR_PROFILE).pixels.ocr_frames
    processors: dict[int, InstanceProcessor] = {}
    floors: dict[int, float] = {}
    points: dict[tuple[int, int], dict[str, Any]] = {}

    def measure(frames: int, sample: int) -> dict[str, Any]:
        if (frames, sample) not in points:
            if sample not in processors:
                processors[sample] = InstanceProcessor(ocr_profile(folder, sample), KEY)
            data, _ = cine(frames)
            if frames not in floors:
                floor(data, "native")
                floors[frames] = statistics.median(timed(floor, data, "native") for _ in range(floor_repeats))
            points[frames, sample] = ocr_point(processors[sample], data, repeats, floors[frames])
            p = points[frames, sample]
            log(f"OCR: {frames} frames, sample {sample}: {p['seconds']:.2f} s, {p['frames_read']} frames read, "
                f"{p['ocr_s_per_frame_read']:.3f} s each, {p['status']}")
        return points[frames, sample]

    # Tesseract's first start (its language data read from disk) out of the figures.
    warm, _ = cine(1)
    ocr.read(masking.grey_frames(dcmread(io.BytesIO(warm)), [0])[0], 60)
    by_sample = [{"frames": FRAMES, "sample": s, **measure(FRAMES, s)} for s in samples]
    by_length = [{"frames": f, "sample": shipped, **measure(f, shipped)} for f in lengths]
    rows = list(points.values())
    total_read = sum(r["frames_read"] for r in rows)
    return {
        "profile": OCR_PROFILE,
        "shipped_sample": shipped,
        "by_sample": by_sample,
        "by_length": by_length,
        "mean_ocr_s_per_frame_read": sum(r["ocr_seconds"] for r in rows) / max(total_read, 1),
        "outside_ocr_s": statistics.median(r["seconds"] - r["ocr_seconds"] for r in rows),
        "mean_tesseract_s_per_frame": sum(r["tesseract_seconds"] for r in rows)
        / max(sum(r["tesseract_frames"] for r in rows), 1),
    }


# --- machine --------------------------------------------------------------------------------


def tesseract_version() -> str:
    try:
        out = subprocess.run(["tesseract", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine() -> dict[str, Any]:
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import RLELossless

    import numpy

    return {
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "agent_version": source_version(),
        "cpus": os.cpu_count(),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), platform.processor() or "unknown")
        if Path("/proc/cpuinfo").exists() else platform.processor() or "unknown",
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "numpy": numpy.__version__,
        "rle_decoders": list(get_decoder(RLELossless).available_plugins),
        "tesseract": tesseract_version(),
    }


# --- main -----------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of whole numbers, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("whole numbers, 1 or more")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9,
                        help="alternating floor/agent runs per input, region rule (default 9)")
    parser.add_argument("--stage-runs", type=int, default=3,
                        help="agent and floor runs the per-stage breakdown is averaged over (default 3)")
    parser.add_argument("--ocr-repeats", type=int, default=1,
                        help="runs per OCR point, the median reported (default 1: each is seconds long)")
    parser.add_argument("--samples", type=int_list, default=[1, 4, 8, 30],
                        help=f"OCR frame samples on the {FRAMES}-frame cine (default 1,4,8,30)")
    parser.add_argument("--cine-frames", type=int_list, default=[1, 10, 30],
                        help="cine lengths read by OCR with nmip's sample (default 1,10,30)")
    parser.add_argument("--reuse-pages", action="store_true",
                        help="keep freed memory in the process (glibc mallopt), so big buffers are not faulted in "
                             "afresh on every run: the steady state of a worker whose heap already holds buffers "
                             "that size (default: the allocator's own behaviour, each run takes fresh pages)")
    parser.add_argument("--skip-ocr", action="store_true", help="leave out the OCR figures")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--cprofile", choices=SYNTAXES, metavar="{native,rle}",
                        help="instead of the benchmark, profile the agent (region rule) on that cine")
    args = parser.parse_args()
    if args.repeats < 1 or args.stage_runs < 1 or args.ocr_repeats < 1:
        parser.error("--repeats, --stage-runs and --ocr-repeats must be at least 1")

    def log(*parts: object) -> None:
        print(*parts, file=sys.stderr if args.json else sys.stdout, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nmip-bench-pixels-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        inputs = {syntax: cine(FRAMES, syntax) for syntax in SYNTAXES}
        log(f"generated the {FRAMES}-frame cine, " + ", ".join(
            f"{s} {len(d) / 1e6:.1f} MB" for s, (d, _) in inputs.items()) + f", in {time.perf_counter() - start:.1f} s")
        processor = InstanceProcessor(rule_profile(folder, inputs["native"][1]), KEY)
        if args.reuse_pages and not reuse_pages():
            raise SystemExit("bench: --reuse-pages needs glibc (mallopt)")

        if args.cprofile:
            print(profile_agent(inputs[args.cprofile][0], processor, args.stage_runs))
            return

        info = machine()
        load_before = os.getloadavg()
        busy_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        rule: dict[str, Any] = {}
        for syntax, (data, _) in inputs.items():
            times = rounds(data, syntax, processor, args.repeats)
            outcomes = [agent(processor, data) for _ in range(2)]
            encoded = [o.encoded for o in outcomes if o.encoded is not None]
            report = outcomes[0].result.pixels if outcomes[0].result else None
            assert len(encoded) == 2 and report is not None  # agent() made sure
            facts: dict[str, Any] = {
                "input_mb": round(len(data) / 1e6, 2),
                "output_mb": round(len(encoded[0]) / 1e6, 2),
                "written_as": written_as(encoded[0]),
                "rule": list(report.rules),
                # the keyed pseudonym is the same every time; a fresh UID would differ run to run
                "sop_instance_uid_stable": len({sop_instance_uid(e) for e in encoded}) == 1,
            }
            del outcomes, encoded, report  # nothing big stays alive from one measurement to the next (see --reuse-pages)
            a = statistics.median(times["agent"])
            floors: dict[str, dict[str, Any]] = {name: {"seconds": [round(x, 4) for x in times[f"floor_{name}_out"]],
                             "median_s": statistics.median(times[f"floor_{name}_out"]),
                             "page_faults": statistics.median(times[f"floor_{name}_out_faults"])}
                      for name in floors_for(syntax)}
            for entry in floors.values():
                entry["ratio"] = entry["median_s"] / a
            in_kind = facts["written_as"] if facts["written_as"] in floors else "native"
            rule[syntax] = {
                **facts,
                "agent_s": [round(x, 4) for x in times["agent"]],
                "agent_median_s": a,
                "agent_page_faults": statistics.median(times["agent_faults"]),
                "floors": floors,
                "floor_in_kind": in_kind,  # the floor that writes what the agent wrote
                "ratio": floors[in_kind]["ratio"],
                "meets_target": floors[in_kind]["ratio"] >= TARGET_RATIO,
                "agent_stages_ms": agent_stages(data, processor, args.stage_runs),
                "floor_stages_ms": {name: floor_stages(data, syntax, args.stage_runs, rle_out)
                                    for name, rle_out in floors_for(syntax).items()},
            }
            log(f"region rule, {syntax} (written {facts['written_as']}): agent {a * 1000:.0f} ms, " + ", ".join(
                f"floor {name} out {e['median_s'] * 1000:.0f} ms, ratio {e['ratio']:.2f}" for name, e in floors.items()))
        ocr_result: dict[str, Any] | None = None
        if args.skip_ocr:
            ocr_note = "left out (--skip-ocr)"
        elif not ocr.available():
            ocr_note = "left out: tesseract is not installed (Debian: tesseract-ocr tesseract-ocr-eng)"
        else:
            ocr_note = ""
            ocr_result = ocr_figures(folder, args.samples, args.cine_frames, args.ocr_repeats, args.repeats, log)
        load_after = os.getloadavg()
        wall = time.perf_counter() - wall_before
        others = max(0.0, (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before))

    figures = {
        **info,
        "cine": f"{FRAMES} frames, {COLUMNS}x{ROWS} RGB, Ultrasound Multi-frame Image Storage, text burned into every frame",
        "repeats": args.repeats,
        "memory": "reused pages (--reuse-pages)" if args.reuse_pages else "fresh pages (the allocator's default)",
        "stage_runs": args.stage_runs,
        "ocr_repeats": args.ocr_repeats,
        "target_ratio": TARGET_RATIO,
        "region_rule": rule,
        "ocr": ocr_result,
        "ocr_note": ocr_note,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "timed_wall_s": round(wall, 1),
        "other_processes_cpu_s": round(others, 1),
        "other_processes_cpu_share": round(others / (wall * (os.cpu_count() or 1)), 3),
        "script_runtime_s": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(figures, indent=2, default=float))
    else:
        print_table(figures)


def dominant(stages: dict[str, float]) -> tuple[str, float]:
    """The top-level stage that took longest, and its share of the total."""
    top = {k: v for k, v in stages.items() if not k.startswith(" ") and k != "total"}
    label = max(top, key=lambda k: top[k])
    return label, top[label] / stages["total"]


def ok(good: bool) -> str:
    return "yes" if good else "NO"


def print_table(f: dict[str, Any]) -> None:
    rule = f["region_rule"]
    print()
    print(f"command: {f['command']}")
    print(f"agent at {f['agent_version']}; {f['cpus']} CPUs ({f['cpu_model']}), Python {f['python']}, "
          f"pydicom {f['pydicom']}, numpy {f['numpy']}, RLE decoders {', '.join(f['rle_decoders'])}; {f['tesseract']}")
    print(f"input: {f['cine']}")
    print()
    print(f"region rule, OCR off: nmip's recipes + a rule for the device; median of {f['repeats']} alternating runs; "
          f"memory: {f['memory']}")
    print(f"{'input -> agent output':22} {'MB in':>5} {'MB out':>6} {'agent ms':>8} {'faults':>6}   {'floor':24} "
          f"{'floor ms':>8} {'faults':>6} {'floor/agent':>11}  target >= {f['target_ratio']}")
    for syntax, r in rule.items():
        for index, (name, e) in enumerate(r["floors"].items()):
            head = (f"{syntax + ' -> ' + r['written_as']:22} {r['input_mb']:>5.1f} {r['output_mb']:>6.1f} "
                    f"{r['agent_median_s'] * 1000:>8.0f} {r['agent_page_faults']:>6.0f}" if index == 0 else " " * 51)
            kind = f"{syntax} -> {name}" + (" (in kind)" if name == r["floor_in_kind"] and len(r["floors"]) > 1 else "")
            verdict = ok(e["ratio"] >= f["target_ratio"]) + ("" if name == r["floor_in_kind"] else " (not in kind)")
            print(f"{head}   {kind:24} {e['median_s'] * 1000:>8.0f} {e['page_faults']:>6.0f} {e['ratio']:>11.2f}  {verdict}")
    print("(floor: pydicom dcmread + pixel_array + PixelData = tobytes() + save_as; from RLE: dcmread + decompress() "
          "[+ compress(RLE Lossless, pylibjpeg-rle)] + save_as; all in memory. 'In kind': the floor that writes the "
          "transfer syntax the agent wrote; 'faults': minor page faults per run, the fresh memory it touched "
          "in 4 KiB pages)")
    for syntax, r in rule.items():
        if not r["sop_instance_uid_stable"]:
            print(f"WARNING: {syntax}: the output's SOP Instance UID differs from run to run (a fresh UID, not the keyed "
                  "pseudonym: pydicom's decompress/compress generate_instance_uid defaults to True)")
    print()
    print(f"where the time goes, ms per instance (mean of {f['stage_runs']} runs, wall clock, stages' entry points "
          "wrapped; indented: part of the line above):")
    labels = list(next(iter(rule.values()))["agent_stages_ms"])
    print(f"  {'agent':66} " + " ".join(f"{s + '->' + r['written_as']:>11}" for s, r in rule.items()))
    for label in labels:
        print(f"  {label:66} " + " ".join(f"{r['agent_stages_ms'][label]:>11.1f}" for r in rule.values()))
    columns = [(f"{s}->{name}", stages) for s, r in rule.items() for name, stages in r["floor_stages_ms"].items()]
    floor_labels: list[str] = []
    for _, stages in columns:
        floor_labels += [k for k in stages if k not in floor_labels and k != "total"]
    print(f"  {'floor':66} " + " ".join(f"{name:>11}" for name, _ in columns))
    for label in floor_labels + ["total"]:
        print(f"  {label:66} " + " ".join(f"{stages[label]:>11.1f}" if label in stages else f"{'-':>11}"
                                          for _, stages in columns))
    for syntax, r in rule.items():
        label, share = dominant(r["agent_stages_ms"])
        parts = [(k.strip(), v) for k, v in r["agent_stages_ms"].items() if k.startswith("  ") and not k.startswith("    ")]
        inner = max(parts, key=lambda kv: kv[1]) if parts and label.startswith("pixels") else None
        print(f"  {syntax}: the largest stage is {label.strip()} ({share:.0%} of the agent's time)"
              + (f", most of it {inner[0]} ({inner[1] / r['agent_stages_ms']['total']:.0%})" if inner else ""))

    o = f["ocr"]
    print()
    if o is None:
        print(f"OCR: {f['ocr_note']}")
    else:
        print(f"OCR on: profile {o['profile']} (no rule for the device: OCR reads a sample of frames, the text is masked "
              f"in every frame, the gate reads the output's sample again); native cine; median of {f['ocr_repeats']}")
        print("agent/deidentify/ocr.py caches what it read for identical frame images (a frame the gate reads unchanged "
              "is read once); emptied before every run, hits within a run counted")
        print(f"{'frames':>6} {'sample':>6} {'read (mask+gate)':>17} {'cache hits':>10} {'instance s':>10} "
              f"{'OCR s':>7} {'OCR s/frame read':>16} {'tess. s/frame':>13} {'floor/agent':>11}  outcome")
        for row in o["by_sample"] + [r for r in o["by_length"] if r["frames"] != FRAMES or r["sample"] not in
                                     [s["sample"] for s in o["by_sample"]]]:
            read = f"{row['frames_read']} ({row['mask_frames']}+{row['gate_frames']})"
            outcome = row["status"] + ("" if row["masked"] else ", not masked")
            if row["refusal"]:
                outcome += f": {row['refusal'].get('reason', '')}"
            print(f"{row['frames']:>6} {row['sample']:>6} {read:>17} {row['cache_hits']:>10} {row['seconds']:>10.2f} "
                  f"{row['ocr_seconds']:>7.2f} {row['ocr_s_per_frame_read']:>16.3f} "
                  f"{row['tesseract_s_per_frame_read']:>13.3f} {row['ratio']:>11.3f}  {outcome}")
        print("('OCR s': the two passes in all, decoding copies and word matching included; 'tess. s/frame': Tesseract "
              "alone, two runs a frame, one per binarisation)")
        for row in o["by_sample"] + o["by_length"]:
            if row["refusal"]:
                print(f"  {row['frames']} frames, sample {row['sample']}: {row['status']}: {row['refusal'].get('detail', '')}")
        print(f"instance s ~ {o['outside_ocr_s']:.2f} + {o['mean_ocr_s_per_frame_read']:.3f} x frames read, frames read "
              "= 2 x min(frames, sample): the cost follows the sample, not the cine's length "
              f"({o['outside_ocr_s']:.2f}: the instance outside OCR, median; then OCR s per frame read, mean of all points)")
    print()
    busy = f["loadavg_before"][0] >= 0.5 or f["other_processes_cpu_share"] >= 0.05
    print(f"load average (1 min) before: {f['loadavg_before'][0]:.2f}, after: {f['loadavg_after'][0]:.2f}; other "
          f"processes used {f['other_processes_cpu_s']:.1f} CPU-s ({f['other_processes_cpu_share']:.0%} of the machine) "
          f"during the {f['timed_wall_s']:.0f} s measured" + ("  (machine busy: figures noisier)" if busy else ""))
    print(f"script runtime {f['script_runtime_s']:.0f} s")
    print()
    summary = f"summary: region-rule masking of the {FRAMES}-frame {COLUMNS}x{ROWS} RGB cine, OCR off, at "
    summary += ", ".join(f"{r['ratio']:.2f} ({s} -> {r['written_as']})" for s, r in rule.items())
    summary += f" of a pydicom decode+encode writing the same (target >= {f['target_ratio']}: "
    summary += "/".join(ok(r["meets_target"]) for r in rule.values()) + ")"
    others = [f"{r['floors']['native']['ratio']:.2f} ({s} vs a native-writing floor)" for s, r in rule.items()
              if r["floor_in_kind"] != "native"]
    if others:
        summary += ", " + ", ".join(others)
    if o is not None:
        default = next((r for r in o["by_length"] if r["frames"] == FRAMES), None)
        summary += (f"; OCR {o['mean_ocr_s_per_frame_read']:.2f} s per frame read, a sampled frame read twice "
                    f"(mask + gate): {2 * o['mean_ocr_s_per_frame_read']:.2f} s per sampled frame")
        if default is not None:
            summary += (f", {default['seconds']:.1f} s for the {FRAMES}-frame cine at nmip's sample of "
                        f"{o['shipped_sample']} ({default['frames_read']} frames read; "
                        f"{default['seconds'] / rule['native']['agent_median_s']:.0f}x the region rule's time)")
    print(summary)


if __name__ == "__main__":
    main()
