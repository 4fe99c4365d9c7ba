"""The delivery loop: queued studies and clinical batches, from the outbox to the platform.

A study is delivered in three steps, each safe to repeat after a crash: its de-identified
instances by STOW-RS (the platform keys them on their SOP Instance UIDs, so a resend does not
duplicate them; each acknowledged instance is recorded with the SHA-256 of what was sent), then
its manifest by PUT, and only then is it `delivered` and its identifiable spool copies purged.
An instance the platform refuses goes to quarantine with the platform's reason; the rest of the
study is delivered. A failure of the platform as a whole (unreachable, TLS, authentication,
server error) pauses every upload on the backoff schedule and is shown by `status`; nothing is
ever dropped for it. Uploads wait for the configured window.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from agent import __version__, log
from agent.config import ClinicalConfig
from agent.forward.client import PlatformClient
from agent.forward.deliver import deliver_study
from agent.forward.errors import DeliveryError, Rejected
from agent.forward.stow import OutgoingInstance
from agent.notify import Heartbeat
from agent.optout import OptOutPolicy
from agent.quarantine import Reason, Refusal, quarantine
from agent.spool.choices import RETRACTION_REASON, Choices
from agent.spool.state import InstanceRow, State
from agent.spool.store import CLINICAL_OUTBOX, Spool

_log = log.get("forward")
#: After this many attempts that left an instance unacknowledged with no reason (Orthanc's DICOMweb
#: 1.7 drops a refused instance silently), it is taken as refused, so it cannot hold its study back.
UNACKNOWLEDGED_ATTEMPTS = 3
MANIFEST_VERSION = 1
RETRACTION_VERSION = 1


@dataclass(frozen=True)
class Provenance:
    """What the manifest says about how a study was made (no identifiers)."""

    profile: str
    profile_version: str
    key_id: str


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Forwarder:
    """A thread of the daemon (or `run_once` in tests) that empties the outbox into the platform."""

    def __init__(self, state: State, spool: Spool, client: PlatformClient, *, outbox: Path, quarantine_dir: Path,
                 provenance: Provenance, clinical: ClinicalConfig | None = None,
                 optout_policy: OptOutPolicy | None = None, patient_token: Callable[[str], str] | None = None) -> None:
        """`patient_token`: an identifier's opt-out token (the site key's), to find pseudonyms
        of opted-out patients in clinical batches queued before the list was imported."""
        self.state, self.spool, self.client = state, spool, client
        self.choices = Choices(state)
        self.optout_policy = optout_policy
        self.patient_token = patient_token
        self.heartbeat = Heartbeat("delivery")
        self.outbox, self.quarantine_dir = outbox, quarantine_dir
        self.provenance = provenance
        self.clinical = clinical
        self._failures = 0  # platform-wide failures in a row
        # A problem recorded before a restart is shown until a round succeeds.
        self._problem_shown = state.platform_problem() is not None
        self._paused_until = 0.0
        self._optout_said_at = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._purge_wake = threading.Event()
        self._purger: threading.Thread | None = None

    # -- the loop ---------------------------------------------------------------------------

    def start(self, interval_s: float = 0.5) -> None:
        self.start_purger()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="forward", daemon=True)
        self._thread.start()

    def start_purger(self) -> None:
        """Purge delivered studies in a thread of their own: deleting files waits on the disk
        (2.8 ms per 0.5 MB file on some virtual disks), which would otherwise hold up the next
        study's upload. Until it runs, `run_once` purges in line."""
        self._purger = threading.Thread(target=self._purge_loop, name="purge", daemon=True)
        self._purger.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop sending, then let the purger finish what it has (a stop mid-purge is resumed)."""
        self._stop.set()
        self._wake.set()
        self._purge_wake.set()
        for thread in (self._thread, self._purger):
            if thread is not None:
                thread.join(timeout_s)

    def _purge_loop(self) -> None:
        while True:
            self._purge_wake.wait(5.0)
            self._purge_wake.clear()
            try:
                self.purge_delivered()
            except Exception as exc:  # retried at the next wake-up; the state says what is left
                _log.error("purge_failed", error=type(exc).__name__)
            if self._stop.is_set():
                return

    def purge_delivered(self) -> int:
        """Purge every study in state `delivered` (also one a crash left there); returns how many."""
        studies = self.state.studies_in("delivered")
        for study_key in studies:
            self._purge(study_key)
        return len(studies)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            self.heartbeat.beat()
            try:
                busy = self.run_once()
            except Exception as exc:  # a bad round must not stop delivery; the state is unchanged
                _log.error("forward_round_failed", error=type(exc).__name__)
                busy = False
            if not busy:
                self.heartbeat.idle()  # waiting for work or for the upload window: idle, not stuck
                self._wake.wait(self._idle_wait(interval_s))
                self._wake.clear()

    def _idle_wait(self, interval_s: float) -> float:
        now = time.time()
        if self._paused_until > now:
            return min(self._paused_until - now, 60.0)
        if not self.client.window.is_open(datetime.now()):
            return min(self.client.window.seconds_until_open(datetime.now()), 60.0)
        return interval_s

    def run_once(self) -> bool:
        """One round: send what is due. True when work was done."""
        if self._purger is None:
            self.purge_delivered()
        if time.time() < self._paused_until or not self.client.window.is_open(datetime.now()):
            return False
        try:
            worked = self._send_retractions()  # first: a patient's choice outranks new data
            if self._held_for_optout_list():
                return worked
            for study_key in self.state.due_studies():
                if self._stop.is_set():
                    return worked
                self.heartbeat.beat()
                self._deliver_one(study_key)
                worked = True
            for batch, held in self.state.due_clinical():
                self._upload_one(batch, held)
                worked = True
        except DeliveryError as exc:
            self._platform_failed(exc)
            return False
        if self._failures or self._problem_shown:
            _log.info("platform_reachable_again", after_failures=self._failures)
            self._failures = 0
            self._problem_shown = False
            self.state.clear_platform_problem()
        return worked

    def _platform_failed(self, exc: DeliveryError) -> None:
        wait = self.client.backoff.delay(self._failures, exc.retry_after_s)
        self._failures += 1
        self._paused_until = time.time() + wait
        self.state.set_platform_problem(exc.kind, str(exc), self._failures, self._paused_until)
        self._problem_shown = True
        # Authentication and TLS problems need a person: error level, every time (loud, not silent).
        level = _log.error if exc.loud or exc.kind in ("tls", "authentication") else _log.warning
        level("platform_delivery_paused", kind=exc.kind, detail=str(exc), failures_in_a_row=self._failures,
              retry_in_s=round(wait, 1))

    # -- studies ----------------------------------------------------------------------------

    def _deliver_one(self, study_key: str) -> None:
        """Deliver a study; a problem of this study alone never holds back the others.

        A de-identified copy gone or damaged in the outbox is made again from the spool (the
        pipeline writes the same bytes under the same name). A manifest the platform refuses, or
        anything unexpected, postpones this study on the backoff schedule, loudly. Failures of the
        platform as a whole go up, to pause every upload.
        """
        try:
            self.deliver(study_key)
        except Rejected as exc:
            self._postpone(study_key, f"refused by the platform: {exc}", exc)
        except DeliveryError:
            raise
        except (OSError, InvalidDicomError) as exc:
            damaged = [row.sop_key for row in self.state.instances_in(study_key, "deidentified")
                       if not _readable(self.outbox / (row.output or ""))]
            if damaged:
                self.state.redo_instances(study_key, damaged)
                _log.error("outbox_copy_unreadable", study_key=study_key, instances=len(damaged),
                           action="de-identified again from the spool")
                return
            self._postpone(study_key, f"outbox unreadable: {type(exc).__name__}", exc)
        except Exception as exc:
            self._postpone(study_key, f"unexpected: {type(exc).__name__}", exc)

    def _postpone(self, study_key: str, problem: str, exc: BaseException) -> None:
        wait = self.client.backoff.delay(self.state.delivery_attempts(study_key))
        self.state.delivery_postponed(study_key, time.time() + wait, problem)
        _log.error("study_delivery_postponed", study_key=study_key, detail=problem, error=type(exc).__name__,
                   retry_in_s=round(wait, 1))

    def deliver(self, study_key: str) -> str:
        """Send a queued study's instances not yet acknowledged, then its manifest. Raises
        DeliveryError when the platform as a whole fails (the study stays queued)."""
        if self.choices.study_opted_out(study_key):
            return "opted_out"  # the pipeline settles it; nothing more of it is sent
        rows = self.state.instances_in(study_key, "deidentified")
        if rows:
            delivery = self._send_instances(study_key, rows)
            if delivery is not None:
                return delivery
        if self.choices.study_opted_out(study_key):
            return "opted_out"  # found during the upload: no manifest; a retraction is queued
        if self.state.instances_in(study_key, "deidentified"):
            return "queued"
        if not self.state.sent_instances(study_key):  # the platform refused every instance
            self.state.quarantine_study(study_key, Reason.PLATFORM_REJECTED.value)
            _log.warning("study_quarantined", study_key=study_key, reason=Reason.PLATFORM_REJECTED.value)
            return "quarantined"
        self._send_manifest(study_key)
        if not self.state.study_delivered(study_key):
            return "queued"  # reopened by a follow-up meanwhile: its new instances come next
        if self._purger is None:
            self._purge(study_key)
        else:
            self._purge_wake.set()
        return "delivered"

    def _send_instances(self, study_key: str, rows: list[InstanceRow]) -> str | None:
        by_uid: dict[str, tuple[InstanceRow, Path]] = {}
        outgoing = []
        for row in rows:
            assert row.output is not None
            path = self.outbox / row.output
            header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
            uid = str(header.SOPInstanceUID)
            by_uid[uid] = (row, path)
            outgoing.append(OutgoingInstance(uid, str(header.SOPClassUID), path=path))
        attempts = self.state.delivery_attempts(study_key)
        self.state.delivery_started(study_key)  # before the first request: from now on it may be there
        delivery = deliver_study(self.client, outgoing, self.client.config.batch_size, on_request=self.heartbeat.beat,
                                 reject_unacknowledged=attempts + 1 >= UNACKNOWLEDGED_ATTEMPTS,
                                 proceed=lambda: not self.choices.study_opted_out(study_key))
        sent = {by_uid[uid][0].sop_key: (_sha256(by_uid[uid][1]), by_uid[uid][1].stat().st_size)
                for uid in delivery.stored}
        refused = {by_uid[f.sop_instance_uid][0].sop_key: (Reason.PLATFORM_REJECTED.value, f.detail)
                   for f in delivery.rejected}
        for sop_key, (_, detail) in refused.items():
            quarantine(self.quarantine_dir, sop_key, self.spool.path_of(sop_key).read_bytes(),
                       Refusal(Reason.PLATFORM_REJECTED, detail), profile=self.provenance.profile)
        self.state.record_sent(study_key, sent, refused)
        for sop_key in refused:  # the quarantine holds the source; a released study is redone
            row = next(r for r in rows if r.sop_key == sop_key)
            (self.outbox / (row.output or "")).unlink(missing_ok=True)
        for sop_key, (_, detail) in refused.items():
            _log.warning("instance_refused_by_platform", study_key=study_key, sop_key=sop_key, detail=detail)
        if delivery.error is not None:
            raise delivery.error
        if delivery.transient:
            wait = self.client.backoff.delay(attempts, delivery.retry_after_s)
            problem = delivery.transient[0].detail
            self.state.delivery_postponed(study_key, time.time() + wait, problem)
            _log.warning("study_delivery_postponed", study_key=study_key, unacknowledged=len(delivery.transient),
                         detail=problem, retry_in_s=round(wait, 1))
            return "queued"
        return None

    def manifest(self, study_key: str) -> tuple[str, bytes]:
        """The study's pseudonymous UID and manifest: what the platform should hold, and how it was made."""
        sent = self.state.sent_instances(study_key)
        assert sent
        instances = []
        series: dict[str, int] = {}
        for output, sha256, size, _ in sent:
            _, study_uid, series_uid, name = Path(output).parts
            instances.append({"series_instance_uid": series_uid, "sop_instance_uid": Path(name).stem,
                              "sha256": sha256, "size": size})
            series[series_uid] = series.get(series_uid, 0) + 1
        quarantined = len(self.state.instances_in(study_key, "quarantined"))
        excluded = len(self.state.instances_in(study_key, "excluded"))
        document = {
            "manifest_version": MANIFEST_VERSION,
            "study_instance_uid": study_uid,
            "instance_count": len(instances),
            "series": [{"series_instance_uid": uid, "instance_count": n} for uid, n in sorted(series.items())],
            "instances": instances,
            "quarantined_on_site": quarantined,
            "excluded_on_site": excluded,
            "profile": {"name": self.provenance.profile, "version": self.provenance.profile_version},
            "key_id": self.provenance.key_id,
            "agent_version": __version__,
            "times": {"first_sent": _iso(min(s[3] for s in sent)), "last_sent": _iso(max(s[3] for s in sent)),
                      "manifest_sent": _iso(time.time())},
        }
        return study_uid, json.dumps(document, indent=1, sort_keys=False).encode()

    def _send_manifest(self, study_key: str) -> None:
        study_uid, body = self.manifest(study_key)
        self.client.put_manifest(study_uid, body)
        _log.info("study_manifest_sent", study_key=study_key, output_study=study_uid)

    def _purge(self, study_key: str) -> None:
        """Delivered: the identifiable spool copies and the de-identified outbox copies go."""
        study = self.state.study(study_key)
        for row in self.state.instances_in(study_key, "delivered"):
            with self.spool.locked(row.sop_key):  # not a copy the PACS resent meanwhile
                if not self.state.still_in(row.sop_key, "delivered", row.received_at):
                    continue  # resent: its new copies are the pipeline's
                self.spool.remove(row.sop_key)
            if row.output:
                (self.outbox / row.output).unlink(missing_ok=True)
        if study is not None and study.pseudonym and study.output_study:
            _remove_empty_folders(self.outbox / study.pseudonym / study.output_study, self.outbox)
        keys = self.state.study_purged(study_key)
        _log.info("study_delivered", study_key=study_key, purged_instances=len(keys))

    # -- patients' choices ------------------------------------------------------------------

    def _held_for_optout_list(self) -> bool:
        """The profile makes the opt-out list mandatory and it is missing or too old: nothing new
        is sent (retractions still are) until it is imported again; said once an hour."""
        problem = self.optout_policy.problem(self.choices.info().imported_at) if self.optout_policy is not None else None
        if problem is None:
            self._optout_said_at = 0.0
            return False
        if time.monotonic() - self._optout_said_at > 3600:
            self._optout_said_at = time.monotonic()
            _log.error("delivery_held", reason="optout_list", detail=problem)
        return True

    def _send_retractions(self) -> bool:
        """PUT a retraction notice for each study of a patient who opted out after delivery;
        one the platform refuses is tried again on the backoff schedule."""
        due = self.choices.due_retractions()
        for retraction in due:
            if self._stop.is_set():
                break
            self.heartbeat.beat()
            body = retraction_notice(retraction.output_study, self.provenance.key_id)
            try:
                self.client.put_retraction(retraction.output_study, body)
            except Rejected as exc:
                wait = self.client.backoff.delay(retraction.attempts)
                self.choices.retraction_postponed(retraction.output_study, time.time() + wait, str(exc))
                _log.error("retraction_postponed", study_key=retraction.study_key, detail=str(exc),
                           retry_in_s=round(wait, 1))
                continue
            self.choices.retraction_acknowledged(retraction.output_study)
            _log.info("retraction_sent", study_key=retraction.study_key, output_study=retraction.output_study)
        return bool(due)

    # -- clinical batches -------------------------------------------------------------------

    def _upload_one(self, batch: str, held: str | None) -> None:
        """Upload a batch; a batch the platform refuses is refused on site too (the original moves
        to rejects/refused), so it never blocks the others."""
        try:
            self.upload_clinical(batch, held)
        except Rejected as exc:
            target = None
            if held is not None and Path(held).exists() and self.clinical is not None:
                target = self.clinical.rejects / "refused" / f"{batch}.csv"
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.move(held, target)
            (self.outbox / CLINICAL_OUTBOX / f"{batch}.csv").unlink(missing_ok=True)
            self.state.clinical_refused(batch, f"platform refused it: {exc}")
            _log.error("clinical_batch_refused_by_platform", batch=batch, detail=str(exc))

    def upload_clinical(self, batch: str, held: str | None) -> None:
        """PUT a pseudonymised CSV, then archive or delete the original it came from."""
        csv_path = self.outbox / CLINICAL_OUTBOX / f"{batch}.csv"
        body = csv_path.read_bytes()
        if self.patient_token is not None:
            body, withheld = without_pseudonyms(body, self.choices.opted_out_pseudonyms(self.patient_token))
            if withheld:
                _log.info("clinical_rows_withheld", batch=batch, rows=withheld, reason="opted_out")
        self.client.put_clinical(batch, body)
        if held is not None and Path(held).exists():
            if self.clinical is not None and self.clinical.after_upload == "archive":
                self.clinical.archive.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.move(held, self.clinical.archive / f"{batch}.csv")
            else:
                Path(held).unlink()
        csv_path.unlink(missing_ok=True)
        self.state.clinical_uploaded(batch)
        _log.info("clinical_batch_uploaded", batch=batch)


