"""Event counters for /metrics, shared by the agent's processes (prometheus-client multiprocess mode).

What is a state (instances per state, bytes waiting) is read from the state database at each
scrape (agent/observe.py). What is an event and leaves no row (an association refused, an
upload's latency, a failed request) is counted here: receivers are processes of their own, so
`serve` points every process at one folder (`enable`) before it starts any, and the scrape adds
the folder up. Labels are reasons and kinds from fixed lists, never a value a sender sent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import Counter, Histogram, values
from prometheus_client.core import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

_FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

associations = Counter("nmip_associations", "DICOM associations accepted, and connections or associations "
                       "refused, by outcome and reason.", ["outcome", "reason"])
upload_seconds = Histogram("nmip_upload_seconds", "Time of each request to the platform that succeeded, per "
                           "endpoint.", ["endpoint"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
upload_failures = Counter("nmip_upload_failures", "Requests to the platform that failed, per endpoint and kind "
                          "(unreachable, tls, authentication, server, rejected).", ["endpoint", "kind"])


def enable(folder: Path) -> None:
    """Count into `folder` (emptied: counters restart with the agent, as Prometheus expects) from
    this process and from every process it starts afterwards, which inherit the variable."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    os.environ[_FOLDER_VARIABLE] = str(folder)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def collect_into(registry: CollectorRegistry) -> None:
    """Add every process's counters to `registry`, for the scrape (nothing when `enable` was not called)."""
    folder = os.environ.get(_FOLDER_VARIABLE)
    if folder:
        MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]


def association_accepted() -> None:
    associations.labels("accepted", "").inc()


def association_refused(reason: str) -> None:
    associations.labels("refused", reason).inc()
