"""The state database's rules where an operator, the pipeline and delivery meet: nothing is left in
no state, and nothing of a study is stranded by an action on another part of it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.spool.first_installed import take_back_to_version_0

from agent.spool.state import SchemaTooOld, State, StudyBusy


def _study(state: State, study: str, instances: dict[str, str]) -> None:
    """Instances (sop_key -> series_key) received and the study stable."""
    for n, (sop_key, series_key) in enumerate(instances.items()):
        state.record_received(sop_key, study, 100, now=1000.0 + n, series_key=series_key)
    assert state.mark_stable(1.0, now=2000.0) == [study]


def _finish(state: State, study: str, outcomes: dict[str, tuple[str, str | None, str | None]]) -> tuple[str, list[str]]:
    rows = {row.sop_key: row for row in state.pending_instances(study)}
    return state.finish_study(
        study, {k: (s, f"out/{k}.dcm" if s == "deidentified" else None, r, None, rows[k].series_key)
                for k, (s, _, r) in outcomes.items()},
        pseudonym="P", output_study="2.25.1", crosswalk=[],
        expected_received_at={k: rows[k].received_at for k in outcomes})


def test_a_release_while_the_study_is_processed_is_not_stranded(tmp_path: Path) -> None:
    """An operator releases held instances while the pipeline is on the study: the study stays
    stable for the next round instead of settling with them still `received`."""
    state = State(tmp_path / "state.sqlite")
    _study(state, "S", {"a": "x", "b": "y"})
    assert _finish(state, "S", {"a": ("deidentified", None, None), "b": ("quarantined", None, "burned_in_annotation")})[0] == "queued"
    state.record_received("c", "S", 100, now=3000.0, series_key="y")
    state.mark_stable(1.0, now=4000.0)
    pending = state.pending_instances("S")  # the pipeline's round starts with c alone
    assert [r.sop_key for r in pending] == ["c"]
    assert state.release("S") == 1  # b, released meanwhile
    assert _finish(state, "S", {"c": ("deidentified", None, None)})[0] == "stable"
    assert [r.sop_key for r in state.pending_instances("S")] == ["b"]


def test_a_study_is_not_delivered_while_new_instances_wait(tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite")
    _study(state, "S", {"a": "x"})
    _finish(state, "S", {"a": ("deidentified", None, None)})
    state.record_sent("S", {"a": ("0" * 64, 100)}, {})
    state.record_received("b", "S", 100, now=3000.0, series_key="x")
    state.mark_stable(1.0, now=4000.0)
    _finish(state, "S", {"b": ("deidentified", None, None)})
    # The manifest PUT of the first round comes back now: b is not sent, so the study is not done.
    assert state.study_delivered("S") is False
    assert state.study("S").state == "queued"  # type: ignore[union-attr]


def test_purging_held_series_leaves_the_rest_of_the_study_to_go(tmp_path: Path) -> None:
    """`quarantine purge` of a queued study with a held series purges the held instances only."""
    state = State(tmp_path / "state.sqlite")
    _study(state, "S", {"a": "x", "b": "y"})
    _finish(state, "S", {"a": ("deidentified", None, None), "b": ("quarantined", None, "burned_in_annotation")})
    assert state.purge("S") == ["b"]
    assert state.study("S").state == "queued"  # type: ignore[union-attr]
    assert [r.sop_key for r in state.instances_in("S", "deidentified")] == ["a"]
    assert state.due_studies(now=10_000.0) == ["S"]


def test_purging_a_study_being_processed_is_refused(tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite")
    _study(state, "S", {"a": "x"})
    with pytest.raises(StudyBusy, match="being de-identified"):
        state.purge("S")


def test_an_instance_resent_after_delivery_does_not_count_as_sent(tmp_path: Path) -> None:
    """A delivered instance resent and now excluded: the study has nothing sent or to send, so it
    is not queued (which would have ended as `platform_rejected`)."""
    state = State(tmp_path / "state.sqlite")
    _study(state, "S", {"a": "x"})
    _finish(state, "S", {"a": ("deidentified", None, None)})
    state.record_sent("S", {"a": ("0" * 64, 100)}, {})
    state.record_received("a", "S", 100, now=3000.0, series_key="x")
    state.mark_stable(1.0, now=4000.0)
    assert _finish(state, "S", {"a": ("excluded", None, "out_of_scope")}) == ("excluded", ["a"])


def test_only_the_service_upgrades_a_database_that_holds_data(tmp_path: Path) -> None:
    """A command run between a package upgrade and the service's restart leaves the schema alone."""
    path = tmp_path / "state.sqlite"
    state = State(path)
    _study(state, "S", {"a": "x"})
    state.close()
    take_back_to_version_0(path)
    with pytest.raises(SchemaTooOld, match="restart the service"):
        State(path)
    upgraded = State(path, upgrade=True)
    assert upgraded.schema_version() >= 1 and [r.sop_key for r in upgraded.pending_instances("S")] == ["a"]
