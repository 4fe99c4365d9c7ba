"""`nmip-agent anonymise`: a folder of files de-identified on both cores, streaming.

The same scope and grain as the daemon: files outside the profile's scope are excluded (counted,
neither written nor quarantined), and a refused file holds back its whole series.

Paths are walked lazily and at most a few per worker are in flight, so memory does not grow
with the number of files. Each worker builds its processor once; the parent only counts,
reports and writes the crosswalk.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from agent.deidentify import load_profile
from agent.deidentify.pseudonym import Pseudonymiser
from agent.errors import UnreadableInput
from agent.keys import load_key_file
from agent.limits import Limits, bound_worker_memory, cpu_backstop
from agent.process import InstanceProcessor
from agent.quarantine import Reason, Refusal, quarantine, write_atomically

_IN_FLIGHT_PER_WORKER = 8


@dataclass(frozen=True)
class FileReport:
    """What a worker sends back for one input file (small: it crosses a process boundary)."""

    path: str
    status: str  # written | excluded | quarantined | unreadable | skipped | failed
    detail: str = ""  # "reason: detail" when excluded or quarantined
    output: str = ""
    series: str = ""  # the source series' keyed name: a refusal holds back its series
    patient: tuple[str, str] | None = None  # (source id, pseudonym): crosswalk, stays on site
    uids: tuple[tuple[str, str], ...] = ()
    digest: str = ""  # SHA-256 of the source bytes, to tell duplicates of one SOP instance apart


@dataclass
class Summary:
    written: int = 0
    excluded: int = 0  # out of the profile's scope: not written, not quarantined
    quarantined: int = 0
    unreadable: int = 0
    skipped: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, report: FileReport) -> None:
        setattr(self, report.status, getattr(self, report.status) + 1)
        if report.status in ("quarantined", "excluded"):
            code = report.detail.split(":", 1)[0]
            self.reasons[code] = self.reasons.get(code, 0) + 1




@dataclass(frozen=True)
class Job:
    output_dir: Path
    quarantine_dir: Path
    crosswalk: bool


_processor: InstanceProcessor | None = None
_job: Job | None = None


def _init_worker(profile: str, key_file: Path, job: Job, limits: Limits) -> None:
    global _processor, _job
    bound_worker_memory(limits)
    _processor = InstanceProcessor(load_profile(profile), load_key_file(key_file), limits=limits)
    _job = job


def process_file(path: str) -> FileReport:
    """De-identify one file into the output folder or the quarantine (runs in a worker).

    Whatever goes wrong with one file (a full disk, a bug) is reported for that file, by the
    exception's type only, and the run goes on.
    """
    try:
        return _process_file(path)
    except Exception as exc:
        return FileReport(path, "failed", f"{path}: could not be processed ({type(exc).__name__})",
                          series=series_of_file(path))


def series_of_file(path: str) -> str:
    """The keyed name of a file's series, read from its header alone ("" when it cannot be): a
    file that failed or killed its worker holds back its series like a refused one."""
    assert _processor is not None
    try:
        with warnings.catch_warnings():  # pydicom's warnings quote the values they complain about
            warnings.simplefilter("ignore")
            header = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            return _processor.series_key(header)
    except Exception:  # pydicom raises many types; no series to name
        return ""


def _process_file(path: str) -> FileReport:
    assert _processor is not None and _job is not None
    if Path(path).name.upper() == "DICOMDIR":
        return FileReport(path, "skipped", "DICOMDIR (its records hold identifiers)")
    try:
        data = Path(path).read_bytes()
        with cpu_backstop(_processor.limits):
            outcome = _processor.process(data, path)
    except UnreadableInput as exc:
        return FileReport(path, "unreadable", str(exc))
    except OSError as exc:
        return FileReport(path, "unreadable", f"{path}: cannot read ({exc.strerror})")
    if outcome.status == "skipped":
        return FileReport(path, "skipped", outcome.skip_reason)
    if outcome.status == "excluded":
        assert outcome.refusal is not None
        return FileReport(path, "excluded", f"{outcome.refusal.reason.value}: {outcome.refusal.detail}",
                          series=outcome.series_key)
    if outcome.status == "quarantined":
        assert outcome.refusal is not None
        opaque = quarantine_source(_job.quarantine_dir, outcome.opaque_name, data, outcome.refusal,
                                   _processor.profile.name, _processor.deidentifier.pseudonyms)
        return FileReport(path, "quarantined", f"{outcome.refusal.reason.value}: {outcome.refusal.detail}",
                          output=opaque, series=outcome.series_key)
    assert outcome.result is not None and outcome.encoded is not None
    write_atomically(_job.output_dir / outcome.relative_path, outcome.encoded)
    result = outcome.result
    return FileReport(
        path, "written", output=str(outcome.relative_path),
        patient=(result.source_patient_id, result.patient_pseudonym) if _job.crosswalk else None,
        uids=tuple(result.uid_map.items()) if _job.crosswalk else (),
        digest=hashlib.sha256(data).hexdigest(), series=outcome.series_key,
    )


def quarantine_source(folder: Path, opaque: str, data: bytes, refusal: Refusal, profile: str,
                      names: Pseudonymiser) -> str:
    """File a refused source under its keyed name (another keyed name when a different file of the
    run already holds it); returns the name used."""
    record = quarantine(folder, opaque, data, refusal, profile=profile,
                        other_name=lambda: names.opaque_name(f"{opaque}|{hashlib.sha256(data).hexdigest()}"))
    return record.stem


def quarantine_file(job: Job, profile: str, names: Pseudonymiser, path: str, refusal: Refusal, *, kind: str,
                    series: str, undo: bool = False) -> FileReport:
    """Quarantine a file of the run by its path (the parent's decisions: duplicates, held series,
    a file that killed its worker), named by a keyed hash of `kind` and its bytes."""
    data = Path(path).read_bytes()
    opaque = names.opaque_name(f"{kind}|{hashlib.sha256(data).hexdigest()}")
    quarantine(job.quarantine_dir, opaque, data, refusal, profile=profile)
    return FileReport(path, "quarantined", f"{refusal.reason.value}: {refusal.detail}", output=opaque,
                      digest="undo" if undo else "", series=series)


class Duplicates:
    """Files of one run that share a SOP Instance UID (so an output path): never one over another.

    Identical bytes are written once (the later file is reported skipped); different bytes are
    all quarantined with reason duplicate_sop_instance, and their output removed: which of them
    is the instance cannot be told here. Runs in the parent, which sees every report.
    """

    def __init__(self, job: Job, profile: str, names: Pseudonymiser) -> None:
        self.job = job
        self.profile = profile
        self.names = names  # keyed names for the quarantine: never a plain hash of identifiable bytes
        self._written: dict[str, tuple[str, str]] = {}  # output path -> (source path, digest)
        self._conflicting: set[str] = set()  # output paths found to hold different sources

    def settle(self, report: FileReport) -> list[FileReport]:
        """The reports to count for `report`: itself, or what it turns into (and undoes)."""
        if report.status != "written":
            return [report]
        first = self._written.get(report.output)
        if first is None and report.output not in self._conflicting:
            self._written[report.output] = (report.path, report.digest)
            return [report]
        if first is not None and first[1] == report.digest:
            return [FileReport(report.path, "skipped", f"the same bytes as an earlier file ({report.output})")]
        self._remove_output(report.output)
        reports = [self._quarantined(report.path, report.series)]
        if first is not None:
            del self._written[report.output]
            self._conflicting.add(report.output)
            reports.append(self._quarantined(first[0], report.series, undo=True))
        return reports

    def _remove_output(self, output: str) -> None:
        (self.job.output_dir / output).unlink(missing_ok=True)

    def _quarantined(self, path: str, series: str, *, undo: bool = False) -> FileReport:
        refusal = Refusal(Reason.DUPLICATE_SOP_INSTANCE, "another file of this run has the same SOP Instance UID and other bytes")
        return quarantine_file(self.job, self.profile, self.names, path, refusal, kind="duplicate", series=series,
                               undo=undo)


class SeriesGrain:
    """A refusal holds back its series in a folder run too: once one file of a series is
    quarantined, the series' files written so far are taken back (output removed, source
    quarantined as `series_quarantined`) and its later files are held as they come. Runs in the
    parent, after `Duplicates`; keeps each series' written outputs until the run ends."""

    def __init__(self, job: Job, profile: str, names: Pseudonymiser) -> None:
        self.job = job
        self.profile = profile
        self.names = names
        self._written: dict[str, dict[str, str]] = {}  # series -> source path -> output path
        self._held: set[str] = set()

    def settle_all(self, reports: list[FileReport]) -> list[FileReport]:
        """Settle what `Duplicates` made of one file: its take-backs first, so that a file it has
        already quarantined is not held (and counted) a second time."""
        for report in reports:
            if report.status == "quarantined" and report.digest == "undo":
                self._written.get(report.series, {}).pop(report.path, None)
        return [settled for report in reports for settled in self.settle(report)]

    def settle(self, report: FileReport) -> list[FileReport]:
        if report.status == "written":
            if report.series in self._held:
                return [self._hold(report.path, report.output, report.series)]
            self._written.setdefault(report.series, {})[report.path] = report.output
            return [report]
        if report.status not in ("quarantined", "failed"):  # a failed file is missing from its series too
            return [report]
        if report.digest == "undo":  # counted as written before; `Duplicates` removed its output
            self._written.get(report.series, {}).pop(report.path, None)
        reports = [report]
        if report.series not in self._held:
            self._held.add(report.series)
            for path, output in self._written.pop(report.series, {}).items():
                reports.append(self._hold(path, output, report.series, undo=True))
        return reports

    def _hold(self, path: str, output: str, series: str, *, undo: bool = False) -> FileReport:
        (self.job.output_dir / output).unlink(missing_ok=True)
        refusal = Refusal(Reason.SERIES_QUARANTINED, "another instance of its series is held on site")
        return quarantine_file(self.job, self.profile, self.names, path, refusal, kind="series", series=series,
                               undo=undo)


