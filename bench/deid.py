"""De-identification throughput against a plain pydicom read+write floor, and peak memory.

    .venv/bin/python bench/deid.py              # or: make bench
    .venv/bin/python bench/deid.py --files 100 --rounds 5 --json
    .venv/bin/python bench/deid.py --cprofile 50  # where the single-process agent spends its time
    .venv/bin/python bench/deid.py --stages 300   # the same, wall clock per stage (no profiler overhead)

What it does, all in one run on one machine (so the machine's speed cancels out of the ratios):

1. Generates N synthetic 512x512 16-bit CT slices of one study (3 series), writes a site key, and
   reads every file once (page cache). `--header scanner` (default): the header of a real GE CT
   slice (pydicom's CT_small) with fresh UIDs; `--header planted`: tests/synthetic.py's slices with
   identifiers planted in every place they can hide (the worst case for the walk).
2. Floor: `dcmread(path)` + `save_as(out, enforce_file_format=True)` of every file, one process.
3. Agent, one process: read the bytes, `InstanceProcessor.process` (de-identify + encode + release
   gate), write `outcome.encoded`. Every file must pass the gate.
4. Agent, batch: `agent.batch.anonymise(..., workers=2)`, the `nmip-agent anonymise` path (pool
   start-up and worker initialisation included).
   Floor and agent phases alternate for R rounds; the median of each is reported.
5. Peak RSS, each in a fresh subprocess running only that phase once: the single-process agent
   (VmHWM of /proc/self/status), and the batch (getrusage(RUSAGE_CHILDREN).ru_maxrss of the
   coordinating process after its pool is shut down: the largest worker; VmHWM: the coordinator).
   The floor is measured the same way for comparison. RSS counts pages shared with other processes
   (forked workers share the coordinator's imported modules), so it overstates the memory a worker adds.

Target (the issue): agent/floor >= 0.5, peak RSS < 150 MB. A benchmark, not a test: it prints figures
and exits 0 unless the agent refused a file or a phase failed.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Run as a script, this folder is sys.path[0], where "deid" would name this file and shadow the
# deid package the profile compiler imports; the repo root goes there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402

from agent.batch import anonymise  # noqa: E402
from agent.deidentify import load_profile  # noqa: E402
from agent.keys import init_key_file, load_key_file  # noqa: E402
from agent.process import InstanceProcessor  # noqa: E402

PROFILE = "nccid"
ROWS = COLUMNS = 512
N_SERIES = 3
BATCH_WORKERS = 2
TARGET_RATIO = 0.5
TARGET_RSS_MB = 150
MARKER = ".nmip-bench-workdir"


# --- inputs ---------------------------------------------------------------------------------


def generate(input_dir: Path, n_files: int, header: str = "scanner") -> None:
    """N 512x512 CT slices of one study, `N_SERIES` series.

    `planted`: tests/synthetic.py's worst case, identifiers planted in every place they can hide
    (eleven sequences, three deep). `scanner`: the header of a real GE HiSpeed CT/i slice
    (pydicom's CT_small.dcm: 180 private elements, one sequence) with fresh UIDs and 512x512
    pixels, closer to what a PACS sends.
    """
    if header == "scanner":
        generate_scanner(input_dir, n_files)
        return
    from tests import synthetic

    # The ramp and the overlay are pure functions of the size but built pixel by pixel in Python
    # (~0.1 s a slice at 512x512); compute them once. Every slice still carries its own copy on disk.
    for helper in ("_pixel_bytes", "_overlay_bytes"):
        if hasattr(synthetic, helper) and not hasattr(getattr(synthetic, helper), "cache_info"):
            setattr(synthetic, helper, functools.lru_cache(maxsize=None)(getattr(synthetic, helper)))

    per_series = -(-n_files // N_SERIES)
    study = synthetic.make_study(n_series=N_SERIES, n_per_series=per_series, rows=ROWS, columns=COLUMNS)
    for index, ds in enumerate(study[:n_files]):
        synthetic.write(ds, input_dir / f"series{ds.SeriesNumber}" / f"{index:05d}.dcm")


def generate_scanner(input_dir: Path, n_files: int) -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = dcmread(get_testdata_file("CT_small.dcm"))
    pixels = bytes(range(256)) * (ROWS * COLUMNS * 2 // 256)
    study_uid = generate_uid()
    series = [generate_uid() for _ in range(N_SERIES)]
    for index in range(n_files):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series[index % N_SERIES]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.PixelData = pixels
        path = input_dir / f"series{index % N_SERIES}" / f"{index:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)


def source_version() -> str:
    """The commit the agent was measured at, and whether agent/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent", "profiles"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in agent/ or profiles/" if dirty else "")


