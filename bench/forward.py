"""Delivery to the platform: the agent's Forwarder against a plain httpx STOW-RS loop, same run.

    .venv/bin/python bench/forward.py                     # about 30 s on 2 cores
    .venv/bin/python bench/forward.py --json              # figures as JSON on stdout, progress on stderr
    .venv/bin/python bench/forward.py --rounds 1 --files 20   # smoke check, well under a minute
    .venv/bin/python bench/forward.py --files 100 --rounds 5 --workdir /tmp/nmip-forward
    .venv/bin/python bench/forward.py --cprofile          # cProfile of one agent delivery
    .venv/bin/python bench/forward.py --stages            # wall clock and CPU per step of Forwarder.deliver

What it does, all in one run on one machine (so the machine's speed cancels out of the ratio):

1. Generates N synthetic 512x512 16-bit CT slices of one study (bench/deid.py's default `scanner`
   header) and de-identifies each once with the agent's own engine (`InstanceProcessor`, profile
   nccid, release gate included), as the pipeline's workers do. Those de-identified files are
   "the same bytes" both phases send. Starts the loopback platform of tests/peers/platform.py:
   nginx (TLS, client certificate required, bearer token, whole body buffered) in front of
   Orthanc's DICOMweb plugin, both child processes of this one, stopped on the way out.
2. Floor: one `httpx.Client` (HTTP/1.1, the same client certificate, CA and bearer token as the
   agent) POSTs the files to `{dicomweb_url}/studies` as `multipart/related;
   type="application/dicom"`, `platform.batch_size` (50) per request, each body read and joined
   in memory; it checks for HTTP 200, nothing else.
3. Agent: `Forwarder.run_once()`, what the daemon's delivery thread calls, on a state database,
   spool and outbox laid out as the pipeline leaves them: the study `queued` and its instances
   `deidentified` with their `output` paths (made with the State methods the receiver and the
   pipeline use: record_received, mark_stable, finish_study), the identifiable sources in the
   spool, the de-identified files in the outbox. Timed: reading each file's header for its UIDs,
   `deliver_study` through `PlatformClient` (streamed multipart, Content-Length, DICOM JSON
   answer parsed and checked instance by instance), the SHA-256 of every file, the SQLite
   bookkeeping, the manifest PUT, and the purge of spool and outbox copies.
   Why not the real daemon (`nmip-agent serve` fed by storescu): its delivery thread starts only
   once receiving, the quiet period and de-identification are over, so the wall time would be
   bench/ingest.py's figures plus polling lags, with delivery a small part; timing run_once on a
   state built by the same State methods measures the delivery path and nothing else, with the
   same code the daemon runs. What this leaves out is only the daemon's idle wait between rounds.
   Both clients are built before the clock starts (the daemon builds its client once at start-up);
   each round's first request pays a TLS handshake on both sides.
4. Orthanc is emptied (`Platform.reset()`) before every phase, so each stores fresh instances
   (a resent instance takes another path in Orthanc), and `sync` runs before every timed phase
   (neither pays for the other's writes). Floor and agent alternate for R rounds; medians are
   reported, with the CPU seconds of the client (this process) and of the platform (nginx and
   Orthanc) in each phase, the load average at start and before the rounds, and the CPU that
   other processes used during the rounds.

Target (the issue): agent files/s / floor files/s >= 0.8: the agent's bookkeeping must cost
little. A benchmark, not a test: it prints figures and exits 0 unless a delivery failed.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import json
import os
import pstats
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# As in bench/deid.py: this folder must not be sys.path[0] (it would shadow the deid package).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from agent import log as agent_log  # noqa: E402
from agent.config import PlatformConfig  # noqa: E402
from agent.deidentify import load_profile  # noqa: E402
from agent.forward.client import PlatformClient  # noqa: E402
from agent.forward.outbound import Forwarder, Provenance  # noqa: E402
from agent.keys import init_key_file, load_key_file  # noqa: E402
from agent.process import InstanceProcessor  # noqa: E402
from agent.spool.state import State  # noqa: E402
from agent.spool.store import Spool  # noqa: E402
from bench.ingest import descendants  # noqa: E402
from bench.deid import (  # noqa: E402
    busy_cpu_seconds,
    generate,
    input_files,
    own_cpu_seconds,
    prepare_workdir,
    source_version,
    warm,
)
from tests.peers.platform import Platform, platform, platform_available  # noqa: E402

PROFILE = "nccid"
TARGET_RATIO = 0.8
BATCH_SIZE = PlatformConfig().batch_size  # the agent's default platform.batch_size
DICOM_JSON = "application/dicom+json"


# --- inputs: de-identified files, and what the pipeline records about them -------------------


@dataclass(frozen=True)
class Instance:
    """One de-identified instance and its source, as the pipeline knows them."""

    sop_key: str  # the receiver's opaque name of the source SOP Instance UID
    source: Path  # the identifiable file (what the spool holds)
    output: str  # relative path in the outbox: pseudonym/study/series/sop.dcm
    deidentified: Path  # the de-identified file both phases send


@dataclass(frozen=True)
class Prepared:
    """The study, de-identified once; every round of both phases sends these files."""

    study_key: str
    pseudonym: str
    output_study: str
    instances: tuple[Instance, ...]
    crosswalk: tuple[tuple[str, str, str], ...]
    key_id: str

    @property
    def files(self) -> list[Path]:
        return [i.deidentified for i in self.instances]


def deidentify_all(sources: list[Path], out_dir: Path, key_file: Path) -> Prepared:
    """The agent's engine on every source file, as `agent.pipeline.deidentify_spooled` runs it."""
    key = load_key_file(key_file)
    processor = InstanceProcessor(load_profile(PROFILE), key)
    names = processor.deidentifier.pseudonyms
    instances: list[Instance] = []
    crosswalk: list[tuple[str, str, str]] = []
    study_uids: set[str] = set()
    pseudonym = output_study = ""
    for path in sources:
        data = path.read_bytes()
        outcome = processor.process(data, path)
        if outcome.status != "passed" or outcome.encoded is None or outcome.result is None:
            raise SystemExit(f"bench: {path.name} was {outcome.status}, not passed")
        result = outcome.result
        target = out_dir / outcome.relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(outcome.encoded)
        source_uids = _source_uids(data)
        study_uids.add(source_uids[1])
        instances.append(Instance(names.opaque_name(source_uids[0]), path, str(outcome.relative_path), target))
        crosswalk.append(("patient", result.source_patient_id, result.patient_pseudonym))
        crosswalk += [("uid", old, new) for old, new in result.uid_map.items()]
        pseudonym, output_study = result.patient_pseudonym, str(result.dataset.StudyInstanceUID)
    if len(study_uids) != 1:
        raise SystemExit(f"bench: expected one study, got {len(study_uids)}")
    return Prepared(names.opaque_name(study_uids.pop()), pseudonym, output_study, tuple(instances),
                    tuple(dict.fromkeys(crosswalk)), key.key_id)


