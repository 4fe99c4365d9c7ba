"""An upgrade over a site's database: the schema as first installed (no `user_version`, no series),
with studies in every state, is migrated forward on start and loses nothing.

The old database is made the way a site made it: by running the agent (delivered and purged,
quarantined under the old whole-study rule, queued, receiving, stable), then taking away what
later versions added (the series column and its index; patients' choices; the schema version) and writing the old
rule's `study_quarantined` where this version writes `series_quarantined`.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from agent.spool.state import SCHEMA_VERSION
from tests.peers.platform import Platform, central_platform, clean_platform  # noqa: F401
from tests.scenarios.daemon import Daemon, storescu, wait_for
from tests.spool.first_installed import take_back_to_version_0
from tests.scenarios.test_delivery import agent_for, wait_delivered
from tests.synthetic import Patient, make_study, write
from tests.peers.dcmtk import dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")


def _send(agent: Daemon, folder: Path, patient: Patient, *, burned: bool = False) -> list[Path]:
    study = make_study(patient, n_series=2 if not burned else 1, n_per_series=2, plant=False)
    if burned:
        study[0].BurnedInAnnotation = "YES"
    files = [write(ds, folder / f"{i}.dcm") for i, ds in enumerate(study)]
    assert storescu(agent.port, files).returncode == 0
    return files


def _as_first_installed(database: Path) -> None:
    """Take the database back to schema version 0, as sites have it."""
    take_back_to_version_0(database)
    db = sqlite3.connect(database)
    try:
        db.execute("UPDATE instances SET reason = 'study_quarantined' WHERE reason = 'series_quarantined'")
        db.execute("DELETE FROM audit WHERE event = 'state_schema_migrated'")
        db.commit()
        columns = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
        assert "series_key" not in columns
    finally:
        db.close()


def _states(database: Path) -> tuple[dict[str, str], dict[str, str]]:
    db = sqlite3.connect(database)
    try:
        studies = dict(db.execute("SELECT study_key, state FROM studies").fetchall())
        instances = dict(db.execute("SELECT sop_key, state FROM instances").fetchall())
        return studies, instances
    finally:
        db.close()


def test_an_old_database_with_studies_in_every_state_upgrades_and_loses_none(
        tmp_path: Path, clean_platform: Platform) -> None:
    root = tmp_path / "agent"
    with agent_for(root, clean_platform) as agent:  # delivered and purged; quarantined
        _send(agent, tmp_path / "purged", Patient(patient_id="HOSP000001"))
        _send(agent, tmp_path / "held", Patient(patient_id="HOSP000002"), burned=True)
        wait_delivered(agent, 1)
        agent.wait_queued(0)
    with Daemon(root) as agent:  # no platform: de-identified, queued
        _send(agent, tmp_path / "queued", Patient(patient_id="HOSP000003"))
        wait_for(lambda: agent.status()["studies"].get("queued") == 1, 60, 0.3, "a queued study")
    with Daemon(root, pipeline__quiet_period_s=3600) as agent:  # received, never quiet
        _send(agent, tmp_path / "receiving", Patient(patient_id="HOSP000004"))
        _send(agent, tmp_path / "stable", Patient(patient_id="HOSP000005"))
        wait_for(lambda: agent.status()["studies"].get("receiving") == 2, 60, 0.3, "two receiving studies")
    database = root / "state.sqlite"
    db = sqlite3.connect(database)
    stable = db.execute("SELECT study_key FROM studies WHERE state = 'receiving' LIMIT 1").fetchone()[0]
    db.execute("UPDATE studies SET state = 'stable' WHERE study_key = ?", (stable,))
    db.commit()
    db.close()
    _as_first_installed(database)
    studies_before, instances_before = _states(database)
    assert sorted(studies_before.values()) == ["purged", "quarantined", "queued", "receiving", "stable"]

    with agent_for(root, clean_platform) as agent:
        report = wait_delivered(agent, 4, timeout=120)
        quarantine = report["quarantine"]
    studies_after, instances_after = _states(database)

    assert set(instances_after) == set(instances_before)  # every instance still accounted for
    assert set(studies_after) == set(studies_before)
    assert sorted(studies_after.values()) == ["purged", "purged", "purged", "purged", "quarantined"]
    assert len(clean_platform.stored_instances()) == 4 * 4
    assert [(q["reason"], q["instances"]) for q in quarantine] == [("burned_in_annotation", 2)]
    assert {r for s in quarantine[0]["series"] for r in s["reasons"]} == {"burned_in_annotation", "study_quarantined"}
    db = sqlite3.connect(database)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # One audit event per step taken, each in its own transaction.
        assert db.execute("SELECT COUNT(*) FROM audit WHERE event = 'state_schema_migrated'").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()
    kept = root / "state.sqlite.v0"  # the database as it was, before the first migration
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    old = sqlite3.connect(kept)
    try:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 0
        assert dict(old.execute("SELECT study_key, state FROM studies").fetchall()) == studies_before
    finally:
        old.close()


def test_a_database_from_a_newer_agent_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    """A downgrade would misread a newer schema: the agent refuses to start and says why."""
    agent = Daemon(tmp_path / "agent")
    database = tmp_path / "agent" / "state.sqlite"
    db = sqlite3.connect(database)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(AssertionError, match="newer than this agent"):
        agent.start()
    agent.stop()
