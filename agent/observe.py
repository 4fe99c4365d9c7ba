"""The local health and metrics endpoint: /healthz, /readyz and /metrics (Prometheus).

A thread of the daemon serving `observe.bind`:`observe.port` (127.0.0.1 by default; off with
port 0), for the hospital's monitoring. The figures are read from the state database and the
disk when scraped, so they are the same whichever process (receiver, worker, delivery) did the
work, and the same that `status` shows: counts and ages only, never an identifier (the opaque
study keys are not labels either: one series per state or reason, not per study).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agent import log, metrics
from agent.config import Config
from agent.operate import capacity
from agent.pipeline import outbox_bytes
from agent.deidentify.profile import optout_required
from agent.optout import OptOutPolicy
from agent.spool.choices import Choices
from agent.spool.state import State

_log = log.get("observe")


class StateCollector:
    """Prometheus figures read from the state database and the disk at each scrape."""

    def __init__(self, config: Config, receivers_ready: Callable[[], int], associations: Callable[[], int]) -> None:
        self.config = config
        self.receivers_ready, self.associations = receivers_ready, associations

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = State(self.config.pipeline.database)
        try:
            counts = state.counts()
            reasons = state.reasons()
            oldest = state.oldest("queued")
            spool = state.spool_bytes()
            problem = state.platform_problem()
            received_day, sent_day = state.bytes_since(time.time() - 86_400)
            choices = Choices(state)
            listed, retractions = choices.info(), choices.retraction_counts()
        finally:
            state.close()
        waiting = outbox_bytes(self.config.pipeline.outbox) if self.config.pipeline.outbox.exists() else 0
        room = capacity(self.config, received_day, sent_day, waiting)
        yield GaugeMetricFamily("nmip_outbox_bytes", "De-identified bytes waiting for the platform.", value=float(waiting))
        yield GaugeMetricFamily("nmip_received_bytes_last_24h", "Bytes received in the last 24 hours.",
                                value=float(received_day))
        yield GaugeMetricFamily("nmip_sent_bytes_last_24h", "Bytes the platform took in the last 24 hours (the drain).",
                                value=float(sent_day))
        yield GaugeMetricFamily("nmip_capacity_bytes_per_day", "What the bandwidth cap and upload window can send a day "
                                "(0: no cap).", value=float(room["capacity_per_day_bytes"] or 0))
        yield GaugeMetricFamily("nmip_capacity_short", "1 when more arrived in the last 24 h than the cap and window "
                                "can send a day: the outbox grows.", value=1.0 if room["warning"] else 0.0)
        yield _labelled("nmip_studies", "Studies per state.", "state", counts["studies"])
        yield _labelled("nmip_instances", "Instances per state (received, deidentified, queued, delivered, "
                        "quarantined, excluded, purged).", "state", counts["instances"])
        quarantined = GaugeMetricFamily("nmip_quarantined_instances", "Instances held on site, per reason.",
                                        labels=["reason"])
        excluded = GaugeMetricFamily("nmip_excluded_instances", "Instances out of the profile's scope, per reason.",
                                     labels=["reason"])
        for (kind, reason), n in sorted(reasons.items()):
            (quarantined if kind == "quarantined" else excluded).add_metric([reason or "unknown"], n)
        yield quarantined
        yield excluded
        yield GaugeMetricFamily("nmip_oldest_waiting_study_seconds", "Age of the oldest study waiting for delivery.",
                                value=0.0 if oldest is None else max(0.0, time.time() - oldest))
        yield GaugeMetricFamily("nmip_optout_list_entries", "Identifiers on the opt-out list.", value=float(listed.entries))
        yield GaugeMetricFamily("nmip_optout_list_age_seconds", "Since the opt-out list was imported (-1: never).",
                                value=-1.0 if listed.imported_at is None else time.time() - listed.imported_at)
        yield GaugeMetricFamily("nmip_retractions_pending", "Retraction notices not yet acknowledged by the platform.",
                                value=float(retractions["pending"]))
        yield GaugeMetricFamily("nmip_spool_bytes", "Bytes of identifiable copies in the spool.", value=float(spool))
        yield GaugeMetricFamily("nmip_spool_quota_bytes", "spool.quota_mb in bytes.",
                                value=float(self.config.spool.quota_mb << 20))
        yield GaugeMetricFamily("nmip_disk_free_bytes", "Free bytes on the spool's file system.", value=_free(self.config))
        yield GaugeMetricFamily("nmip_platform_failing_seconds", "For how long uploads have been failing (0: they are "
                                "not).", value=0.0 if problem is None else max(0.0, time.time() - float(problem["since"]
                                                                                                         or 0)))  # type: ignore[arg-type]
        yield GaugeMetricFamily("nmip_receivers_ready", "Receiver processes accepting associations.",
                                value=float(self.receivers_ready()))
        yield GaugeMetricFamily("nmip_associations_open", "DICOM associations open now.", value=float(self.associations()))


def _labelled(name: str, documentation: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([str(key)], n)
    return family


def _free(config: Config) -> float:
    try:
        return float(shutil.disk_usage(config.spool.directory).free)
    except OSError:
        return 0.0


class Readiness:
    """What /readyz checks: the SCP listens, the database takes a write, the disk is above its
    floor, and, when delivery is on and the upload window open, the platform is reachable."""

    def __init__(self, config: Config, receivers_ready: Callable[[], int], processes: int,
                 window_open: Callable[[], bool] | None) -> None:
        self.config, self.receivers_ready, self.processes = config, receivers_ready, processes
        self.window_open = window_open

    def problems(self) -> list[str]:
        found = []
        if self.receivers_ready() < self.processes:
            found.append("the DICOM listener is not accepting on every receiver process")
        state = State(self.config.pipeline.database)
        try:
            try:
                state.check_writable()
            except Exception as exc:  # sqlite3 errors name no value
                found.append(f"the state database does not take a write ({type(exc).__name__})")
            problem = state.platform_problem()
        finally:
            state.close()
        if self.config.platform.enabled:
            held = OptOutPolicy(optout_required(self.config.pipeline.profile), self.config.optout.max_age_days)
            state = State(self.config.pipeline.database)
            try:
                problem_text = held.problem(Choices(state).info().imported_at)
            finally:
                state.close()
            if problem_text:
                found.append(f"delivery held: {problem_text}")
        if _free(self.config) < self.config.spool.min_free_mb << 20:
            found.append(f"free disk below spool.min_free_mb ({self.config.spool.min_free_mb} MB)")
        stale = self.config.observe.platform_stale_minutes * 60
        if (self.window_open is not None and self.window_open() and problem is not None
                and time.time() - float(problem["since"] or 0) > stale):  # type: ignore[arg-type]
            found.append(f"the platform has not been reached for more than {self.config.observe.platform_stale_minutes}"
                         f" minutes ({problem['kind']})")
        return found


class ObserveServer:
    """The endpoint's thread; `stop` closes it."""

    def __init__(self, config: Config, collector: StateCollector, readiness: Readiness) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        metrics.collect_into(registry)
        handler = _handler(registry, readiness)
        server_class = _IPv6Server if ":" in config.observe.bind else ThreadingHTTPServer  # observe.bind: ::1
        self.server = server_class((config.observe.bind, config.observe.port), handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="observe", daemon=True)

    def start(self) -> None:
        self._thread.start()
        _log.info("observe_listening", bind=self.server.server_address[0], port=self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(registry: CollectorRegistry, readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # an idle connection gives its thread back: the unit's TasksMax is shared
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif self.path == "/readyz":
                problems = readiness.problems()
                body = ("ready\n" if not problems else "not ready: " + "; ".join(problems) + "\n").encode()
                self._send(200 if not problems else 503, body, "text/plain; charset=utf-8")
            elif self.path == "/metrics":
                try:
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                except Exception as exc:  # a busy database: the next scrape gets it
                    self._send(503, f"metrics unavailable ({type(exc).__name__})\n".encode(), "text/plain")
            else:
                self._send(404, b"not found: /healthz, /readyz, /metrics\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # the journal gets the agent's own events
            pass

    return Handler
