"""Receiving over DICOM: the agent against DCMTK's storescp in the same run, end to end, peak RSS.

    .venv/bin/python bench/ingest.py                # about 2 minutes on 2 cores
    .venv/bin/python bench/ingest.py --json         # figures as JSON on stdout, progress on stderr
    .venv/bin/python bench/ingest.py --files 100 --rounds 5 --skip-memory
    .venv/bin/python bench/ingest.py --phases C     # only phase C, end to end
    .venv/bin/python bench/ingest.py --stages       # where the agent's C-STORE handler spends its time

What it does, all in one run on one machine (so the machine's speed cancels out of the ratios):

1. Generates N synthetic 512x512 16-bit CT slices of one study (bench/deid.py's default `scanner`
   header: pydicom's CT_small with fresh UIDs, explicit VR little endian) and reads them once
   (page cache). DCMTK's `storescu` (/usr/bin, not pynetdicom's script of the same name in the
   venv) sends them, with TCP_NODELAY=1 and `-xe` (every uncompressed syntax, the files' own
   first; every storage SOP class, as a PACS proposes). Before every timed send the page cache
   is flushed to disk (`sync`, not timed), so one receiver's writes are not paid by the next.
2. Phase A, one association: storescu sends all N files to (a) DCMTK's storescp, which writes
   each instance to a file (`-od DIR +xa -dhl -fe .dcm`, one process, no fsync) and (b) the agent
   (`nmip-agent serve`, a fresh folder, state and spool every round, quiet period one day so the
   study never becomes stable, 2 workers as configured by default: the pipeline de-identifies
   instances into staging while the study arrives, and that competes with receiving for the
   CPU, as in a deployment). Wall time of the storescu run; ratio = agent files/s / storescp
   files/s.
3. Phase B, four associations at once: the files split in four, four storescu processes started
   together, time until the last one exits. storescp runs with `--fork` (a process per
   association) so that DCMTK, too, can use both cores.
   A and B alternate storescp and agent for R rounds; the median of each is reported, and the
   agent's CPU seconds per round / wall time, how many cores it kept busy: the daemon and its
   receiver processes (utime + stime, all threads), and apart its de-identification workers;
   and how many instances were staged by the end of the send.
4. Phase C, end to end: the agent with quiet_period_s 1 and 2 workers, warmed by a 4-instance
   study (so the worker pool is started), receives the N-file study on one association. From
   the start of storescu to the study's `study_queued` audit record (every instance is in the
   outbox by then), minus the quiet period. The state database is read directly (read-only) for
   the breakdown: receive (to the last `instance_received`), the wait for the pipeline to see the
   study quiet (minus the quiet period: the polling lag), de-identification to `study_queued`;
   and, from the daemon's `study_deidentified` log event, how many instances had been
   de-identified into staging before the study was stable.
5. Phase D, memory (`--skip-memory` to leave it out): a 2,000-instance study of 256x256 slices
   (smaller than the 512x512 of the other phases, to keep the run short; the agent holds one
   instance per association in memory, so RSS does not depend on the slice size much) sent on
   one association; VmRSS of the daemon, and the sum over the daemon and its descendants, are
   sampled every 50 ms from /proc, and the daemon's VmHWM read before it is stopped. The receive
   rate of the first and last 10% of the instances (from the audit timestamps) shows whether
   receiving slows as the spool and the database grow.

`--phases` picks phases (letters, default ABCD). Targets (the issue): A >= 0.15, B >= 0.3,
C < 3 s, D peak RSS < 300 MB. A benchmark, not a test:
it prints figures and exits 0 unless a transfer failed. Every process it starts (storescp, the
daemons and their workers, storescu) is stopped on the way out, on failure too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# As in bench/deid.py: this folder must not be sys.path[0] (it would shadow the deid package).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.deid import (  # noqa: E402
    prepare_workdir,
    busy_cpu_seconds,
    generate,
    input_files,
    own_cpu_seconds,
    source_version,
    warm,
)
from tests.peers.dcmtk import STORESCU, dcmtk_available, dcmtk_env, storescp  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402
from tests.scenarios.daemon import Daemon  # noqa: E402

ASSOCIATIONS = 4
E2E_QUIET_S = 1
E2E_WORKERS = 2
RECEIVE_WORKERS = 2  # phases A and B: pipeline.workers' default, so early de-identification runs
WORKER_NAME = "nmip-deidentify"  # the comm of the pipeline's worker processes
WARMUP_FILES = 4
MEMORY_FILES = 2000
MEMORY_ROWS = 256
RSS_INTERVAL_S = 0.05
TARGET_ONE = 0.15
TARGET_FOUR = 0.3
TARGET_E2E_S = 3.0
TARGET_RSS_MB = 300


# --- processes: everything started here is stopped on the way out --------------------------


class Processes:
    """Every storescu and daemon this run started, and the daemons' descendants, to stop at exit."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.daemons: list[Daemon] = []
        self.descendants: set[tuple[int, int]] = set()  # (pid, start time): safe against pid reuse
        # CPU seconds of daemon descendants that no process of ours reaped (the pool's workers are
        # children of multiprocessing's forkserver, which the daemon may leave unreaped), so that
        # the "other processes" figure does not count them; os.times() already counts the rest.
        self.unreaped_cpu_s = 0.0

    def remember_descendants(self, pid: int) -> None:
        for child in descendants(pid):
            start = start_time(child)
            if start is not None:
                self.descendants.add((child, start))

    def stop_daemon(self, daemon: Daemon) -> None:
        if daemon.process is not None:
            pid = daemon.process.pid
            self.remember_descendants(pid)
            tree = sum(cpu_seconds(p, children=True) for p in [pid, *descendants(pid)])
            before = reaped_children_cpu_s()
            try:
                daemon.stop()
                self.unreaped_cpu_s += max(0.0, tree - (reaped_children_cpu_s() - before))
            except Exception:
                if daemon.process is not None:
                    daemon.kill()
        if daemon in self.daemons:
            self.daemons.remove(daemon)
        self.reap_descendants()

    def reap_descendants(self) -> None:
        """SIGKILL any descendant of a daemon that outlived it (the pool's workers, its forkserver)."""
        for pid, start in list(self.descendants):
            if start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.descendants.discard((pid, start))

    def close(self) -> None:
        for proc in self.popens:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.popens.clear()
        for daemon in list(self.daemons):
            self.stop_daemon(daemon)
        self.reap_descendants()


