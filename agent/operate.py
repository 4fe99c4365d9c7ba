"""What `status` and `quarantine` show and do: read from the state database, on site.

Only opaque study keys, pseudonyms, counts, reason codes and times: a status report can be pasted
into a support ticket.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.deidentify.profile import optout_required
from agent.optout import OptOutPolicy
from agent.spool.choices import Choices
from agent.pipeline import outbox_bytes
from agent.forward.schedule import UploadWindow
from agent.notify import RunningLock
from agent.spool.state import InstanceRow, State, StudyRow
from agent.spool.store import Spool

_MB = 1024 * 1024


def status(config: Config) -> dict[str, Any]:
    """Counts per state, the oldest waiting study's age, disk use, and the quarantine."""
    state = State(config.pipeline.database)
    try:
        counts = state.counts()
        oldest = state.oldest("queued")
        quarantined = [_quarantine_entry(state, s) for s in state.studies_with_quarantine()]
        spool_used = state.spool_bytes()
        problem = state.platform_problem()
        clinical = state.clinical_counts()
        refused_by_platform = state.instances_refused_by_platform()
        received_day, sent_day = state.bytes_since(time.time() - 86_400)
        beyond_retention = sum(1 for s in state.studies("queued")
                               if s.updated_at < time.time() - config.spool.retention_days * 86_400)
        patients = optout_report(config, Choices(state))
    finally:
        state.close()
    holder = RunningLock(config.pipeline.database).holder()
    return {
        # Whether `serve` runs on this state database now (it holds serve.lock), and since when.
        "daemon": {"running": holder is not None, "pid": (holder or {}).get("pid"),
                   "since": (holder or {}).get("started_at")},
        "studies": counts["studies"],
        # Counts per state, a state with none left out; `excluded`: out of the profile's scope.
        "instances": counts["instances"],
        "waiting_for_delivery": counts["studies"].get("queued", 0),
        "oldest_waiting_s": None if oldest is None else round(time.time() - oldest, 1),
        "spool_mb": round(spool_used / _MB, 1),
        "spool_quota_mb": config.spool.quota_mb,
        "outbox_mb": round(outbox_bytes(config.pipeline.outbox) / _MB, 1) if config.pipeline.outbox.exists() else 0.0,
        "disk_free_mb": round(shutil.disk_usage(config.spool.directory).free / _MB)
        if config.spool.directory.exists() else None,
        "quarantine": quarantined,
        "delivery": _delivery(config, problem, refused_by_platform),
        "capacity": capacity(config, received_day, sent_day,
                             outbox_bytes(config.pipeline.outbox) if config.pipeline.outbox.exists() else 0),
        # Identifiable copies are never purged before delivery; past the retention they are reported.
        "undelivered_beyond_retention": beyond_retention,
        "clinical_batches": clinical,
        "optout": patients,
    }


def optout_report(config: Config, choices: Choices) -> dict[str, Any]:
    """The opt-out list's size and age (never its content), whether delivery waits for a newer
    one, studies found opted out, and retraction notices pending."""
    info = choices.info()
    policy = OptOutPolicy(optout_required(config.pipeline.profile), config.optout.max_age_days)
    return {"entries": info.entries, "required": policy.required, "max_age_days": policy.max_age_days,
            "age_days": None if info.imported_at is None else round((time.time() - info.imported_at) / 86_400, 1),
            "delivery_held": policy.problem(info.imported_at) if config.platform.enabled else None,
            "studies": choices.opted_out_counts(), "retractions": choices.retraction_counts()}


def window_hours(text: str) -> float:
    """Hours a day the upload window is open (24 when there is none)."""
    window = UploadWindow.parse(text)
    if window.always:
        return 24.0
    assert window.start is not None and window.end is not None
    minutes = (window.end.hour * 60 + window.end.minute) - (window.start.hour * 60 + window.start.minute)
    return (minutes % 1440) / 60


