"""The daemon's clinical intake: dropped files in, pseudonymised batches into the outbox.

For each complete file in the drop folder: pseudonymise it (prepare_file), write the valid rows
to `outbox/clinical/{batch}.csv`, record the batch as queued, then move the original out of the
drop folder to `held/{batch}.csv` (0600, opaque name) where it stays until the platform
acknowledges the upload (the forward stage then archives or deletes it). Each step is safe to
repeat: a file seen again after a crash has the same batch id and is only moved on. A refused
file (header not matching the schema, or an identifier left in the output) is moved to
`refused/{batch}.csv` next to its rejects report, for the site to fix and drop again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from agent import log, optout
from agent.clinical.drop import DropFolder
from agent.clinical.prepare import prepare_file
from agent.clinical.schema import ClinicalSchema
from agent.notify import Heartbeat
from agent.config import ClinicalConfig
from agent.deidentify.pseudonym import Pseudonymiser
from agent.keys import SiteKey
from agent.spool.choices import Choices
from agent.spool.state import State
from agent.spool.store import CLINICAL_OUTBOX, save_file

_log = log.get("clinical")


class ClinicalIntake:
    """A thread of the daemon, woken by watchdog and polling every `interval_s` (or `run_once`)."""

    def __init__(self, config: ClinicalConfig, schema: ClinicalSchema, pseudonyms: Pseudonymiser, state: State,
                 outbox: Path, on_queued: Callable[[], None] | None = None, key: SiteKey | None = None) -> None:
        """`key`: the site key, to match rows against the opt-out list (None: no list is applied)."""
        self.config, self.schema, self.pseudonyms, self.state = config, schema, pseudonyms, state
        self.key = key
        self.choices = Choices(state)
        self.on_queued = on_queued
        self.heartbeat = Heartbeat("clinical")
        self.outbox = outbox / CLINICAL_OUTBOX
        self.held = config.drop_folder.parent / "held"
        self.refused = config.rejects / "refused"
        self.drop = DropFolder(config.drop_folder, config.stable_s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float = 1.0) -> None:
        self.drop.watch(self._wake.set)
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="clinical", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.drop.close()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            self.heartbeat.beat()
            try:
                self.run_once()
            except Exception as exc:  # never the message: an OSError names the dropped file
                _log.error("clinical_round_failed", error=type(exc).__name__)
            self.heartbeat.idle()
            self._wake.wait(interval_s)
            self._wake.clear()

    def run_once(self) -> int:
        """Take every complete file; returns how many were taken. The first call is the start-up
        sweep of files dropped while the agent was down."""
        taken = 0
        for path in self.drop.ready():
            if self._stop.is_set():
                break
            try:
                self.take(path)
                taken += 1
            except OSError as exc:  # gone or unreadable: looked at again next round
                _log.warning("clinical_file_unreadable", error=type(exc).__name__, errno=exc.errno)
        return taken

    def take(self, path: Path) -> str:
        opted_out = None if self.key is None else optout.matcher(
            self.key, self.choices.listed_tokens(), self.choices.marked_links(), self.pseudonyms.patient_pseudonym)
        prepared = prepare_file(path, self.schema, self.pseudonyms, self.config.rejects, read=self.drop.read,
                                opted_out=opted_out)
        batch, result = prepared.batch, prepared.result
        known = self.state.clinical_batch(batch)
        if result.refused is not None:
            self._move(path, self.refused / f"{batch}.csv")
            if known is None:
                self.state.record_clinical(batch, "refused", (result.rows_in, 0, result.rows_in), None,
                                           result.refused_reason.value if result.refused_reason else "refused")
            return "refused"
        held = self.held / f"{batch}.csv"
        if known in (None, "refused"):  # refused before, accepted now: the schema was fixed
            save_file(self.outbox / f"{batch}.csv", result.csv, mode=0o600)
            # Before the batch is queued: `reidentify` and a later opt-out import find its patients.
            self.state.record_crosswalk([("patient", source, pseudonym) for source, pseudonym in result.patients.items()])
            self.state.record_clinical(batch, "queued", (result.rows_in, result.rows_out, result.rows_rejected),
                                       str(held), None)
            if self.on_queued is not None:
                self.on_queued()
        if known in (None, "refused", "queued"):
            self._move(path, held)
        else:  # the same file again, already uploaded: nothing new to send
            self.drop.finish(path)
            _log.info("clinical_file_duplicate", batch=batch, state=known)
        return "queued" if known in (None, "refused") else known

    def _move(self, path: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(target.parent, 0o700)
        self.drop.finish(path, archive_as=target)