PROCS = Processes()


def start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (scanning /proc for parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a live process (all its threads), plus those of the children it reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def is_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == WORKER_NAME
    except OSError:
        return False


def agent_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of (the daemon and its receiver processes, its de-identification workers)."""
    tree = descendants(pid)
    workers = [p for p in tree if is_worker(p)]
    return (sum(cpu_seconds(p) for p in [pid, *tree] if p not in workers),
            sum(cpu_seconds(p) for p in workers))


def reaped_children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# --- inputs ---------------------------------------------------------------------------------


def generate_small(input_dir: Path, n_files: int, rows: int) -> None:
    """bench/deid.py's scanner slices (one study, 3 series), rows x rows pixels."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = dcmread(str(get_testdata_file("CT_small.dcm")))
    pixels = bytes(range(256)) * (rows * rows * 2 // 256)
    study_uid = generate_uid()
    series = [generate_uid() for _ in range(3)]
    for index in range(n_files):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()  # type: ignore[assignment]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series[index % 3]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.Rows = ds.Columns = rows
        ds.PixelData = pixels
        path = input_dir / f"series{index % 3}" / f"{index:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)


# --- sending --------------------------------------------------------------------------------


def send(port: int, called_ae: str, files: list[Path], associations: int = 1) -> float:
    """Send `files` with `associations` storescu processes started together; wall seconds until
    the last exits. storescu halts at the first failed store (its default) and exits non-zero."""
    groups = [files[i::associations] for i in range(associations)]
    args = [STORESCU, "-aet", "STORESCU", "-aec", called_ae, "-xe", "-ta", "30", "127.0.0.1", str(port)]
    env = dcmtk_env()
    procs: list[subprocess.Popen[bytes]] = []
    start = time.perf_counter()
    for group in groups:
        proc = subprocess.Popen(args + [str(p) for p in group], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        PROCS.popens.append(proc)
        procs.append(proc)
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    elapsed = time.perf_counter() - start
    for proc, out in zip(procs, outputs):
        PROCS.popens.remove(proc)
        if proc.returncode != 0:
            raise SystemExit(f"bench: storescu to {called_ae} exited {proc.returncode}:\n"
                             + out.decode(errors="replace")[-3000:])
    return elapsed


def flush() -> None:
    """Write back dirty pages (the previous round's output) before a timed send, untimed."""
    os.sync()


# --- receivers ------------------------------------------------------------------------------


def run_storescp(files: list[Path], out_dir: Path, associations: int) -> dict[str, float]:
    shutil.rmtree(out_dir, ignore_errors=True)
    port = free_port()
    extra = ["--fork"] if associations > 1 else []
    with storescp(port, out_dir / "files", extra_args=extra) as scp:
        flush()
        seconds = send(port, scp.ae, files, associations)
        received = len(scp.received())
    if received != len(files):
        raise SystemExit(f"bench: storescp wrote {received} of {len(files)} files")
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"seconds": seconds}


def agent_db(daemon: Daemon) -> sqlite3.Connection:
    """The daemon's state database, read-only (the daemon keeps it in WAL mode)."""
    return sqlite3.connect(f"file:{daemon.root / 'state.sqlite'}?mode=ro", uri=True, timeout=30)


def start_daemon(root: Path, **overrides: Any) -> Daemon:
    shutil.rmtree(root, ignore_errors=True)
    daemon = Daemon(root, **overrides)
    PROCS.daemons.append(daemon)
    daemon.start()
    return daemon


def run_agent(files: list[Path], root: Path, associations: int) -> dict[str, float]:
    """A fresh daemon (quiet period one day: the study stays `receiving`), N files, then stopped."""
    daemon = start_daemon(root, pipeline__quiet_period_s=86400, pipeline__workers=RECEIVE_WORKERS)
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        flush()
        receive_before, workers_before = agent_cpu(pid)
        seconds = send(daemon.port, "NMIP_AGENT", files, associations)
        receive_after, workers_after = agent_cpu(pid)
        staged = sum(1 for _ in (root / "outbox" / ".staging").rglob("*.dcm"))
        with agent_db(daemon) as db:
            received = db.execute("SELECT COUNT(*) FROM instances WHERE state = 'received'").fetchone()[0]
        if received != len(files):
            raise SystemExit(f"bench: the agent recorded {received} of {len(files)} instances")
    finally:
        PROCS.stop_daemon(daemon)
    shutil.rmtree(root, ignore_errors=True)
    return {"seconds": seconds, "cpu_s": receive_after - receive_before,
            "worker_cpu_s": workers_after - workers_before, "staged": staged}


# --- end to end -----------------------------------------------------------------------------


def wait_queued(db: sqlite3.Connection, studies: int, instances: int, timeout: float = 300.0,
                interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = db.execute("SELECT COUNT(*) FROM studies WHERE state = 'queued'").fetchone()[0]
        if queued >= studies:
            done = db.execute("SELECT COUNT(*) FROM instances WHERE state = 'deidentified'").fetchone()[0]
            if done >= instances:
                return
        bad = db.execute("SELECT COUNT(*) FROM studies WHERE state = 'quarantined'").fetchone()[0]
        if bad:
            raise SystemExit("bench: the agent quarantined a study")
        time.sleep(interval)
    raise SystemExit(f"bench: no {studies} queued studies with {instances} instances after {timeout:.0f} s")


def run_end_to_end(files: list[Path], warmup: list[Path], root: Path) -> dict[str, float]:
    daemon = start_daemon(root, pipeline__quiet_period_s=E2E_QUIET_S, pipeline__workers=E2E_WORKERS)
    try:
        db = agent_db(daemon)
        send(daemon.port, "NMIP_AGENT", warmup)  # starts the worker pool; not timed
        wait_queued(db, 1, len(warmup))
        assert daemon.process is not None
        PROCS.remember_descendants(daemon.process.pid)
        flush()
        started = time.time()
        send(daemon.port, "NMIP_AGENT", files)
        wait_queued(db, 2, len(warmup) + len(files))
        seen = time.time()
        study = db.execute("SELECT study_key FROM instances GROUP BY study_key HAVING COUNT(*) = ?",
                           (len(files),)).fetchone()[0]

        def at(event: str, fn: str = "MAX") -> float:
            row = db.execute(f"SELECT {fn}(at) FROM audit WHERE study_key = ? AND event = ?", (study, event)).fetchone()
            return float(row[0])

        first, last = at("instance_received", "MIN"), at("instance_received")
        stable, queued = at("study_stable"), at("study_queued")
        db.close()
        event = deidentified_event(daemon, len(files))
    finally:
        PROCS.stop_daemon(daemon)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "total_s": queued - started,
        "excluding_quiet_s": queued - started - E2E_QUIET_S,
        "receive_s": last - started,
        "first_stored_after_s": first - started,
        "stable_lag_s": stable - last - E2E_QUIET_S,
        "deidentify_s": queued - stable,
        "seen_by_bench_after_s": seen - queued,
        "staged_before_stable": float(event.get("deidentified_early", 0)),
        "process_study_s": float(event.get("seconds", 0.0)),
    }


def deidentified_event(daemon: Daemon, instances: int) -> dict[str, Any]:
    """The daemon's `study_deidentified` log event for the study of `instances` instances."""
    for line in daemon.log_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "study_deidentified" and event.get("instances") == instances:
            return dict(event)
    return {}


# --- memory ---------------------------------------------------------------------------------


class RssSampler:
    """VmRSS of a process and of it plus its descendants, every `interval` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL_S) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_self_kb = 0
        self.peak_tree_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._children: list[int] = []
        self._children_checked = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            own = rss_kb(self.pid)
            now = time.monotonic()
            if now - self._children_checked > 0.5:  # the /proc scan is the costly part
                self._children = descendants(self.pid)
                self._children_checked = now
            tree = own + sum(rss_kb(child) for child in self._children)
            self.peak_self_kb = max(self.peak_self_kb, own)
            self.peak_tree_kb = max(self.peak_tree_kb, tree)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_memory(files: list[Path], root: Path) -> dict[str, float]:
    daemon = start_daemon(root, pipeline__quiet_period_s=86400, pipeline__workers=1)
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        idle_kb = rss_kb(pid)
        flush()
        with RssSampler(pid) as sampler:
            seconds = send(daemon.port, "NMIP_AGENT", files)
        hwm_kb = rss_kb(pid, "VmHWM")
        with agent_db(daemon) as db:
            times = [r[0] for r in db.execute("SELECT at FROM audit WHERE event = 'instance_received' ORDER BY at")]
        if len(times) != len(files):
            raise SystemExit(f"bench: the agent recorded {len(times)} of {len(files)} instances")
    finally:
        PROCS.stop_daemon(daemon)
    shutil.rmtree(root, ignore_errors=True)
    tenth = max(2, len(times) // 10)
    first_rate = (tenth - 1) / (times[tenth - 1] - times[0])
    last_rate = (tenth - 1) / (times[-1] - times[-tenth])
    return {
        "files": len(files),
        "rows": MEMORY_ROWS,
        "file_mb": round(sum(p.stat().st_size for p in files) / len(files) / 1e6, 3),
        "seconds": round(seconds, 2),
        "files_per_s": round(len(files) / seconds, 1),
        "first_tenth_files_per_s": round(first_rate, 1),
        "last_tenth_files_per_s": round(last_rate, 1),
        "idle_rss_mb": round(idle_kb / 1024, 1),
        "peak_rss_mb_sampled": round(sampler.peak_self_kb / 1024, 1),
        "peak_rss_mb_vmhwm": round(hwm_kb / 1024, 1),
        "peak_rss_mb_with_descendants": round(sampler.peak_tree_kb / 1024, 1),
        "samples": sampler.samples,
    }


# --- where the receiving time goes (--stages) ------------------------------------------------


def stage_times(files: list[Path], workdir: Path, associations: int) -> str:
    """Wall-clock milliseconds per instance in each step of the agent's C-STORE handler.

    One `Receiver` (what each of the daemon's receiver processes runs) in this process, with the
    steps of `Receiver._on_store` wrapped in timers, as bench/deid.py --stages
    does for de-identification; with several associations the steps overlap, so their sum can
    pass the wall time per instance. Also the time pynetdicom takes to set up each association
    (`RequestHandler._create_association`, before any negotiation).
    """
    import threading as _threading

    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.transport import RequestHandler

    import agent.receive as receive_module
    from agent import config as config_module
    from agent.deidentify.pseudonym import Pseudonymiser, PseudonymSettings
    from agent.keys import load_key_file
    from agent.spool.state import State
    from agent.spool.store import Spool

    spent: dict[str, float] = {}
    setups: list[float] = []
    lock = _threading.Lock()
    originals: list[tuple[object, str, Any]] = []

    def wrap(owner: object, name: str, label: str | None) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        originals.append((owner, name, original))

        def timed_call(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                with lock:
                    if label is None:
                        setups.append(time.perf_counter() - start)
                    else:
                        spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed_call)

    wrap(receive_module.Receiver, "_on_store", "Receiver._on_store, in all")
    wrap(receive_module, "_identify_file", "  _identify_file (header walk through a memory map)")
    wrap(State, "spool_bytes", "  State.spool_bytes (SUM over instances)")
    wrap(Spool, "check_received", "  Spool.check_received (disk_usage)")
    wrap(Spool, "store_file", "  Spool.store_file (link, fsync, rename, fsync dir)")
    wrap(State, "record_received", "  State.record_received (SQLite commit)")
    wrap(DIMSEServiceProvider, "send_msg", "C-STORE-RSP (DIMSEServiceProvider.send_msg)")
    wrap(RequestHandler, "_create_association", None)
    root = workdir / "agent-stages"
    shutil.rmtree(root, ignore_errors=True)
    config = config_module.load(Daemon(root, pipeline__quiet_period_s=86400, pipeline__workers=1).config_path)
    state = State(config.pipeline.database)
    names = Pseudonymiser(load_key_file(config.pipeline.key_file), PseudonymSettings())
    receiver = receive_module.Receiver(config.receive, Spool.from_config(config.spool), state, names)
    receiver.start()
    try:
        flush()
        seconds = send(receiver.port, "NMIP_AGENT", files, associations)
    finally:
        receiver.stop()
        state.close()
        for owner, name, original in originals:
            setattr(owner, name, original)
        shutil.rmtree(root, ignore_errors=True)
    n = len(files)
    lines = [f"{n} files, {associations} association(s), agent in this process: {n / seconds:.1f} files/s, "
             f"{seconds / n * 1000:.2f} ms per instance (wall); wall-clock ms per instance in:"]
    for label, total in spent.items():
        lines.append(f"  {label:52} {total / n * 1000:6.2f}")
    lines.append(f"  {'pynetdicom association set-up, ms each (not per instance)':52} "
                 + ", ".join(f"{x * 1000:.0f}" for x in setups))
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=300, help="512x512 slices of the study (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating storescp/agent rounds (default 3)")
    parser.add_argument("--workdir", help="generate and work here (kept) instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--phases", default="ABCD",
                        help="which phases to run, as letters: A (one association), B (four), C (end to end), "
                             "D (memory); default ABCD")
    parser.add_argument("--skip-memory", action="store_true",
                        help=f"leave out phase D (the {MEMORY_FILES}-instance study and the daemon's peak RSS)")
    parser.add_argument("--stages", action="store_true",
                        help="instead of the benchmark, time the steps of the agent's C-STORE handler "
                             f"(wall clock), with 1 and {ASSOCIATIONS} associations")
    args = parser.parse_args()
    args.phases = args.phases.upper()
    if args.skip_memory:
        args.phases = args.phases.replace("D", "")
    if args.files < ASSOCIATIONS or args.rounds < 1:
        parser.error(f"--files must be at least {ASSOCIATIONS} and --rounds at least 1")
    if not args.phases or set(args.phases) - set("ABCD"):
        parser.error("--phases takes one or more of the letters A, B, C, D")
    if not dcmtk_available():
        raise SystemExit("bench: DCMTK's storescu and storescp are needed (scripts/install-debian-packages.sh)")

    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    workdir, temporary = prepare_workdir(args.workdir, prefix="nmip-bench-ingest-")
    with ExitStack() as cleanup:
        cleanup.callback(lambda: shutil.rmtree(workdir, ignore_errors=True) if temporary else None)
        cleanup.callback(PROCS.close)  # runs first: nothing may still write into workdir
        if args.stages:
            generate(workdir / "input", args.files)
            files = input_files(workdir / "input")
            warm(files)
            for associations in (1, ASSOCIATIONS):
                print(stage_times(files, workdir, associations))
            return
        figures = run(args, workdir, log)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_table(figures)


def receive_rounds(args: argparse.Namespace, files: list[Path], workdir: Path, log: Any) -> dict[str, Any]:
    """Phases A and B (those asked for): storescp and the agent alternately, `args.rounds` times."""
    counts = [n for n, phase in ((1, "A"), (ASSOCIATIONS, "B")) if phase in args.phases]
    times: dict[str, list[float]] = {f"{who}_{n}": [] for n in counts for who in ("scp", "agent")}
    runs: dict[str, list[dict[str, float]]] = {f"agent_{n}": [] for n in counts}
    for round_no in range(1, args.rounds + 1):
        for n in counts:
            times[f"scp_{n}"].append(run_storescp(files, workdir / "storescp", n)["seconds"])
            result = run_agent(files, workdir / "agent", n)
            times[f"agent_{n}"].append(result["seconds"])
            runs[f"agent_{n}"].append(result)
        log(f"round {round_no}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    n_files = len(files)
    rate = {k: n_files / median(v) for k, v in times.items()}
    figures: dict[str, Any] = {
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "files_per_s": {k: round(v, 1) for k, v in rate.items()},
        "agent_cores_busy": {k: round(median([r["cpu_s"] / r["seconds"] for r in v]), 2) for k, v in runs.items()},
        "agent_cpu_ms_per_instance": {k: round(median([r["cpu_s"] for r in v]) / n_files * 1000, 2)
                                      for k, v in runs.items()},
        "worker_cores_busy": {k: round(median([r["worker_cpu_s"] / r["seconds"] for r in v]), 2)
                              for k, v in runs.items()},
        "staged_by_end_of_send": {k: median([r["staged"] for r in v]) for k, v in runs.items()},
    }
    for n, key in ((1, "ratio_one_association"), (ASSOCIATIONS, "ratio_four_associations")):
        if n in counts:
            figures[key] = round(rate[f"agent_{n}"] / rate[f"scp_{n}"], 3)
    return figures


def run(args: argparse.Namespace, workdir: Path, log: Any) -> dict[str, Any]:
    start = time.perf_counter()
    input_dir = workdir / "input"
    generate(input_dir, args.files)  # bench/deid.py's scanner slices, 512x512
    files = input_files(input_dir)
    generate(workdir / "warmup", WARMUP_FILES)  # another study
    warmup = input_files(workdir / "warmup")
    input_bytes = warm(files) + warm(warmup)
    log(f"generated {len(files)} files ({input_bytes / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s under {workdir}")

    version = source_version()
    load_before = os.getloadavg()
    busy_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    unreaped_before = PROCS.unreaped_cpu_s
    receiving = receive_rounds(args, files, workdir, log) if set(args.phases) & set("AB") else {}
    e2e: list[dict[str, float]] = []
    for round_no in range(1, args.rounds + 1 if "C" in args.phases else 1):
        e2e.append(run_end_to_end(files, warmup, workdir / "agent-e2e"))
        log(f"end to end {round_no}: {e2e[-1]['excluding_quiet_s']:.2f} s excluding the quiet period "
            f"(receive {e2e[-1]['receive_s']:.2f}, stable lag {e2e[-1]['stable_lag_s']:.2f}, "
            f"de-identify {e2e[-1]['deidentify_s']:.2f}, {e2e[-1]['staged_before_stable']:.0f} staged before stable)")
    load_after = os.getloadavg()
    wall = time.perf_counter() - wall_before
    others = max(0.0, (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before)
                 - (PROCS.unreaped_cpu_s - unreaped_before))

    memory: dict[str, float] | None = None
    if "D" in args.phases:
        small_dir = workdir / "input-memory"
        start = time.perf_counter()
        generate_small(small_dir, MEMORY_FILES, MEMORY_ROWS)
        small = input_files(small_dir)
        warm(small)
        log(f"generated {len(small)} {MEMORY_ROWS}x{MEMORY_ROWS} files in {time.perf_counter() - start:.1f} s")
        memory = run_memory(small, workdir / "agent-memory")
        shutil.rmtree(small_dir, ignore_errors=True)
        log(f"memory: {memory['files']} instances in {memory['seconds']:.1f} s, daemon peak RSS "
            f"{max(memory['peak_rss_mb_sampled'], memory['peak_rss_mb_vmhwm']):.1f} MB")

    n = len(files)
    figures: dict[str, Any] = {
        "agent_version": version,
        "phases": args.phases,
        "files": n,
        "file_mb": round(input_bytes / (n + len(warmup)) / 1e6, 3),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "timed_wall_s": round(wall, 1),
        "other_processes_cpu_s": round(others, 1),
        "other_processes_cpu_share": round(others / (wall * (os.cpu_count() or 1)), 3),
        "receive_workers": RECEIVE_WORKERS,
        **receiving,
        "end_to_end": None if not e2e else {
            "quiet_period_s": E2E_QUIET_S,
            "workers": E2E_WORKERS,
            "rounds": [{k: round(v, 3) for k, v in r.items()} for r in e2e],
            **{f"median_{k}": round(median([r[k] for r in e2e]), 3) for k in e2e[0]},
        },
        "memory": memory,
        "targets": {"one_association": TARGET_ONE, "four_associations": TARGET_FOUR,
                    "end_to_end_s": TARGET_E2E_S, "peak_rss_mb": TARGET_RSS_MB},
    }
    met: dict[str, bool] = {}
    if "ratio_one_association" in figures:
        met["one_association"] = figures["ratio_one_association"] >= TARGET_ONE
    if "ratio_four_associations" in figures:
        met["four_associations"] = figures["ratio_four_associations"] >= TARGET_FOUR
    if e2e:
        met["end_to_end"] = figures["end_to_end"]["median_excluding_quiet_s"] < TARGET_E2E_S
    if memory is not None:
        met["peak_rss"] = max(memory["peak_rss_mb_sampled"], memory["peak_rss_mb_vmhwm"]) < TARGET_RSS_MB
    figures["met"] = met
    return figures


def ok(good: bool) -> str:
    return "yes" if good else "NO"


def print_receiving(f: dict[str, Any]) -> None:
    rate, cores, per = f["files_per_s"], f["agent_cores_busy"], f["agent_cpu_ms_per_instance"]
    workers, staged = f["worker_cores_busy"], f["staged_by_end_of_send"]
    print(f"{'':40} {'files/s':>9} {'MB/s':>7} {'ratio':>7} {'receive cores':>14} {'receive CPU ms/inst':>20} "
          f"{'worker cores':>13} {'staged':>7}")
    for n, key in ((1, "one_association"), (ASSOCIATIONS, "four_associations")):
        if f"ratio_{key}" not in f:
            continue
        label = "1 association" if n == 1 else f"{n} associations at once"
        print(f"{'DCMTK storescp, ' + label:40} {rate[f'scp_{n}']:>9.1f} {rate[f'scp_{n}'] * f['file_mb']:>7.0f} {1:>7.2f}")
        print(f"{'agent, ' + label:40} {rate[f'agent_{n}']:>9.1f} {rate[f'agent_{n}'] * f['file_mb']:>7.0f} "
              f"{f['ratio_' + key]:>7.2f} {cores[f'agent_{n}']:>14.2f} {per[f'agent_{n}']:>20.2f} "
              f"{workers[f'agent_{n}']:>13.2f} {staged[f'agent_{n}']:>7.0f}")
    t = f["targets"]
    print(f"(agent with {f['receive_workers']} workers, study never stable; 'staged': instances de-identified "
          "into staging by the end of the send)")
    print("target: " + "; ".join(
        f"{label} >= {t[key]}: {ok(f['met'][key])}" for key, label in
        (("one_association", "1 association"), ("four_associations", f"{ASSOCIATIONS} associations")) if key in f["met"]))


def print_end_to_end(f: dict[str, Any]) -> None:
    e = f["end_to_end"]
    print(f"end to end, {f['files']} instances, quiet period {e['quiet_period_s']} s, {e['workers']} workers "
          f"(warm pool), median of {len(e['rounds'])}:")
    print(f"  storescu start to study queued, quiet period excluded {e['median_excluding_quiet_s']:7.2f} s")
    print(f"    receive (to the last instance stored)              {e['median_receive_s']:7.2f} s")
    print(f"    pipeline polling lag after the quiet period        {e['median_stable_lag_s']:7.2f} s")
    print(f"    de-identify, publish, sync (stable to queued)      {e['median_deidentify_s']:7.2f} s")
    print(f"  instances de-identified before the study was stable  {e['median_staged_before_stable']:7.0f}")
    print(f"target: < {f['targets']['end_to_end_s']} s: {ok(f['met']['end_to_end'])}")


def print_memory(f: dict[str, Any]) -> None:
    m = f["memory"]
    print(f"memory: {m['files']} instances of {m['rows']}x{m['rows']} ({m['file_mb']:.2f} MB each), one association, "
          f"{m['files_per_s']:.1f} files/s (first 10%: {m['first_tenth_files_per_s']:.1f}, "
          f"last 10%: {m['last_tenth_files_per_s']:.1f})")
    print(f"  daemon RSS idle after start                         {m['idle_rss_mb']:7.1f} MB")
    print(f"  daemon peak RSS (VmHWM; sampled every 50 ms)        {m['peak_rss_mb_vmhwm']:7.1f} MB "
          f"({m['peak_rss_mb_sampled']:.1f})")
    print(f"  daemon + descendants, peak of the sampled sums      {m['peak_rss_mb_with_descendants']:7.1f} MB")
    print(f"target: < {f['targets']['peak_rss_mb']} MB: {ok(f['met']['peak_rss'])}")


def print_table(f: dict[str, Any]) -> None:
    print()
    print(f"{f['files']} synthetic 512x512 CT slices of one study, scanner header ({f['file_mb']:.2f} MB each), "
          f"sent by DCMTK storescu; median of {f['rounds']} alternating rounds, {f['cpus']} CPUs; phases {f['phases']}")
    print(f"agent at {f['agent_version']}")
    if "files_per_s" in f:
        print_receiving(f)
    if f["end_to_end"] is not None:
        print()
        print_end_to_end(f)
    if f["memory"] is not None:
        print()
        print_memory(f)
    busy = f["loadavg_before"][0] >= 0.5 or f["other_processes_cpu_share"] >= 0.05
    timed = "".join(p for p in f["phases"] if p in "ABC")
    print(f"load average (1 min) before the rounds: {f['loadavg_before'][0]:.2f}, after: {f['loadavg_after'][0]:.2f}; "
          f"other processes used {f['other_processes_cpu_s']:.1f} CPU-s ({f['other_processes_cpu_share']:.0%} of the "
          f"machine) during the {f['timed_wall_s']:.0f} s of phases {timed or '(none)'}"
          + ("  (machine busy: figures noisier)" if busy else ""))


if __name__ == "__main__":
    main()