def _source_uids(data: bytes) -> tuple[str, str]:
    """(SOP Instance UID, Study Instance UID) of a source file, as the receiver reads them."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.SOPInstanceUID).strip(), str(ds.StudyInstanceUID).strip()


# --- the agent's state, spool and outbox as the pipeline leaves them (untimed) ----------------


@dataclass
class AgentSite:
    """One round's agent: its folders, database and Forwarder (the client is built, not yet connected)."""

    root: Path
    state: State
    spool: Spool
    forwarder: Forwarder
    client: PlatformClient

    def close(self) -> None:
        self.client.close()
        self.state.close()


def platform_config(central: Platform, batch_size: int) -> PlatformConfig:
    """What tests/scenarios/test_delivery.py configures, at the production batch size."""
    return PlatformConfig(
        dicomweb_url=central.dicomweb_url, manifest_url=central.manifest_url,
        ca_bundle=central.ca_bundle, client_certificate=central.client_certificate,
        client_key=central.client_key, token_file=central.token_file, batch_size=batch_size,
    )


def build_site(root: Path, prepared: Prepared, config: PlatformConfig) -> AgentSite:
    """A fresh agent folder whose study is `queued`, recorded by the receiver's and the
    pipeline's own State calls, its files where they would have put them."""
    shutil.rmtree(root, ignore_errors=True)
    state = State(root / "state.sqlite")
    spool = Spool(root / "spool", quota_bytes=1 << 40, min_free_bytes=0)
    outbox = root / "outbox"
    for instance in prepared.instances:  # the receiver: spool the source, record it
        target = spool.path_of(instance.sop_key)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(instance.source, target)
        state.record_received(instance.sop_key, prepared.study_key, target.stat().st_size)
    if state.mark_stable(0.0, now=time.time() + 1.0) != [prepared.study_key]:
        raise SystemExit("bench: the study did not become stable")
    rows = state.pending_instances(prepared.study_key)
    for instance in prepared.instances:  # the pipeline: publish into the outbox, then record
        target = outbox / instance.output
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(instance.deidentified, target)
    os.sync()
    outcome, _ = state.finish_study(
        prepared.study_key, {i.sop_key: ("deidentified", i.output, None, None, None) for i in prepared.instances},
        pseudonym=prepared.pseudonym, output_study=prepared.output_study, crosswalk=list(prepared.crosswalk),
        expected_received_at={row.sop_key: row.received_at for row in rows})
    if outcome != "queued":
        raise SystemExit(f"bench: the study is {outcome}, not queued")
    profile = load_profile(PROFILE)
    client = PlatformClient(config, root / "agent.yaml")
    forwarder = Forwarder(state, spool, client, outbox=outbox, quarantine_dir=root / "quarantine",
                          provenance=Provenance(profile.name, profile.version, prepared.key_id))
    return AgentSite(root, state, spool, forwarder, client)


