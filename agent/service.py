"""`nmip-agent serve`: the receiver and the pipeline, started together and stopped cleanly.

On SIGTERM or SIGINT the receiver stops accepting (associations in progress are closed; what
they had not been told was stored, the PACS sends again), the pipeline finishes or abandons the
study in hand (it stays `stable` and resumes at the next start), and the workers exit.
"""

from __future__ import annotations

import os
import resource
import signal
import stat
import threading
import time
from dataclasses import fields, replace
from datetime import datetime
from typing import TYPE_CHECKING
from pathlib import Path
from types import FrameType

from agent import log, metrics, optout
from agent.config import Config
from agent.errors import AgentError
from agent.clinical import parse_schema
from agent.clinical.intake import ClinicalIntake
from agent.deidentify import load_profile, ocr
from agent.forward.schedule import window_offset_s
from agent.notify import STUCK_AFTER_S, Notifier, RunningLock
from agent.optout import OptOutPolicy

if TYPE_CHECKING:
    from agent.observe import ObserveServer
from agent.deidentify.pseudonym import Pseudonymiser
from agent.forward import PlatformClient
from agent.forward.outbound import Forwarder, Provenance
from agent.keys import load_key_file
from agent.pipeline import Pipeline
from agent.receive import ReceiverProcesses
from agent.receive_tls import server_context
from agent.spool.state import State
from agent.spool.store import Spool

_log = log.get("service")


class NotPrivate(AgentError):
    """A folder or file of identifiable data that is not the agent's user's alone."""


def private_paths(config: Config) -> list[tuple[Path, int]]:
    """What the agent creates and keeps identifiable data in, with the mode each must have."""
    database = config.pipeline.database
    paths = [(database, 0o600), (Path(f"{database}-wal"), 0o600), (Path(f"{database}-shm"), 0o600),
             (config.spool.directory, 0o700), (config.pipeline.outbox, 0o700), (config.pipeline.quarantine, 0o700)]
    if config.clinical.enabled:
        paths += [(config.clinical.rejects, 0o700), (config.clinical.archive, 0o700)]
    return paths


_RECEIVER_STUCK_S = 60.0  # a receiver process turns its reaper every 2 s, whatever its associations do


def _changed_keys(old: Config, new: Config) -> set[str]:
    """`section.key` of every value that differs between two configurations."""
    changed = set()
    for section in fields(old):
        if section.name == "source":
            continue
        before, after = getattr(old, section.name), getattr(new, section.name)
        for key in fields(before):
            if getattr(before, key.name) != getattr(after, key.name):
                changed.add(f"{section.name}.{key.name}")
    return changed