def input_files(input_dir: Path) -> list[Path]:
    return sorted(input_dir.rglob("*.dcm"))


def warm(files: list[Path]) -> int:
    return sum(len(path.read_bytes()) for path in files)


# --- phases ---------------------------------------------------------------------------------


def run_floor(files: list[Path], out_dir: Path) -> int:
    """Plain pydicom: read and write back every file, nothing else."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(files):
        ds = dcmread(path)
        ds.save_as(out_dir / f"{index:05d}.dcm", enforce_file_format=True)
    return len(files)


def run_agent(files: list[Path], out_dir: Path, key_file: Path) -> int:
    """The same work as the floor plus de-identification and the release gate, one process."""
    processor = InstanceProcessor(load_profile(PROFILE), load_key_file(key_file))
    made: set[Path] = set()
    for path in files:
        outcome = processor.process(path.read_bytes(), path)
        if outcome.status != "passed" or outcome.encoded is None:
            detail = outcome.refusal.as_dict() if outcome.refusal else outcome.skip_reason
            raise SystemExit(f"bench: {path.name} was {outcome.status}, not passed: {detail}")
        target = out_dir / outcome.relative_path
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        target.write_bytes(outcome.encoded)
    return len(files)


def run_batch(input_dir: Path, out_dir: Path, key_file: Path, quarantine_dir: Path, n_files: int) -> int:
    """`nmip-agent anonymise` with two workers."""
    summary = anonymise(input_dir, out_dir, profile=PROFILE, key_file=key_file,
                        quarantine_dir=quarantine_dir, crosswalk_dir=None, workers=BATCH_WORKERS)
    if summary.written != n_files:
        raise SystemExit(f"bench: batch wrote {summary.written} of {n_files} "
                         f"(quarantined {summary.quarantined}: {summary.reasons}, unreadable {summary.unreadable})")
    return summary.written


def timed(fn: Callable[..., object], out_dir: Path, *args: object) -> float:
    """Seconds for one phase; its output folder is emptied before (not timed)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    gc.collect()
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle since boot (all processes, all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the RSS subprocesses, pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# --- peak memory, each phase alone in a fresh interpreter ----------------------------------


def _children_max_rss_mb() -> float:
    """The largest peak RSS of the waited-for children (the pool's workers), in MB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: kilobytes


def _self_peak_rss_mb() -> float:
    """This process's peak RSS since exec, in MB.

    /proc/self/status VmHWM rather than getrusage(RUSAGE_SELF): Linux carries ru_maxrss across
    execve, and subprocess starts children with vfork, so ru_maxrss would report the parent's
    (the benchmark's) peak instead of this phase's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_main(phase: str, workdir: Path) -> None:
    """Child entry point: run one phase once and print its peak RSS figures as JSON."""
    files = input_files(workdir / "input")
    key_file = workdir / "site.key"
    out_dir = workdir / f"out-rss-{phase}"
    shutil.rmtree(out_dir, ignore_errors=True)
    report: dict[str, float | str] = {"phase": phase}
    if phase == "floor":
        run_floor(files, out_dir)
    elif phase == "agent":
        run_agent(files, out_dir, key_file)
    elif phase == "batch":
        run_batch(workdir / "input", out_dir, key_file, workdir / "quarantine-rss", len(files))
        report["worker_max_rss_mb"] = _children_max_rss_mb()
    else:
        raise SystemExit(f"unknown phase {phase}")
    report["self_max_rss_mb"] = _self_peak_rss_mb()
    shutil.rmtree(out_dir, ignore_errors=True)
    print(json.dumps(report))


def measure_rss(phase: str, workdir: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--workdir", str(workdir)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {phase} RSS subprocess failed:\n{proc.stdout}{proc.stderr}")
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


# --- cProfile -------------------------------------------------------------------------------


def profile_agent(files: list[Path], workdir: Path, key_file: Path, top: int) -> str:
    out_dir = workdir / "out-cprofile"
    shutil.rmtree(out_dir, ignore_errors=True)
    run_agent(files[:1], out_dir, key_file)  # imports and first-call caches out of the profile
    shutil.rmtree(out_dir, ignore_errors=True)
    profiler = cProfile.Profile()
    profiler.enable()
    run_agent(files, out_dir, key_file)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    shutil.rmtree(out_dir, ignore_errors=True)
    return text.getvalue()


def stage_times(files: list[Path], workdir: Path, key_file: Path) -> str:
    """Wall-clock milliseconds per instance in each stage of `InstanceProcessor.process`.

    cProfile's overhead falls hardest on pure-Python code (the `re` compiler, pydicom's element
    loop), so its shares overstate those; this wraps the stages' entry points instead.
    """
    import agent.process as process_module
    from agent.deidentify import Deidentifier

    from pydicom.dataset import Dataset

    spent: dict[str, float] = {}

    def wrap(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed_call)

    wrap(process_module, "read_dataset", "read (dcmread of the source)")
    wrap(process_module, "screen", "screen")
    wrap(Deidentifier, "deidentify", "deidentify (plan applied, in place)")
    wrap(Dataset, "save_as", "encode (save_as to memory)")
    wrap(process_module, "verify_output", "release gate (verify_output)")
    out_dir = workdir / "out-stages"
    run_agent(files[:2], out_dir, key_file)  # first-call costs out of the figures
    shutil.rmtree(out_dir, ignore_errors=True)
    spent.clear()
    start = time.perf_counter()
    run_agent(files, out_dir, key_file)
    total = time.perf_counter() - start
    shutil.rmtree(out_dir, ignore_errors=True)
    lines = [f"{len(files)} files, single-process agent, wall-clock ms per instance:"]
    for label, seconds in spent.items():
        lines.append(f"  {label:36} {seconds / len(files) * 1000:6.2f}")
    rest = total - sum(spent.values())
    lines.append(f"  {'rest (file read and write, loop)':36} {rest / len(files) * 1000:6.2f}")
    lines.append(f"  {'total':36} {total / len(files) * 1000:6.2f}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def prepare_workdir(arg: str | None, prefix: str = "nmip-bench-") -> tuple[Path, bool]:
    """The working folder and whether it is ours to delete afterwards."""
    if arg is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    workdir = Path(arg).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise SystemExit(f"bench: {workdir} is not empty and not a bench workdir; refusing to use it")
    for child in workdir.iterdir():  # a previous run's: start afresh
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    (workdir / MARKER).touch()
    return workdir, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=300, help="synthetic slices (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating floor/agent rounds (default 3)")
    parser.add_argument("--workdir", help="generate and write here (kept) instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--header", choices=("scanner", "planted"), default="scanner",
                        help="scanner (default): a real GE CT header (pydicom's CT_small, 180 private "
                             "elements) with fresh UIDs, as a PACS sends; planted: identifiers in every "
                             "place they can hide, eleven sequences three deep (the worst case)")
    parser.add_argument("--cprofile", type=int, metavar="N", default=0,
                        help="instead of the benchmark, profile the single-process agent over N files")
    parser.add_argument("--stages", type=int, metavar="N", default=0,
                        help="instead of the benchmark, time the agent's stages (wall clock) over N files")
    parser.add_argument("--phase", choices=("floor", "agent", "batch"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        phase_main(args.phase, Path(args.workdir))
        return
    if args.files < 1 or args.rounds < 1:
        parser.error("--files and --rounds must be at least 1")

    workdir, temporary = prepare_workdir(args.workdir)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    try:
        input_dir, key_file = workdir / "input", workdir / "site.key"
        start = time.perf_counter()
        generate(input_dir, args.files, args.header)
        init_key_file(key_file)
        files = input_files(input_dir)
        input_bytes = warm(files)
        log(f"generated {len(files)} files ({input_bytes / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s "
            f"under {workdir}")

        if args.cprofile:
            print(profile_agent(files[:args.cprofile], workdir, key_file, top=12))
            return
        if args.stages:
            print(stage_times(files[:args.stages], workdir, key_file))
            return

        version = source_version()
        load_before = os.getloadavg()
        busy_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        times: dict[str, list[float]] = {"floor": [], "agent": [], "batch": []}
        for round_no in range(1, args.rounds + 1):
            times["floor"].append(timed(run_floor, workdir / "out-floor", files, workdir / "out-floor"))
            times["agent"].append(timed(run_agent, workdir / "out-agent", files, workdir / "out-agent", key_file))
            times["batch"].append(timed(run_batch, workdir / "out-batch", input_dir, workdir / "out-batch", key_file,
                                        workdir / "quarantine", len(files)))
            log(f"round {round_no}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
        load_after = os.getloadavg()
        wall = time.perf_counter() - wall_before
        others = max(0.0, (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before))
        for name in ("out-floor", "out-agent", "out-batch"):
            shutil.rmtree(workdir / name, ignore_errors=True)

        rss = {phase: measure_rss(phase, workdir) for phase in ("floor", "agent", "batch")}
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)

    n = len(files)
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    figures = {
        "header": args.header,
        "agent_version": version,
        "files": n,
        "file_mb": round(input_bytes / n / 1e6, 3),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "timed_wall_s": round(wall, 1),
        "other_processes_cpu_s": round(others, 1),
        "other_processes_cpu_share": round(others / (wall * (os.cpu_count() or 1)), 3),
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "floor_files_per_s": round(rate["floor"], 1),
        "agent_files_per_s": round(rate["agent"], 1),
        "agent_ratio": round(rate["agent"] / rate["floor"], 3),
        "batch_workers": BATCH_WORKERS,
        "batch_files_per_s": round(rate["batch"], 1),
        "batch_ratio": round(rate["batch"] / rate["floor"], 3),
        "target_ratio": TARGET_RATIO,
        "peak_rss_mb": {
            "floor": round(rss["floor"]["self_max_rss_mb"], 1),
            "agent_single_process": round(rss["agent"]["self_max_rss_mb"], 1),
            "batch_worker_max": round(rss["batch"]["worker_max_rss_mb"], 1),
            "batch_coordinator": round(rss["batch"]["self_max_rss_mb"], 1),
        },
        "target_rss_mb": TARGET_RSS_MB,
    }
    figures["meets_ratio_target"] = figures["agent_ratio"] >= TARGET_RATIO
    figures["meets_rss_target"] = max(figures["peak_rss_mb"]["agent_single_process"],
                                      figures["peak_rss_mb"]["batch_worker_max"]) < TARGET_RSS_MB
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_table(figures)


def print_table(f: dict[str, Any]) -> None:
    rss = f["peak_rss_mb"]

    def ok(good: bool) -> str:
        return "yes" if good else "NO"

    print()
    print(f"{f['files']} synthetic 512x512 CT slices, {f['header']} header ({f['file_mb']:.2f} MB each), profile {PROFILE}, "
          f"median of {f['rounds']} alternating rounds, {f['cpus']} CPUs")
    print(f"agent at {f['agent_version']}")
    print(f"{'':34} {'files/s':>9} {'ratio':>7}")
    print(f"{'floor (pydicom read+write)':34} {f['floor_files_per_s']:>9.1f} {1:>7.2f}")
    print(f"{'agent, 1 process':34} {f['agent_files_per_s']:>9.1f} {f['agent_ratio']:>7.2f}")
    print(f"{'agent, batch (%d workers)' % f['batch_workers']:34} {f['batch_files_per_s']:>9.1f} "
          f"{f['batch_ratio']:>7.2f}")
    print(f"target: agent 1 process >= {f['target_ratio']} of the floor: {ok(f['meets_ratio_target'])}")
    print()
    print("peak RSS (MB), each phase alone in a fresh process:")
    print(f"  floor, 1 process                     {rss['floor']:7.1f}")
    print(f"  agent, 1 process                     {rss['agent_single_process']:7.1f}")
    print(f"  agent batch, largest worker          {rss['batch_worker_max']:7.1f}")
    print(f"  agent batch, coordinating process    {rss['batch_coordinator']:7.1f}")
    print(f"target: < {f['target_rss_mb']} MB per process: {ok(f['meets_rss_target'])}")
    busy = f["loadavg_before"][0] >= 0.5 or f["other_processes_cpu_share"] >= 0.05
    print(f"load average (1 min) before the rounds: {f['loadavg_before'][0]:.2f}; other processes used "
          f"{f['other_processes_cpu_s']:.1f} CPU-s ({f['other_processes_cpu_share']:.0%} of the machine) during the "
          f"{f['timed_wall_s']:.0f} s of timed rounds" + ("  (machine busy: figures noisier)" if busy else ""))


if __name__ == "__main__":
    main()