def without_pseudonyms(body: bytes, pseudonyms: set[str]) -> tuple[bytes, int]:
    """A pseudonymised clinical CSV (the pseudonym first in each row) without the rows of these
    patients: those who opted out after the batch was queued. Returns it and how many went."""
    if not pseudonyms:
        return body, 0
    records = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    kept = records[:1] + [r for r in records[1:] if not r or r[0] not in pseudonyms]
    if len(kept) == len(records):
        return body, 0
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(kept)  # as agent/clinical/table.py writes it
    return out.getvalue().encode("utf-8"), len(records) - len(kept)


def retraction_notice(output_study: str, key_id: str) -> bytes:
    """What the platform is told when a patient opts out after delivery: which pseudonymous study
    to delete, and why. Nothing else: no identifier, no pseudonym of the patient."""
    return json.dumps({"retraction_version": RETRACTION_VERSION, "study_instance_uid": output_study,
                       "reason": RETRACTION_REASON, "retracted_at": _iso(time.time()), "key_id": key_id,
                       "agent_version": __version__}, indent=1).encode()


def _readable(path: Path) -> bool:
    try:
        dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return True
    except (OSError, InvalidDicomError):
        return False


def _remove_empty_folders(folder: Path, root: Path) -> None:
    """Remove `folder` and its empty parents up to (not including) `root`."""
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except OSError:
            pass
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
