"""What `status` and `quarantine` show and do: read from the state database, on site.

Only opaque study keys, pseudonyms, counts, reason codes and times: a status report can be pasted
into a support ticket.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.pipeline import outbox_bytes
from agent.spool.state import State, StudyRow
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
        beyond_retention = sum(1 for s in state.studies("queued")
                               if s.updated_at < time.time() - config.spool.retention_days * 86_400)
    finally:
        state.close()
    return {
        "studies": counts["studies"],
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
        # Identifiable copies are never purged before delivery; past the retention they are reported.
        "undelivered_beyond_retention": beyond_retention,
        "clinical_batches": clinical,
    }


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
    """A study in quarantine, or a delivered one with instances the platform refused."""
    held = [i for i in state.instances(study.study_key) if i.state == "quarantined"]
    return {"study_key": study.study_key, "reason": study.reason or (held[0].reason if held else None),
            "since": study.updated_at, "instances": len(held), "study_state": study.state}


def show(config: Config, study_key: str) -> dict[str, Any] | None:
    state = State(config.pipeline.database)
    try:
        study = state.study(study_key)
        if study is None:
            return None
        return {
            "study_key": study.study_key, "state": study.state, "reason": study.reason,
            "pseudonym": study.pseudonym, "output_study": study.output_study,
            "instances": [{"sop_key": i.sop_key, "state": i.state, "reason": i.reason, "detail": i.detail}
                          for i in state.instances(study_key)],
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