def capacity(config: Config, received_day: int, sent_day: int, waiting: int) -> dict[str, Any]:
    """What the cap and window can send a day, against what arrived in the last 24 hours: a
    warning, with the cap or window that would drain it, when the outbox grows day by day."""
    hours = window_hours(config.platform.upload_window)
    cap = config.platform.bandwidth_mbit_s
    per_day = None if not cap else int(cap * 1e6 / 8 * hours * 3600)
    report: dict[str, Any] = {"bytes_waiting": waiting, "received_last_24h_bytes": received_day,
                              "sent_last_24h_bytes": sent_day, "window_hours": round(hours, 2),
                              "bandwidth_mbit_s": cap, "capacity_per_day_bytes": per_day, "warning": None}
    if config.platform.enabled and per_day is not None and received_day > per_day:
        needed_cap = received_day * 8 / (hours * 3600) / 1e6 if hours else float("inf")
        needed_hours = received_day * 8 / (cap * 1e6) / 3600
        report["warning"] = (f"at {cap:g} Mbit/s for {hours:g} h a day the platform can take about "
                             f"{per_day / 1e9:.0f} GB a day, and {received_day / 1e9:.0f} GB arrived in the last "
                             f"24 h: the outbox grows. A cap of {needed_cap:.0f} Mbit/s"
                             + (f", or a window of {needed_hours:.1f} h," if needed_hours <= 24 else "")
                             + " would drain it")
    return report


def _delivery(config: Config, problem: dict[str, Any] | None, refused: int) -> dict[str, Any]:
    """Whether the platform is taking uploads; a problem says what kind, since when, and when next."""
    if not config.platform.enabled:
        return {"enabled": False, "note": "platform.dicomweb_url is not set: studies wait in the outbox"}
    report: dict[str, Any] = {"enabled": True, "platform": config.platform.dicomweb_url,
                              "upload_window": config.platform.upload_window or "always",
                              "instances_refused_by_platform": refused, "problem": None}
    if problem is not None:
        report["problem"] = {**problem, "since_s": round(time.time() - float(problem["since"]), 1),
                             "next_attempt_in_s": max(0.0, round(float(problem["next_attempt_at"]) - time.time(), 1))}
    return report


def _quarantine_entry(state: State, study: StudyRow) -> dict[str, Any]:
    """A study with something held on site: its held series (a series is held whole), or instances
    the platform refused. `study_state` says what became of the rest of it."""
    held = [i for i in state.instances(study.study_key) if i.state == "quarantined"]
    return {"study_key": study.study_key, "reason": _own_reason(held) or study.reason,
            "since": study.updated_at, "instances": len(held), "study_state": study.state,
            "series": _held_series(held)}


def _own_reason(held: list[InstanceRow]) -> str | None:
    """The first refusal of its own (not `series_quarantined`, which is its consequence)."""
    reasons = [i.reason for i in held if i.reason]
    return next((r for r in reasons if r not in ("series_quarantined", "study_quarantined")),
                reasons[0] if reasons else None)


def _held_series(held: list[InstanceRow]) -> list[dict[str, Any]]:
    """Each series with held instances: its key (opaque; "" when not known), how many, and why."""
    by_series: dict[str, list[InstanceRow]] = {}
    for row in held:
        by_series.setdefault(row.series_key or "", []).append(row)
    return [{"series_key": key, "instances": len(rows), "reason": _own_reason(rows),
             "reasons": dict(Counter(r.reason or "" for r in rows))}
            for key, rows in sorted(by_series.items())]


def show(config: Config, study_key: str) -> dict[str, Any] | None:
    state = State(config.pipeline.database)
    try:
        study = state.study(study_key)
        if study is None:
            return None
        instances = state.instances(study_key)
        return {
            "study_key": study.study_key, "state": study.state, "reason": study.reason,
            "pseudonym": study.pseudonym, "output_study": study.output_study,
            "held_series": _held_series([i for i in instances if i.state == "quarantined"]),
            "excluded": sum(1 for i in instances if i.state == "excluded"),
            "instances": [{"sop_key": i.sop_key, "series_key": i.series_key, "state": i.state, "reason": i.reason,
                           "detail": i.detail} for i in instances],
            "audit": [{"at": at, "sop_key": sop, "event": event, "detail": detail}
                      for at, sop, event, detail in state.audit_trail(study_key)],
        }
    finally:
        state.close()


def release(config: Config, study_key: str) -> int:
    state = State(config.pipeline.database)
    try:
        return state.release(study_key)
    finally:
        state.close()


def purge(config: Config, study_key: str) -> int:
    """Delete a quarantined study's identifiable files (spool and quarantine copies)."""
    state = State(config.pipeline.database)
    spool = Spool(config.spool.directory, quota_bytes=0, min_free_bytes=0)
    try:
        keys = state.purge(study_key)
    finally:
        state.close()
    for sop_key in keys:
        spool.remove(sop_key)
        for suffix in (".dcm", ".json"):
            (config.pipeline.quarantine / f"{sop_key}{suffix}").unlink(missing_ok=True)
    return len(keys)