def check_private(config: Config) -> None:
    """At start-up: each of `private_paths` that exists is owned by the agent's user and open to
    nobody else. A mode left open (an old install, a copy, a restore) is closed and said so; a path
    owned by another user stops the start, naming it."""
    for path, mode in private_paths(config):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_uid != os.geteuid():
            raise NotPrivate(f"{path}: owned by user id {st.st_uid}, not the agent's ({os.geteuid()}): it holds "
                             f"identifiable data; chown it to the agent's user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            try:
                path.chmod(mode)
            except OSError as exc:
                raise NotPrivate(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users in and cannot be "
                                 f"changed ({exc.strerror}): it holds identifiable data; make it {mode:04o}") from None
            _log.warning("private_path_mode_fixed", path=str(path), was=f"{stat.S_IMODE(st.st_mode):04o}",
                         now=f"{mode:04o}")


class Service:
    """Everything `serve` runs, built from one checked Config."""

    def __init__(self, config: Config) -> None:
        check_private(config)
        profile = load_profile(config.pipeline.profile)
        key = load_key_file(config.pipeline.key_file)
        # Everything that can refuse the start (a token file others can read, a wrong CA bundle
        # or secret, a bad schema, receive.tls's files) is checked before anything is created on disk.
        if config.receive.tls is not None:
            server_context(config.receive.tls, config.source)  # each receiver process builds its own
        client = PlatformClient(config.platform, config.source) if config.platform.enabled else None
        schema = parse_schema(config.clinical.schema, config.source) if config.clinical.enabled else None
        self.config = config
        # Taken before the database is opened (and migrated): a second serve touches nothing.
        config.pipeline.database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.running = RunningLock(config.pipeline.database)
        self.running.acquire()
        self.state = State(config.pipeline.database, upgrade=True)
        self.spool = Spool.from_config(config.spool)
        self.pipeline = Pipeline(
            self.state, self.spool, profile=config.pipeline.profile, key_file=config.pipeline.key_file,
            outbox=config.pipeline.outbox, quarantine_dir=config.pipeline.quarantine,
            quiet_period_s=config.pipeline.quiet_period_s, workers=config.pipeline.workers,
            open_associations=lambda: self.receiver.open_associations(), limits=config.limits,
            expected=(profile.fingerprint, key.key_id),
        )
        self.receiver = ReceiverProcesses(config)
        self.key_id = key.key_id
        self.profile = profile
        self.client = client
        if client is not None:
            client.open_later(window_offset_s(key.secret))
        self.forwarder = None if self.client is None else Forwarder(
            self.state, self.spool, self.client, outbox=config.pipeline.outbox,
            quarantine_dir=config.pipeline.quarantine, clinical=config.clinical,
            provenance=Provenance(profile.name, profile.version, key.key_id),
            optout_policy=OptOutPolicy(profile.optout_required, config.optout.max_age_days),
            patient_token=lambda identifier: optout.token(key, identifier))
        self.clinical = None if schema is None else ClinicalIntake(
            config.clinical, schema,
            Pseudonymiser(key, profile.pseudonym), self.state, config.pipeline.outbox,
            on_queued=self.forwarder.wake if self.forwarder is not None else None, key=key)

    def _observer(self) -> ObserveServer | None:
        if not self.config.observe.port:
            return None
        from agent.observe import ObserveServer, Readiness, StateCollector

        shared = self.receiver
        collector = StateCollector(self.config, shared.ready_count, shared.open_associations)
        client = self.client
        window = (lambda: client.window.is_open(datetime.now())) if client is not None else None
        readiness = Readiness(self.config, shared.ready_count, self.config.receive.processes, window)
        return ObserveServer(self.config, collector, readiness)

    def start(self) -> None:
        swept = self.spool.sweep(self.state.spooled_keys())
        if swept:
            _log.info("spool_swept", files=swept, reason="not recorded before a stop: never acknowledged")
        if self.config.observe.port:  # before any process starts: they inherit where to count
            metrics.enable(self.config.pipeline.database.parent / "metrics")
        self.pipeline.start()
        if self.forwarder is not None:
            self.forwarder.start()
        if self.clinical is not None:
            self.clinical.start()
        self.receiver.start()
        self.observer = self._observer()
        if self.observer is not None:
            self.observer.start()
        _log.info("agent_started", profile=self.profile.name, key_id=self.key_id,
                  quiet_period_s=self.config.pipeline.quiet_period_s, workers=self.config.pipeline.workers,
                  delivery="on" if self.forwarder is not None else "off (platform.dicomweb_url not set)",
                  clinical="on" if self.clinical is not None else "off")
        if self.profile.pixels.ocr and not ocr.available():
            _log.warning("ocr_unavailable", profile=self.profile.name,
                         detail="tesseract is not installed (Debian: tesseract-ocr tesseract-ocr-eng): every image "
                                "at risk of burned-in text that no pixel rule covers is quarantined (burned_in_risk)")

    def supervise(self) -> None:
        """Called by `serve` every half second, on the main thread."""
        self.receiver.supervise()

    def reload(self) -> None:
        """SIGHUP: take again what is safe to change live (allowed peers, upload window, bandwidth);
        name what changed that needs a restart. A file that no longer loads changes
        nothing, and says why."""
        from agent import config as config_module

        try:
            fresh = config_module.load(self.config.source)
        except AgentError as exc:
            _log.error("config_reload_refused", error=str(exc), action="nothing changed; fix the file and send SIGHUP again")
            return
        live = {"receive.allowed_peers", "platform.upload_window", "platform.bandwidth_mbit_s"}
        changed = _changed_keys(self.config, fresh)
        self.receiver.config = replace(self.receiver.config, receive=replace(
            self.receiver.config.receive, allowed_peers=fresh.receive.allowed_peers))  # a restarted process too
        late = self.receiver.reload()
        if late:
            _log.warning("config_reload_incomplete", receiver_processes=late,
                         action="those receiver processes still judge associations by the previous "
                                "receive.allowed_peers; send SIGHUP again or restart the agent")
        if self.client is not None:
            self.client.retune(fresh.platform)
        applied = sorted(changed & live)
        restart = sorted(changed - live)
        _log.info("config_reloaded", applied=applied)
        if restart:
            _log.warning("config_change_needs_restart", keys=restart, action="systemctl restart nmip-agent")
        self.config = replace(self.config, receive=replace(self.config.receive, allowed_peers=fresh.receive.allowed_peers),
                              platform=replace(self.config.platform, upload_window=fresh.platform.upload_window,
                                               bandwidth_mbit_s=fresh.platform.bandwidth_mbit_s))

    def stuck(self, limit_s: float = STUCK_AFTER_S) -> list[str]:
        """The loops that are busy in one step for longer than `limit_s` (idle ones are fine)."""
        loops = [self.pipeline.heartbeat]
        loops += [self.forwarder.heartbeat] if self.forwarder is not None else []
        loops += [self.clinical.heartbeat] if self.clinical is not None else []
        stuck = [loop.name for loop in loops if loop.stuck(limit_s)]
        return stuck + (["receivers"] if self.receiver.stuck(min(limit_s, _RECEIVER_STUCK_S)) else [])

    def status_line(self) -> str:
        """STATUS= for systemd: studies and instances per state, counts only."""
        counts = self.state.counts()
        studies = ", ".join(f"{n} {state}" for state, n in sorted(counts.get("studies", {}).items())) or "none"
        instances = ", ".join(f"{n} {state}" for state, n in sorted(counts.get("instances", {}).items())) or "none"
        return f"studies: {studies}; instances: {instances}"

    def stop(self) -> None:
        observer: ObserveServer | None = getattr(self, "observer", None)
        if observer is not None:
            observer.stop()
        self.receiver.stop()
        if self.clinical is not None:
            self.clinical.stop()
        self.pipeline.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.client is not None:
            self.client.close()
        self.state.close()
        _log.info("agent_stopped")


class _Keepalive:
    """The main thread's round every half second: supervise the receivers, tell systemd how the
    queues stand (every 10 s), and send WATCHDOG=1 only while no loop is stuck."""

    def __init__(self, service: Service, notifier: Notifier, reload: threading.Event) -> None:
        self.service, self.notifier, self.reload = service, notifier, reload
        self._next_status = self._next_watchdog = time.monotonic()
        self._reported: list[str] = []

    def run(self, stop: threading.Event) -> None:
        # Wake up regularly: the kernel may deliver SIGTERM to one of the SCP's threads, and Python
        # runs its handler only when the main thread next executes, which a bare wait() never does.
        while not stop.wait(0.5):
            if self.reload.is_set():
                self.reload.clear()
                self.notifier.send("RELOADING=1")
                self.service.reload()
                self.notifier.send("READY=1")
            self.service.supervise()
            self._notify()

    def _notify(self) -> None:
        now = time.monotonic()
        if self.notifier.enabled and now >= self._next_status:
            self._next_status = now + 10.0
            self._guarded_status()
        interval = self.notifier.watchdog_interval_s
        if interval is None or now < self._next_watchdog:
            return
        self._next_watchdog = now + min(interval, 5.0)
        stuck = self.service.stuck()
        if stuck != self._reported:
            if stuck:
                _log.error("loop_stuck", loops=stuck, action="watchdog keep-alives stopped: systemd restarts the agent")
            self._reported = stuck
        if not stuck:
            self.notifier.send("WATCHDOG=1")

    def _guarded_status(self) -> None:
        try:
            self.notifier.send(f"STATUS={self.service.status_line()}")
        except Exception as exc:  # a busy database: the next round says it
            _log.warning("status_not_sent", error=type(exc).__name__)


def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT; returns the exit code."""
    log.configure(config.log.level)
    # No process of the agent dumps core (the daemon and receivers hold received datasets): a
    # watchdog's SIGABRT would otherwise leave patients' data in the host's crash folder.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    service = Service(config)
    stop = threading.Event()

    reload = threading.Event()
    stopping_on: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only events here: logging from a handler could deadlock on the logger's lock.
        if signum == signal.SIGHUP:
            reload.set()
            return
        stopping_on.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    notifier = Notifier()
    try:
        service.start()
        notifier.send("READY=1", f"STATUS={service.status_line()}", f"MAINPID={os.getpid()}")
        _Keepalive(service, notifier, reload).run(stop)
    finally:
        if stopping_on:
            _log.info("agent_stopping", signal=stopping_on[0])
        notifier.send("STOPPING=1", "STATUS=stopping: finishing in-flight work")
        service.stop()
        service.running.release()
        notifier.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
