"""From stable study to outbox: de-identification in worker processes, whole studies at a time.

A study is stable once nothing has arrived for the quiet period (Orthanc's model). Its pending
instances are de-identified in a pool of worker processes into a staging folder
(`outbox/.staging/<study_key>/`). Scope comes first: an instance the profile does not take is
excluded (recorded, never sent, its spool copy deleted). The grain of a refusal is the series:
a series with an instance the gate refused is held whole in quarantine (its other instances as
`series_quarantined`), so no series is delivered with a hole, and the study's other series move
into the outbox. The database records the outcome in one transaction, after the files are on
disk, so a crash at any point leaves the study `stable` and the next round (or the next start)
does it again, writing the same files under the same names.

Early de-identification: while a study is still `receiving`, instances it has already received
are de-identified into its staging folder, one instance per worker at a time, by as many workers
as receiving leaves (`Pipeline._early_limit`): `workers - 1` while one association is open, so
that the receiver processes (which the PACS is waiting on) keep CPU; none while several are; all
of them when nothing is arriving (the quiet period). With `workers: 1` nothing is done early. Each
early result is remembered in memory with the `received_at` of the spooled copy it was made
from: a resent instance gets a new `received_at`, so its earlier result is never used (and a new
attempt at an instance starts only once the previous one has finished, so a stale attempt never
writes over a newer one's staged file). When the study becomes stable, the results that still
match the database, whose staged files are still there, are used and only the rest is
de-identified; the decision (series by series), the `os.sync` and the database
transaction are the same as without it. Nothing is published before the study is stable. The
memory is lost on a restart: then everything is de-identified again at stable, and staging is
only scratch.

Workers run at nice 10 (`WORKER_NICE`), so receiving keeps priority over de-identification, and
the pipeline wakes up when the next receiving study's quiet period ends rather than polling for
it. On 2 cores this took a 300-slice study from 3.9 s to 2.8 s end to end, quiet period excluded
(docs/performance.md, Ingest).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from agent import log
from agent.deidentify import load_profile
from agent.errors import UnreadableInput
from agent.keys import load_key_file
from agent.notify import Heartbeat
from agent.limits import Limits, bound_worker_memory, cpu_backstop
from agent.process import InstanceProcessor, read_header
from agent.processes import name_process
from agent.quarantine import Reason, Refusal, quarantine, write_atomically
from agent.spool.choices import Choices
from agent.spool.state import InstanceRow, State, StudyRow
from agent.spool.store import Spool

_log = log.get("pipeline")
STAGING = ".staging"
#: Workers run at this nice value: receiving, which a PACS is waiting on, gets the CPU first, and
#: de-identification (early or not) takes what is left. Measured on 2 cores: at nice 0 an early
#: worker slowed one association's receiving by about 20%, at nice 10 by about 10%.
WORKER_NICE = 10


@dataclass(frozen=True)
class InstanceResult:
    """A worker's answer for one spooled instance (small: it crosses a process boundary)."""

    sop_key: str
    passed: bool
    excluded: bool = False  # out of the profile's scope: reason and detail say why
    series_key: str = ""  # the source series' keyed name, "" when unknown
    output: str = ""
    reason: str = ""
    detail: str = ""
    pseudonym: str = ""
    output_study: str = ""
    crosswalk: tuple[tuple[str, str, str], ...] = ()
    patient_tokens: frozenset[str] = frozenset()  # keyed: matched against the opt-out list
    patient_link: str = ""  # the patient's pseudonym, when the Patient ID names one patient


@dataclass(frozen=True)
class Attempt:
    """One submission of a spooled instance to the workers, and which copy of it it was for.

    Its result stands for the instance only while the database still says the same study and the
    same `received_at` (a resend changes `received_at`): the key that makes an early result safe.
    """

    study_key: str
    received_at: float
    future: Future[InstanceResult]

    def is_for(self, row: InstanceRow) -> bool:
        return self.study_key == row.study_key and self.received_at == row.received_at

    def failed(self) -> bool:
        """Done without a result (a worker error, or cancelled at shutdown): to be submitted again."""
        return self.future.done() and (self.future.cancelled() or self.future.exception() is not None)


_processor: InstanceProcessor | None = None


class WorkersUnavailable(Exception):
    """New workers cannot start (the profile or key changed or vanished on disk since start):
    nothing is refused for it; the round fails, loudly, and is tried again."""