class _Workers:
    """The run's worker pool, replaced when a worker dies (killed by its CPU or memory limit, or
    the kernel): a broken pool takes no more work."""

    def __init__(self, workers: int, initargs: tuple[str, Path, Job, Limits]) -> None:
        self.workers = workers
        self.initargs = initargs
        self.pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, initializer=_init_worker, initargs=self.initargs)

    def _replace(self) -> None:
        old, self.pool = self.pool, self._new()
        old.shutdown(wait=False, cancel_futures=True)

    def submit(self, path: str) -> Future[FileReport]:
        try:
            return self.pool.submit(process_file, path)
        except BrokenProcessPool:
            self._replace()
            return self.pool.submit(process_file, path)

    def series_of(self, path: str) -> str:
        """`series_of_file` in a worker (what killed one may kill the reader too); "" if it dies."""
        try:
            return self.pool.submit(series_of_file, path).result()
        except BrokenProcessPool:
            self._replace()
            return ""

    def alone(self, path: str) -> FileReport | None:
        """Process one file with nothing else in flight; None when its worker dies again."""
        try:
            return self.submit(path).result()
        except BrokenProcessPool:
            self._replace()
            return None

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _killed(path: str, job: Job, profile: str, names: Pseudonymiser, series: str) -> FileReport:
    """A file whose worker died with it alone in the pool: quarantined (keyed by its bytes: what
    killed a worker is not parsed here either), so that the run goes on."""
    refusal = Refusal(Reason.RESOURCE_LIMIT, "worker_memory_mb or instance_seconds: its worker was killed, twice")
    try:
        return quarantine_file(job, profile, names, path, refusal, kind="killed", series=series)
    except OSError as exc:
        return FileReport(path, "unreadable", f"{path}: cannot read ({exc.strerror})")


