"""From stable study to outbox: de-identification in worker processes, whole studies at a time.

A study is stable once nothing has arrived for the quiet period (Orthanc's model). Its pending
instances are de-identified in a pool of worker processes into a staging folder; if every one
passes the release gate they move into the outbox, otherwise the whole study goes to quarantine,
each instance with its reason. The database records the outcome in one transaction, after the
files are on disk, so a crash at any point leaves the study `stable` and the next round (or the
next start) does it again, writing the same files under the same names.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent import log
from agent.deidentify import load_profile
from agent.errors import UnreadableInput
from agent.keys import load_key_file
from agent.process import InstanceProcessor
from agent.processes import name_process
from agent.quarantine import Reason, Refusal, quarantine, write_atomically
from agent.spool.state import State
from agent.spool.store import Spool

_log = log.get("pipeline")
STAGING = ".staging"


@dataclass(frozen=True)
class InstanceResult:
    """A worker's answer for one spooled instance (small: it crosses a process boundary)."""

    sop_key: str
    passed: bool
    output: str = ""
    reason: str = ""
    detail: str = ""
    pseudonym: str = ""
    output_study: str = ""
    crosswalk: tuple[tuple[str, str, str], ...] = ()


_processor: InstanceProcessor | None = None


def _init_worker(profile: str, key_file: Path, daemon_pid: int) -> None:
    global _processor
    name_process("nmip-deidentify")
    _processor = InstanceProcessor(load_profile(profile), load_key_file(key_file))
    threading.Thread(target=_exit_with, args=(daemon_pid,), name="watch-daemon", daemon=True).start()


def _exit_with(daemon_pid: int) -> None:
    """Leave when the daemon is gone (kill -9 included): an orphaned worker holds no work worth
    keeping, since the study it was on stays `stable` and is redone by the next daemon."""
    while os.getppid() == daemon_pid:
        time.sleep(1.0)
    os._exit(0)


def _ready() -> bool:
    return _processor is not None


def deidentify_spooled(sop_key: str, spool_path: str, staging: str) -> InstanceResult:
    """De-identify one spooled instance into the staging folder (runs in a worker process)."""
    assert _processor is not None
    try:
        outcome = _processor.process(Path(spool_path).read_bytes(), sop_key)
    except (UnreadableInput, OSError) as exc:
        return InstanceResult(sop_key, False, reason=Reason.UNREADABLE.value, detail=type(exc).__name__)
    if outcome.status != "passed" or outcome.result is None or outcome.encoded is None:
        refusal = outcome.refusal or Refusal(Reason.DEIDENTIFICATION_FAILED, outcome.skip_reason or "skipped")
        return InstanceResult(sop_key, False, reason=refusal.reason.value, detail=refusal.detail)
    relative = outcome.relative_path
    write_atomically(Path(staging) / relative, outcome.encoded)
    result = outcome.result
    pairs = [("patient", result.source_patient_id, result.patient_pseudonym)]
    pairs += [("uid", old, new) for old, new in result.uid_map.items()]
    return InstanceResult(sop_key, True, output=str(relative), pseudonym=result.patient_pseudonym,
                          output_study=str(result.dataset.StudyInstanceUID), crosswalk=tuple(pairs))


class Pipeline:
    """Polls for stable studies and processes them; a thread of the daemon, or `run_once` in tests."""

    def __init__(self, state: State, spool: Spool, *, profile: str, key_file: Path, outbox: Path,
                 quarantine_dir: Path, quiet_period_s: float, workers: int) -> None:
        self.state = state
        self.spool = spool
        self.profile = profile
        self.outbox = outbox
        self.quarantine_dir = quarantine_dir
        self.quiet_period_s = quiet_period_s
        self.workers = workers
        outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        quarantine_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # spawn: the daemon has threads (the SCP), and forking a threaded process is unsafe; spawned
        # workers are the daemon's own children, so they can tell when it is gone.
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(profile, key_file, os.getpid()))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float = 0.1) -> None:
        # Start the workers now (each compiles the profile once), not when the first study is stable.
        for future in [self.pool.submit(_ready) for _ in range(self.workers)]:
            future.result()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the study in hand (or leave it resumable), then stop the workers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a bad round must not stop the daemon; the state is unchanged
                _log.error("pipeline_round_failed", error=type(exc).__name__)
            self._stop.wait(interval_s)

    def run_once(self, now: float | None = None) -> int:
        """Mark quiet studies stable and process every stable study; returns how many were done."""
        for study_key in self.state.mark_stable(self.quiet_period_s, now):
            _log.info("study_stable", study_key=study_key)
        done = 0
        for study_key in self.state.stable_studies():
            if self._stop.is_set():
                break
            self.process_study(study_key)
            done += 1
        return done

    def process_study(self, study_key: str) -> str:
        started = time.monotonic()
        rows = self.state.pending_instances(study_key)
        staging = self.outbox / STAGING / study_key
        futures = [self.pool.submit(deidentify_spooled, row.sop_key, str(self.spool.path_of(row.sop_key)),
                                    str(staging)) for row in rows]
        results = [f.result() for f in futures]
        refused = [r for r in results if not r.passed]
        outcomes: dict[str, tuple[str, str | None, str | None, str | None]] = {}
        if refused:
            first = refused[0]
            for r in results:
                refusal = (Refusal(Reason(r.reason), r.detail) if not r.passed else
                           Refusal(Reason.STUDY_QUARANTINED, f"another instance of the study was refused: {first.reason}"))
                quarantine(self.quarantine_dir, r.sop_key, self.spool.path_of(r.sop_key).read_bytes(), refusal,
                           profile=self.profile)
                outcomes[r.sop_key] = ("quarantined", None, refusal.reason.value, refusal.detail)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            for r in results:
                self._publish(staging / r.output, self.outbox / r.output)
                outcomes[r.sop_key] = ("deidentified", r.output, None, None)
            os.sync()  # one flush for the whole study instead of an fsync per file
            shutil.rmtree(staging, ignore_errors=True)
        passed = [r for r in results if r.passed]
        crosswalk = [pair for r in passed for pair in r.crosswalk]
        state = self.state.finish_study(
            study_key, outcomes,
            pseudonym=passed[0].pseudonym if passed else None,
            output_study=passed[0].output_study if passed else None,
            crosswalk=crosswalk,
            expected_received_at={row.sop_key: row.received_at for row in rows},
        )
        elapsed = round(time.monotonic() - started, 3)
        if state == "quarantined":
            _log.warning("study_quarantined", study_key=study_key, reason=refused[0].reason,
                         instances=len(results), seconds=elapsed)
        elif state == "queued":
            _log.info("study_deidentified", study_key=study_key, output_study=passed[0].output_study if passed else None,
                      instances=len(results), seconds=elapsed)
        return state

    @staticmethod
    def _publish(staged: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(staged, final)


def outbox_bytes(outbox: Path) -> int:
    return sum(p.stat().st_size for p in outbox.rglob("*.dcm") if STAGING not in p.parts)