def check_agent(site: AgentSite, prepared: Prepared, central: Platform) -> None:
    """Untimed: the study purged, nothing left in spool or outbox, the platform holds it all."""
    study = site.state.study(prepared.study_key)
    if study is None or study.state != "purged":
        raise SystemExit(f"bench: the agent left the study {study.state if study else 'missing'}, not purged")
    left = [p for folder in ("spool", "outbox") for p in (site.root / folder).rglob("*") if p.is_file()]
    if left:
        raise SystemExit(f"bench: {len(left)} files left in the agent's spool and outbox")
    manifests = central.put_files("manifests")
    if len(manifests) != 1 or json.loads(next(iter(manifests.values())))["instance_count"] != len(prepared.instances):
        raise SystemExit("bench: the platform did not get the manifest of every instance")
    check_stored(central, len(prepared.instances), "agent")


def check_stored(central: Platform, expected: int, phase: str) -> None:
    stored = int(central.orthanc.get("/statistics")["CountInstances"])
    if stored != expected:
        raise SystemExit(f"bench: after the {phase} phase the platform holds {stored} of {expected} instances")


# --- the two phases ---------------------------------------------------------------------------


def floor_client(central: Platform) -> httpx.Client:
    """A plain httpx client: HTTP/1.1, the site's certificate, the test CA, no proxy settings."""
    return httpx.Client(verify=central.ssl_context(), http1=True, http2=False, trust_env=False,
                        timeout=httpx.Timeout(60.0))


def run_floor(client: httpx.Client, url: str, token_header: dict[str, str], files: list[Path],
              batch_size: int) -> None:
    """POST the files, `batch_size` a request, as multipart/related; check for 200, nothing else."""
    boundary = "nmip-bench-floor-boundary-7d1c0e"
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    part = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    headers = {"Content-Type": content_type, "Accept": DICOM_JSON, **token_header}
    for start in range(0, len(files), batch_size):
        pieces: list[bytes] = []
        for path in files[start:start + batch_size]:
            pieces += [part, path.read_bytes(), b"\r\n"]
        pieces.append(f"--{boundary}--\r\n".encode())
        response = client.post(url, content=b"".join(pieces), headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"bench: the floor's STOW-RS got HTTP {response.status_code}")