def iter_files(root: Path) -> Iterator[str]:
    """Every regular file under `root`, in a stable order, lazily."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(folder, name)


def count_files(root: Path) -> int:
    return sum(1 for _ in iter_files(root))


class ReportFile:
    """`anonymise --report FILE`: one JSON object per line and input file, with the field names of
    `check --json` (`file`, `status`, `reason`, `output`). It names source paths: it stays on site.
    A later line for the same file supersedes an earlier one."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, report: FileReport) -> None:
        reason = report.detail.split(":", 1)[0] if report.status in ("quarantined", "excluded") else report.detail
        record = {"file": report.path, "status": report.status, "reason": reason, "output": report.output}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Crosswalk:
    """`uid_mapping.csv` and `patid_mapping.csv` (`id_old,id_new`, the MIDI-B format), mode 0600."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._files = {}
        self._writers = {}
        self._seen: dict[str, set[str]] = {"uid": set(), "patid": set()}
        for kind in ("uid", "patid"):
            path = folder / f"{kind}_mapping.csv"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._files[kind] = os.fdopen(fd, "w", newline="", encoding="utf-8")
            self._writers[kind] = csv.writer(self._files[kind])
            self._writers[kind].writerow(["id_old", "id_new"])

    def add(self, report: FileReport) -> None:
        if report.patient is not None:
            self._row("patid", *report.patient)
        for old, new in report.uids:
            self._row("uid", old, new)

    def _row(self, kind: str, old: str, new: str) -> None:
        if old not in self._seen[kind]:
            self._seen[kind].add(old)
            self._writers[kind].writerow([old, new])

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()


def anonymise(
    input_dir: Path,
    output_dir: Path,
    *,
    profile: str,
    key_file: Path,
    quarantine_dir: Path,
    crosswalk_dir: Path | None = None,
    workers: int | None = None,
    on_report: Callable[[FileReport], None] = lambda report: None,
    limits: Limits = Limits(),
    on_record: Callable[[FileReport], None] | None = None,
) -> Summary:
    """De-identify every file under `input_dir`; `on_report` is called as each file finishes,
    `on_record` for every verdict (a file first written, then found to share its SOP Instance UID
    with other bytes, gets a second one)."""
    workers = workers or os.cpu_count() or 1
    job = Job(output_dir=output_dir, quarantine_dir=quarantine_dir, crosswalk=crosswalk_dir is not None)
    summary = Summary()
    loaded = load_profile(profile)
    names = Pseudonymiser(load_key_file(key_file), loaded.pseudonym)
    duplicates, grain = Duplicates(job, loaded.name, names), SeriesGrain(job, loaded.name, names)
    crosswalk = Crosswalk(crosswalk_dir) if crosswalk_dir is not None else None
    paths = iter_files(input_dir)

    def settle(first: FileReport) -> None:
        for report in grain.settle_all(duplicates.settle(first)):
            if report.digest == "undo":  # an earlier file counted as written is quarantined
                summary.written -= 1
            summary.add(report)
            if crosswalk is not None and report.status == "written":
                crosswalk.add(report)
            if report.path == first.path:
                on_report(report)
            if on_record is not None:
                on_record(report)

    workers_of = _Workers(workers, (profile, key_file, job, limits))
    try:
        pending: dict[Future[FileReport], str] = {}
        suspects: list[str] = []  # files in flight when a worker died: each is tried again alone
        exhausted = False
        while pending or suspects or not exhausted:
            if suspects and not pending:
                path = suspects.pop(0)
                settle(workers_of.alone(path) or _killed(path, job, loaded.name, names, workers_of.series_of(path)))
                continue
            while not suspects and not exhausted and len(pending) < workers * _IN_FLIGHT_PER_WORKER:
                following = next(paths, None)
                if following is None:
                    exhausted = True
                else:
                    pending[workers_of.submit(following)] = following
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                path = pending.pop(future)
                try:
                    first = future.result()
                except BrokenProcessPool:  # its worker, or one beside it, died: the pool is replaced
                    suspects.append(path)
                    continue
                settle(first)
    finally:
        workers_of.shutdown()
        if crosswalk is not None:
            crosswalk.close()
    return summary