class OptOutProbe:
    """A worker's look at the opt-out list before it de-identifies anything (read only): an
    instance of a patient on it goes no further. The pipeline decides again when it records the
    study, so a probe that cannot read the database only costs the work."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self._db: sqlite3.Connection | None = None

    def __call__(self, tokens: frozenset[str], link: str) -> bool:
        try:
            if self._db is None:
                self._db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
            db = self._db
            if tokens and db.execute(f"SELECT 1 FROM optout_tokens WHERE token IN ({','.join('?' * len(tokens))})"
                                     " LIMIT 1", sorted(tokens)).fetchone():
                return True
            return bool(link) and db.execute("SELECT 1 FROM studies WHERE patient_link = ? AND opted_out_at IS NOT"
                                             " NULL LIMIT 1", (link,)).fetchone() is not None
        except sqlite3.Error:
            return False


def _init_worker(profile: str, key_file: Path, daemon_pid: int, limits: Limits,
                 expected: tuple[str, str] | None = None, database: Path | None = None) -> None:
    global _processor
    name_process("nmip-deidentify")
    # Ctrl-C in the terminal reaches the whole process group: the daemon stops its workers itself,
    # and a worker interrupted in its queue's lock would print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.configure("warning")  # what a library logs or warns in a worker goes out without its text
    os.nice(WORKER_NICE)
    bound_worker_memory(limits)
    loaded, key = load_profile(profile), load_key_file(key_file)
    if expected is not None and (loaded.fingerprint, key.key_id) != expected:
        # A replacement worker must apply what the daemon started with (and its manifests state).
        raise RuntimeError("the profile or the key changed on disk since the agent started: restart it")
    _processor = InstanceProcessor(loaded, key, limits=limits)
    if database is not None:
        _processor.opted_out = OptOutProbe(database)
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
        size = Path(spool_path).stat().st_size
        with cpu_backstop(_processor.limits):
            if size > _processor.limits.max_instance_mb << 20:  # judged by its header, never read whole
                outcome = _processor.too_large(read_header(Path(spool_path)), size, sop_key)
            else:
                outcome = _processor.process(Path(spool_path).read_bytes(), sop_key)
    except (UnreadableInput, OSError) as exc:
        return InstanceResult(sop_key, False, reason=Reason.UNREADABLE.value, detail=type(exc).__name__)
    patients, link = outcome.patient_tokens, outcome.patient_link
    if outcome.status == "excluded" and outcome.refusal is not None:
        return InstanceResult(sop_key, False, excluded=True, series_key=outcome.series_key,
                              reason=outcome.refusal.reason.value, detail=outcome.refusal.detail,
                              patient_tokens=patients, patient_link=link)
    if outcome.status != "passed" or outcome.result is None or outcome.encoded is None:
        refusal = outcome.refusal or Refusal(Reason.DEIDENTIFICATION_FAILED, outcome.skip_reason or "skipped")
        return InstanceResult(sop_key, False, series_key=outcome.series_key, reason=refusal.reason.value,
                              detail=refusal.detail, patient_tokens=patients, patient_link=link)
    relative = outcome.relative_path
    write_atomically(Path(staging) / relative, outcome.encoded)
    result = outcome.result
    pairs = [("patient", result.source_patient_id, result.patient_pseudonym)]
    pairs += [("uid", old, new) for old, new in result.uid_map.items()]
    return InstanceResult(sop_key, True, series_key=outcome.series_key, output=str(relative),
                          pseudonym=result.patient_pseudonym, output_study=str(result.dataset.StudyInstanceUID),
                          crosswalk=tuple(pairs), patient_tokens=patients, patient_link=link)


class Pipeline:
    """Polls for stable studies and processes them; a thread of the daemon, or `run_once` in tests.

    Only the pipeline's own thread submits work and reads `_attempts`; worker completions merely
    wake it up (`_wake`) so that an early worker is given its next instance at once.
    """

    def __init__(self, state: State, spool: Spool, *, profile: str, key_file: Path, outbox: Path,
                 quarantine_dir: Path, quiet_period_s: float, workers: int,
                 open_associations: Callable[[], int] | None = None, limits: Limits = Limits(),
                 expected: tuple[str, str] | None = None) -> None:
        """`expected`: the profile's fingerprint and the key's id as the daemon loaded them; a
        worker that loads anything else refuses to start."""
        self.state = state
        self.choices = Choices(state)
        self.heartbeat = Heartbeat("pipeline")
        # How many associations are open now (the receivers'): early work takes what receiving leaves.
        self.open_associations = open_associations
        self.spool = spool
        self.profile = profile
        self.outbox = outbox
        self.quarantine_dir = quarantine_dir
        self.quiet_period_s = quiet_period_s
        self.workers = workers
        self.early_workers = workers - 1
        for folder in (outbox, quarantine_dir):  # made, or made private if it existed already
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder.chmod(0o700)
        self._pool_args = (profile, key_file, os.getpid(), limits, expected, state.path)
        self._pool_retry_at = 0.0  # after new workers failed to start: not before this time
        self.pool = self._new_pool()
        self._attempts: dict[str, Attempt] = {}  # sop_key -> its latest attempt, until its study is done
        self._backlog: deque[InstanceRow] = deque()  # instances of receiving studies not yet attempted
        self._early: set[Future[InstanceResult]] = set()  # early attempts in flight
        self._wake = threading.Event()
        self._next_quiet_at: float | None = None  # when the next receiving study will have been quiet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: the daemon has threads (the SCP), and forking a threaded process is unsafe; spawned
        # workers are the daemon's own children, so they can tell when it is gone.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=self._pool_args)

    def _replace_pool(self) -> None:
        """A worker died (killed by its CPU limit, the kernel's OOM killer or the unit's MemoryMax):
        the pool is broken for good, so a new one takes its place, checked to start. Every attempt
        in flight failed with it; the pipeline retries them, each suspect alone (`_isolated`)."""
        if time.monotonic() < self._pool_retry_at:
            raise WorkersUnavailable("de-identification workers failed to start; trying again shortly")
        old, self.pool = self.pool, self._new_pool()
        old.shutdown(wait=False, cancel_futures=True)
        _log.error("worker_replaced", detail="a de-identification worker died; its instances are tried again, alone")
        try:
            for future in [self.pool.submit(_ready) for _ in range(self.workers)]:
                future.result()
        except BrokenProcessPool:
            self._pool_retry_at = time.monotonic() + 30.0
            _log.error("workers_failed_to_start", detail="the profile or the key changed or is unreadable since the "
                       "agent started: restart the agent; nothing is refused meanwhile", retry_in_s=30)
            raise WorkersUnavailable("de-identification workers failed to start") from None

    def start(self, interval_s: float = 0.1) -> None:
        # Start the workers now (each compiles the profile once), not when the first study is stable.
        for future in [self.pool.submit(_ready) for _ in range(self.workers)]:
            future.result()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the study in hand (or leave it resumable), then stop the workers."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self, interval_s: float) -> None:
        """A round every `interval_s`; in between, an early worker that finishes gets its next
        instance at once (polling alone would leave it idle for most of the interval)."""
        while not self._stop.is_set():
            self.heartbeat.beat()
            self._guarded(self.run_once)
            deadline = time.monotonic() + self._until_next_round(interval_s)
            while not self._stop.is_set():
                remaining = deadline - time.monotonic()
                self.heartbeat.idle()
                if remaining <= 0 or not self._wake.wait(remaining):
                    break
                self._wake.clear()
                if not self._stop.is_set():
                    self.heartbeat.beat()
                    self._guarded(self._top_up)

    def _until_next_round(self, interval_s: float) -> float:
        """At most `interval_s`, less if a receiving study's quiet period ends sooner: waking up
        right then (1 ms late, so that it counts as quiet) takes the polling lag off end to end."""
        if self._next_quiet_at is None:
            return interval_s
        return max(0.0, min(interval_s, self._next_quiet_at - time.time() + 0.001))

    @staticmethod
    def _guarded(step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:  # a bad round must not stop the daemon; the state is unchanged
            _log.error("pipeline_round_failed", error=type(exc).__name__)

    def run_once(self, now: float | None = None) -> int:
        """Mark quiet studies stable and process every stable study, then hand instances of studies
        still receiving to the early workers; returns how many studies were done."""
        self._backlog.clear()  # a study in it may be about to become stable
        self._next_quiet_at = None  # until this round has looked (a failed round polls at the interval)
        for study_key in self.choices.unsettled():
            try:
                self.settle_opted_out(study_key)
            except Exception as exc:  # one study's copy that cannot go must not stop every round
                _log.error("opt_out_settle_failed", study_key=study_key, error=type(exc).__name__)
        for study_key in self.state.mark_stable(self.quiet_period_s, now):
            _log.info("study_stable", study_key=study_key)
        done = 0
        for study_key in self.state.stable_studies():
            if self._stop.is_set():
                break
            self.process_study(study_key)
            done += 1
        receiving = self.state.studies("receiving")
        self._next_quiet_at = min((s.last_received_at for s in receiving), default=None)
        if self._next_quiet_at is not None:
            self._next_quiet_at += self.quiet_period_s
        if not self._stop.is_set():
            self._plan_early(receiving)
            self._top_up()
        return done

    # -- early de-identification, while a study is receiving ------------------------------------

    def _plan_early(self, receiving: list[StudyRow]) -> None:
        """The instances of receiving studies with no attempt for their current copy, the study
        that has waited longest for its next instance (so is likely stable first) first."""
        if self.early_workers < 1:
            return
        for study in receiving:
            for row in self.state.pending_instances(study.study_key):
                attempt = self._attempts.get(row.sop_key)
                if attempt is None or not attempt.is_for(row):
                    self._backlog.append(row)

    def _top_up(self) -> None:
        """Give each free early worker one instance: at most `early_workers` in flight, so work for a
        study that becomes stable never queues behind more than that."""
        self._early = {f for f in self._early if not f.done()}
        limit = self._early_limit()
        while self._backlog and len(self._early) < limit:
            row = self._backlog.popleft()
            previous = self._attempts.get(row.sop_key)
            if previous is not None and (previous.is_for(row) or not previous.future.done()):
                continue  # done or under way; or an older copy still in hand: the next round sees it
            future = self._submit(row).future
            self._early.add(future)
            future.add_done_callback(lambda _: self._wake.set())

    def _early_limit(self) -> int:
        """Workers for early work: none while several associations are open (receiving, which the
        PACS waits on, needs every core: early work cost four associations about a tenth of their
        rate), `workers - 1` during one, and every worker when nothing is arriving (the quiet
        period), so the study is done by the time it is stable. The backlog waits meanwhile; the
        next round (0.1 s) looks again."""
        if self.early_workers < 1 or self.open_associations is None:
            return self.early_workers
        open_now = self.open_associations()
        return 0 if open_now >= 2 else self.early_workers if open_now == 1 else self.workers

    def _submit(self, row: InstanceRow) -> Attempt:
        """Start an attempt at a spooled instance; the caller has made sure no other attempt at the
        same instance is under way (both would write the same staged file)."""
        arguments = (row.sop_key, str(self.spool.path_of(row.sop_key)), str(self.outbox / STAGING / row.study_key))
        try:
            future = self.pool.submit(deidentify_spooled, *arguments)
        except BrokenProcessPool:  # broken by a worker that died since the last submission
            self._replace_pool()
            future = self.pool.submit(deidentify_spooled, *arguments)
        attempt = Attempt(row.study_key, row.received_at, future)
        self._attempts[row.sop_key] = attempt
        return attempt

    # -- a stable study ---------------------------------------------------------------------------

    def _results_for(self, rows: list[InstanceRow], staging: Path) -> tuple[list[InstanceResult], int]:
        """A result per pending instance, in order: an early one where it still stands, otherwise
        de-identified now. Returns the results and how many came from early attempts."""
        futures: dict[int, Future[InstanceResult]] = {}
        waiting: list[int] = []  # an older copy's attempt is still under way: start after it
        early = 0
        for index, row in enumerate(rows):
            previous = self._attempts.get(row.sop_key)
            if previous is not None and self._still_stands(previous, row, staging):
                futures[index] = previous.future
                early += 1
            elif previous is not None and not previous.future.done():
                waiting.append(index)
            else:
                futures[index] = self._submit(row).future
        if waiting:
            wait([self._attempts[rows[index].sop_key].future for index in waiting])
            for index in waiting:
                futures[index] = self._submit(rows[index]).future
        results: list[InstanceResult | None] = []
        for index in range(len(rows)):
            self.heartbeat.beat()  # a study of many slices read by OCR is turning, instance by instance
            try:
                results.append(futures[index].result())
            except BrokenProcessPool:  # its worker, or another one beside it, died
                results.append(None)
        return [result or self._isolated(rows[index]) for index, result in enumerate(results)], early

    def _isolated(self, row: InstanceRow) -> InstanceResult:
        """De-identify an instance whose worker died, alone in the pool: if its worker dies again,
        it is the instance that kills workers, and it is refused (resource_limit) instead of being
        tried for ever; an instance that was only beside it passes as usual."""
        wait([a.future for a in self._attempts.values() if not a.future.done()])
        try:  # a pool broken meanwhile is replaced by `_submit`; a death from here on is this instance's
            return self._submit(row).future.result()
        except BrokenProcessPool:
            pass
        self._replace_pool()  # raises WorkersUnavailable if new workers cannot start: then nothing is refused
        return InstanceResult(row.sop_key, False, reason=Reason.RESOURCE_LIMIT.value,
                              detail="worker_memory_mb or instance_seconds: its worker was killed, twice")

    @staticmethod
    def _still_stands(attempt: Attempt, row: InstanceRow, staging: Path) -> bool:
        """An attempt made for this copy of the instance, not failed, its staged file still there."""
        if not attempt.is_for(row) or attempt.failed():
            return False
        if not attempt.future.done():
            return True  # under way: its file will be there when it is
        result = attempt.future.result()
        return not result.passed or (staging / result.output).is_file()

    def _settle(self, study_key: str) -> None:
        """Wait for every attempt still writing into this study's staging folder (one made for a
        copy since replaced, say), so that nothing lands there once it is published or removed."""
        wait([a.future for a in self._attempts.values() if a.study_key == study_key and not a.future.done()])

    def _forget(self, study_key: str) -> None:
        """Drop the finished attempts of a study once its staging folder is used up (or may be)."""
        for sop_key in [k for k, a in self._attempts.items() if a.study_key == study_key and a.future.done()]:
            del self._attempts[sop_key]

    def process_study(self, study_key: str) -> str:
        self.heartbeat.beat()  # a round of many studies is turning, study by study
        started = time.monotonic()
        reopened = self.state.reopen_held_series(study_key)
        rows = self.state.pending_instances(study_key)
        staging = self.outbox / STAGING / study_key
        try:
            results, early = self._results_for(rows, staging)
            self._settle(study_key)
            state, held, passed, excluded = self._conclude(study_key, rows, results, staging)
        finally:
            self._forget(study_key)
        fields = dict(study_key=study_key, instances=len(results), deidentified_early=early, reopened=reopened,
                      excluded=excluded, seconds=round(time.monotonic() - started, 3))
        refused = [r for r in results if not r.passed and not r.excluded]
        if state == "quarantined":
            _log.warning("study_quarantined", reason=refused[0].reason if refused else None, held=held, **fields)
        elif state == "queued":
            if held:
                _log.warning("series_quarantined", study_key=study_key, held=held,
                             reasons=sorted({r.reason for r in refused}))
            _log.info("study_deidentified", output_study=passed[0].output_study if passed else None, held=held,
                      **fields)
        elif state == "excluded":
            _log.info("study_excluded", **fields)
        return state

    def _conclude(self, study_key: str, rows: list[InstanceRow], results: list[InstanceResult],
                  staging: Path) -> tuple[str, int, list[InstanceResult], int]:
        """Publish what passed, series by series: a series with a refused instance (now or held from
        before) is held whole, each of its other instances quarantined as `series_quarantined`
        (those of an earlier round not yet sent too), so no series leaves with a hole; excluded
        instances are only recorded. Then one transaction. Returns the study's state, how many
        instances are held, those published, and how many excluded."""
        patients = frozenset(t for r in results for t in r.patient_tokens)
        link = next((r.patient_link for r in results if r.patient_link), "")
        if self.choices.study_opted_out(study_key, patients, link):
            results = [_opted_out(r) for r in results]
        series = {row.sop_key: row.series_key or "" for row in rows}
        for r in results:
            series[r.sop_key] = series[r.sop_key] or r.series_key
        held = self.state.held_series(study_key) | {series[r.sop_key] for r in results
                                                     if not r.passed and not r.excluded}

        def is_held(key: str | None) -> bool:
            # An instance of unknown series (from before series were recorded, or a source without
            # one) may belong to any series of its study: then every series is held.
            return "" in held or (key or "") in held

        holding = Refusal(Reason.SERIES_QUARANTINED, "another instance of its series is held on site")
        outcomes: dict[str, tuple[str, str | None, str | None, str | None, str | None]] = {}
        published: list[InstanceResult] = []
        for r in results:
            refusal: Refusal | None = None
            if r.excluded:
                outcomes[r.sop_key] = ("excluded", None, r.reason, r.detail, series[r.sop_key])
                self._unquarantine(r.sop_key)
                continue
            if not r.passed:
                refusal = Refusal(Reason(r.reason), r.detail)
            elif is_held(series[r.sop_key]):
                refusal = holding
                (self.outbox / r.output).unlink(missing_ok=True)  # published by a round a crash cut short
            if refusal is not None:
                refusal = self._quarantine(r.sop_key, refusal)
                outcomes[r.sop_key] = ("quarantined", None, refusal.reason.value, refusal.detail, series[r.sop_key])
            else:
                self._publish(staging / r.output, self.outbox / r.output)
                self._unquarantine(r.sop_key)
                outcomes[r.sop_key] = ("deidentified", r.output, None, None, series[r.sop_key])
                published.append(r)
        unsent = [row for row in self.state.instances_in(study_key, "deidentified") if is_held(row.series_key)]
        for row in unsent:  # queued by an earlier round, not sent yet: held with their series
            self._quarantine(row.sop_key, holding)
        os.sync()  # one flush for the whole study instead of an fsync per file
        shutil.rmtree(staging, ignore_errors=True)
        passed = [r for r in results if r.passed]
        state, excluded = self.state.finish_study(
            study_key, outcomes,
            pseudonym=passed[0].pseudonym if passed else None,
            output_study=passed[0].output_study if passed else None,
            crosswalk=[pair for r in passed for pair in r.crosswalk],
            expected_received_at={row.sop_key: row.received_at for row in rows},
            hold={row.sop_key: holding.detail for row in unsent},
            patient_tokens=patients,
            patient_link=link or None,
        )
        for row in unsent:
            if self.state.still_in(row.sop_key, "quarantined", row.received_at):
                (self.outbox / (row.output or "")).unlink(missing_ok=True)
            else:  # sent meanwhile (the delivery thread was quicker): it is not held
                self._unquarantine(row.sop_key)
        received_at = {row.sop_key: row.received_at for row in rows}
        for sop_key in excluded:  # nothing of it will be sent: the identifiable copy goes now
            with self.spool.locked(sop_key):  # not a copy resent meanwhile
                if self.state.still_in(sop_key, "excluded", received_at[sop_key]):
                    self.spool.remove(sop_key)
        held_now = sum(1 for o in outcomes.values() if o[0] == "quarantined") + len(unsent)
        return state, held_now, published, len(excluded)

    def settle_opted_out(self, study_key: str) -> None:
        """A study whose patient was found on the opt-out list after it was de-identified: its
        copies go (outbox, quarantine, spool) before the record says so, so a crash in between
        leaves it to be settled again, never a copy nobody knows of."""
        for row in self.state.instances(study_key):
            if row.state not in ("deidentified", "quarantined", "delivered"):
                continue
            if row.output:
                (self.outbox / row.output).unlink(missing_ok=True)
            self._unquarantine(row.sop_key)
            with self.spool.locked(row.sop_key):  # not a copy resent meanwhile
                if self.state.still_in(row.sop_key, row.state, row.received_at):
                    self.spool.remove(row.sop_key)
        changed = self.choices.settle(study_key)
        _log.info("study_opt_out_settled", study_key=study_key, instances=changed)

    def _quarantine(self, sop_key: str, refusal: Refusal) -> Refusal:
        """File the identifiable source in the quarantine; a spool copy found missing is recorded
        as such (the refusal returned says so), never a reason to fail the round."""
        try:
            source: bytes | None = self.spool.path_of(sop_key).read_bytes()
        except FileNotFoundError:
            source, refusal = None, Refusal(Reason.UNREADABLE, f"spool copy missing ({refusal.reason.value})")
        quarantine(self.quarantine_dir, sop_key, source, refusal, profile=self.profile)
        return refusal

    def _unquarantine(self, sop_key: str) -> None:
        """An instance released (or reopened with its series) and now decided otherwise: its
        quarantine copy, if any, is stale and identifiable."""
        for suffix in (".dcm", ".json"):
            (self.quarantine_dir / f"{sop_key}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _publish(staged: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(staged, final)


def _opted_out(result: InstanceResult) -> InstanceResult:
    """The patient is on the opt-out list: whatever the worker made of it, the instance is
    excluded (never sent, never held in the quarantine for review); its staged output goes with
    the staging folder."""
    return InstanceResult(result.sop_key, False, excluded=True, series_key=result.series_key,
                          reason=Reason.OPTED_OUT.value, detail="the patient is on the opt-out list",
                          patient_tokens=result.patient_tokens, patient_link=result.patient_link)


def outbox_bytes(outbox: Path) -> int:
    """Bytes waiting in the outbox. The daemon publishes and purges while this runs (from
    `status`, another process): a file or folder gone meanwhile is simply not counted."""
    total = 0
    for folder, subfolders, names in os.walk(outbox):  # os.walk skips folders that vanish
        subfolders[:] = [d for d in subfolders if d != STAGING]
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total