def run_agent(site: AgentSite) -> None:
    """One round of the daemon's delivery loop: due studies delivered and manifests PUT (the
    purge runs in the purger thread)."""
    if not site.forwarder.run_once():
        raise SystemExit("bench: Forwarder.run_once found nothing to deliver")


# --- measuring --------------------------------------------------------------------------------


def platform_cpu_seconds() -> float:
    """utime + stime of this process's descendants (all threads) and of the children they reaped."""
    total = 0
    for pid in descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def kernel_threads_cpu_seconds() -> float:
    """utime + stime of the kernel's threads (children of kthreadd): writeback and the
    filesystem's workers, busy mostly with this benchmark's own writes and unlinks."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == "2" or entry.name == "2":
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timing:
    seconds: float
    client_cpu_s: float  # this process: the floor's loop or the agent's Forwarder
    platform_cpu_s: float  # nginx and Orthanc
    purge_s: float = 0.0  # the agent's: Forwarder._purge, in its own thread (overlapping `seconds`)


def timed(fn: Callable[..., object], *args: object) -> Timing:
    """Wall and CPU seconds of one phase; the disk is flushed (untimed) before it starts."""
    os.sync()
    gc.collect()
    cpu, platform_cpu, start = time.process_time(), platform_cpu_seconds(), time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    return Timing(seconds, time.process_time() - cpu, platform_cpu_seconds() - platform_cpu)


def floor_round(central: Platform, files: list[Path], batch_size: int) -> Timing:
    central.reset()
    with floor_client(central) as client:
        timing = timed(run_floor, client, central.dicomweb_url + "/studies", central.auth_headers(), files,
                       batch_size)
    check_stored(central, len(files), "floor")
    return timing


def agent_round(central: Platform, prepared: Prepared, root: Path, batch_size: int) -> Timing:
    central.reset()
    site = build_site(root, prepared, platform_config(central, batch_size))
    spent: dict[str, float] = {}
    try:
        # As in the daemon, the purge runs in its own thread (Forwarder.start_purger): the timed
        # delivery ends when the manifest is acknowledged and the study `delivered`. The purge's
        # own time (its unlinks cost what the filesystem makes them cost) is reported beside it,
        # and the round waits for it, untimed, before checking that nothing is left.
        with wrapped([(Forwarder, "_purge", "purge")], spent):
            site.forwarder.start_purger()
            timing = timed(run_agent, site)
            site.forwarder.stop()
        check_agent(site, prepared, central)
    finally:
        site.close()
    shutil.rmtree(root, ignore_errors=True)
    return dataclasses.replace(timing, purge_s=spent.get("purge", 0.0))


# --- where the agent's time goes --------------------------------------------------------------


def profile_agent(central: Platform, prepared: Prepared, root: Path, batch_size: int, top: int = 25) -> str:
    """cProfile of one agent delivery (after an unprofiled one, for imports and first calls)."""
    agent_round(central, prepared, root, batch_size)
    central.reset()
    site = build_site(root, prepared, platform_config(central, batch_size))
    profiler = cProfile.Profile()
    try:
        os.sync()
        profiler.enable()
        run_agent(site)
        profiler.disable()
        check_agent(site, prepared, central)
    finally:
        site.close()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


@contextmanager
def wrapped(targets: list[tuple[object, str, str]], spent: dict[str, float],
            cpu: dict[str, float] | None = None) -> Iterator[None]:
    """Replace each (owner, attribute) by a wrapper adding its wall time to spent[label] (and
    this process's CPU time to cpu[label]: what is not CPU was spent waiting)."""
    cpu = {} if cpu is None else cpu
    originals = []
    for owner, name, label in targets:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        originals.append((owner, name, original))

        def timed_call(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - start
                cpu[_label] = cpu.get(_label, 0.0) + time.process_time() - cpu_start

        setattr(owner, name, timed_call)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def stage_times(central: Platform, prepared: Prepared, root: Path, batch_size: int) -> str:
    """Wall-clock milliseconds per instance in each step of `Forwarder.deliver`, beside the floor.

    cProfile slows pure-Python code most (the DICOM JSON answer, pydicom's header reads) and so
    overstates it; this wraps the steps' entry points instead, as bench/deid.py --stages does.
    """
    import agent.forward.client as client_module
    import agent.forward.outbound as outbound

    files = prepared.files
    agent_round(central, prepared, root, batch_size)  # imports and first calls out of the figures
    floor = floor_round(central, files, batch_size)
    central.reset()
    site = build_site(root, prepared, platform_config(central, batch_size))
    spent: dict[str, float] = {}
    cpu: dict[str, float] = {}
    steps: list[tuple[object, str, str]] = [
        (outbound, "dcmread", "header read (dcmread, 2 tags) per file"),
        (outbound, "deliver_study", "deliver_study, in all (STOW-RS requests)"),
        (client_module.PlatformClient, "_send", "  request sent, answer received (_send)"),
        (client_module, "parse_stow_response", "  DICOM JSON answer parsed"),
        (client_module, "classify", "  answer checked instance by instance"),
        (outbound, "_sha256", "SHA-256 of each file (read again)"),
        (State, "record_sent", "State.record_sent (one transaction)"),
        (Forwarder, "_send_manifest", "manifest built and PUT"),
        (State, "study_delivered", "State.study_delivered"),
        (Forwarder, "_purge", "purge, in all"),
        (Path, "unlink", "  spool and outbox copies unlinked (Path.unlink)"),
        (outbound, "_remove_empty_folders", "  empty outbox folders removed"),
        (State, "study_purged", "  State.study_purged (one transaction)"),
    ]
    try:
        with wrapped(steps, spent, cpu):
            agent = timed(run_agent, site)
        check_agent(site, prepared, central)
    finally:
        site.close()
        shutil.rmtree(root, ignore_errors=True)
    n = len(files)
    lines = [f"{n} files, batches of {batch_size}: floor {floor.seconds / n * 1000:.2f} ms per instance, "
             f"agent {agent.seconds / n * 1000:.2f} (ratio {floor.seconds / agent.seconds:.2f}); "
             "agent ms per instance, wall clock and (of it) CPU, in:"]
    for label in (step[2] for step in steps if step[2] in spent):
        lines.append(f"  {label:56} {spent[label] / n * 1000:6.2f} {cpu[label] / n * 1000:6.2f}")
    top_level = sum(v for k, v in spent.items() if not k.startswith("  "))
    lines.append(f"  {'rest (database reads, loop)':56} {(agent.seconds - top_level) / n * 1000:6.2f}")
    lines.append(f"  {'total':56} {agent.seconds / n * 1000:6.2f}")
    lines.append(f"client CPU ms per instance: floor {floor.client_cpu_s / n * 1000:.2f}, "
                 f"agent {agent.client_cpu_s / n * 1000:.2f}; platform CPU ms per instance: floor "
                 f"{floor.platform_cpu_s / n * 1000:.2f}, agent {agent.platform_cpu_s / n * 1000:.2f}")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def agent_log_to(path: Path) -> Iterator[None]:
    """The agent's own JSON logging at info, as the daemon runs it, into a file instead of stdout."""
    with path.open("a") as out:
        saved = sys.stdout
        sys.stdout = out
        try:
            agent_log.configure("info")  # binds the file it finds in sys.stdout
        finally:
            sys.stdout = saved
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=300, help="512x512 slices of the study (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating floor/agent rounds (default 3)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"instances per STOW-RS request, both phases (default {BATCH_SIZE}, the agent's)")
    parser.add_argument("--workdir", help="generate and work here (kept) instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--cprofile", action="store_true", help="instead of the benchmark, profile one agent delivery")
    parser.add_argument("--stages", action="store_true",
                        help="instead of the benchmark, time the steps of one agent delivery (wall clock and CPU)")
    args = parser.parse_args()
    if args.files < 1 or args.rounds < 1 or args.batch_size < 1:
        parser.error("--files, --rounds and --batch-size must be at least 1")
    if not platform_available():
        raise SystemExit("bench: nginx, Orthanc and orthanc-dicomweb are needed (scripts/install-debian-packages.sh)")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)

    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    load_at_start = os.getloadavg()
    workdir, temporary = prepare_workdir(args.workdir, prefix="nmip-bench-forward-")
    try:
        with agent_log_to(workdir / "agent.log"), platform(workdir / "platform") as central:
            prepared = prepare(workdir, args.files, log)
            root = workdir / "agent"
            if args.cprofile:
                print(profile_agent(central, prepared, root, args.batch_size))
                return
            if args.stages:
                print(stage_times(central, prepared, root, args.batch_size))
                return
            figures = run(central, prepared, root, args, log)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    figures["loadavg_at_start"] = [round(x, 2) for x in load_at_start]
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_table(figures)


def prepare(workdir: Path, n_files: int, log: Callable[..., None]) -> Prepared:
    """Inputs, untimed: the sources, a site key, their de-identified copies, all in the page cache."""
    start = time.perf_counter()
    generate(workdir / "input", n_files)  # bench/deid.py's scanner slices, 512x512
    key_file = workdir / "site.key"
    init_key_file(key_file)
    prepared = deidentify_all(input_files(workdir / "input"), workdir / "deidentified", key_file)
    warm(prepared.files)  # into the page cache, as the outbox is once the pipeline has written it
    warm([i.source for i in prepared.instances])
    log(f"generated and de-identified {len(prepared.files)} files in {time.perf_counter() - start:.1f} s "
        f"under {workdir}")
    return prepared


def run(central: Platform, prepared: Prepared, root: Path, args: argparse.Namespace,
        log: Callable[..., None]) -> dict[str, Any]:
    files = prepared.files
    sent_bytes = sum(p.stat().st_size for p in files)
    version = source_version()
    load_before = os.getloadavg()
    busy_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    platform_before, kernel_before = platform_cpu_seconds(), kernel_threads_cpu_seconds()
    timings: dict[str, list[Timing]] = {"floor": [], "agent": []}
    for round_no in range(1, args.rounds + 1):
        timings["floor"].append(floor_round(central, files, args.batch_size))
        timings["agent"].append(agent_round(central, prepared, root, args.batch_size))
        log(f"round {round_no}: " + ", ".join(f"{k} {v[-1].seconds:.2f} s" for k, v in timings.items()))
    load_after = os.getloadavg()
    wall = time.perf_counter() - wall_before
    kernel = kernel_threads_cpu_seconds() - kernel_before
    others = max(0.0, (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before)
                 - (platform_cpu_seconds() - platform_before) - kernel)
    return figures_of(timings, len(files), sent_bytes, args, version=version, load_before=load_before,
                      load_after=load_after, wall=wall, others=others, kernel=kernel)


def figures_of(timings: dict[str, list[Timing]], n: int, sent_bytes: int, args: argparse.Namespace, *,
               version: str, load_before: tuple[float, float, float], load_after: tuple[float, float, float],
               wall: float, others: float, kernel: float) -> dict[str, Any]:
    def med(phase: str, field: str) -> float:
        return float(statistics.median(float(getattr(t, field)) for t in timings[phase]))

    rate = {k: n / med(k, "seconds") for k in timings}
    figures: dict[str, Any] = {
        "agent_version": version,
        "files": n,
        "file_mb": round(sent_bytes / n / 1e6, 3),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "timed_wall_s": round(wall, 1),
        "other_processes_cpu_s": round(others, 1),
        "other_processes_cpu_share": round(others / (wall * (os.cpu_count() or 1)), 3),
        "kernel_threads_cpu_s": round(kernel, 1),
        "seconds": {k: [round(t.seconds, 3) for t in v] for k, v in timings.items()},
        "files_per_s": {k: round(v, 1) for k, v in rate.items()},
        "mb_per_s": {k: round(v * sent_bytes / n / 1e6, 1) for k, v in rate.items()},
        "client_cpu_ms_per_instance": {k: round(med(k, "client_cpu_s") / n * 1000, 2) for k in timings},
        "client_cores_busy": {k: round(statistics.median(t.client_cpu_s / t.seconds for t in v), 2)
                              for k, v in timings.items()},
        "platform_cpu_ms_per_instance": {k: round(med(k, "platform_cpu_s") / n * 1000, 2) for k in timings},
        "ratio": round(rate["agent"] / rate["floor"], 3),
        "target_ratio": TARGET_RATIO,
        "agent_purge_ms_per_instance": round(med("agent", "purge_s") / n * 1000, 2),
        "agent_purge_seconds": [round(t.purge_s, 3) for t in timings["agent"]],
        # Were the purge in line (before start_purger): delivery time plus the purge's.
        "ratio_purge_in_line": round(med("floor", "seconds") / statistics.median(
            t.seconds + t.purge_s for t in timings["agent"]), 3),
    }
    figures["meets_target"] = figures["ratio"] >= TARGET_RATIO
    return figures


def print_table(f: dict[str, Any]) -> None:
    rate, mb, cpu, cores, plat = (f["files_per_s"], f["mb_per_s"], f["client_cpu_ms_per_instance"],
                                  f["client_cores_busy"], f["platform_cpu_ms_per_instance"])
    print()
    print(f"{f['files']} de-identified 512x512 CT slices of one study ({f['file_mb']:.2f} MB each), STOW-RS to the "
          f"loopback platform (nginx mTLS + token, Orthanc DICOMweb), {f['batch_size']} per request; median of "
          f"{f['rounds']} alternating rounds, {f['cpus']} CPUs")
    print(f"agent at {f['agent_version']}")
    print(f"{'':34} {'files/s':>8} {'MB/s':>6} {'ratio':>6} {'client CPU ms/inst':>19} {'cores':>6} "
          f"{'platform CPU ms/inst':>21}")
    labels = {"floor": "floor (plain httpx STOW-RS loop)", "agent": "agent (Forwarder.run_once)"}
    for k, label in labels.items():
        ratio = 1.0 if k == "floor" else f["ratio"]
        print(f"{label:34} {rate[k]:>8.1f} {mb[k]:>6.1f} {ratio:>6.2f} {cpu[k]:>19.2f} {cores[k]:>6.2f} "
              f"{plat[k]:>21.2f}")
    print(f"agent's purge, in its own thread (unlinking the spool and outbox copies): "
          f"{f['agent_purge_ms_per_instance']:.2f} ms per instance ("
          + ", ".join(f"{x:.2f}" for x in f["agent_purge_seconds"]) + " s a round); "
          f"ratio were it in line {f['ratio_purge_in_line']:.2f}")
    print("seconds per round: " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v) for k, v in f["seconds"].items()))
    print(f"target: agent >= {f['target_ratio']} of the floor: {'yes' if f['meets_target'] else 'NO'}")
    busy = f["loadavg_before"][0] >= 0.5 or f["other_processes_cpu_share"] >= 0.05
    print(f"load average (1 min) at start {f['loadavg_at_start'][0]:.2f}, before the rounds "
          f"{f['loadavg_before'][0]:.2f}; other processes used {f['other_processes_cpu_s']:.1f} CPU-s "
          f"({f['other_processes_cpu_share']:.0%} of the machine) during the {f['timed_wall_s']:.0f} s of rounds "
          f"(besides the platform, and {f['kernel_threads_cpu_s']:.1f} CPU-s of kernel threads: writeback)"
          + ("  (machine busy: figures noisier)" if busy else ""))


if __name__ == "__main__":
    main()
