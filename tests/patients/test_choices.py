"""Patients' choices in the state database: the list as tokens only, every study of a patient on
it found (whichever comes first, the import or the study), nothing more of it sent, what was sent
retracted once, and an access log nobody can quietly edit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent import optout
from agent.keys import SiteKey
from agent.spool.choices import Choices
from agent.spool.state import State

NHS = "9434765919"
HOSPITAL = "RXX100001"
OTHER = "RXX200002"
SHA = "0" * 64


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(tmp_path / "state.sqlite")


def _import(choices: Choices, key: SiteKey, *identifiers: str):  # type: ignore[no-untyped-def]
    return choices.replace_list(optout.tokens(key, identifiers), lambda i: optout.token(key, i), "tester")


def _received(state: State, study: str, sops: list[str], at: float = 1000.0) -> None:
    for n, sop in enumerate(sops):
        state.record_received(sop, study, 100, now=at + n, series_key="x")
    assert study in state.mark_stable(1.0, now=at + 1000.0)


def _finish(state: State, study: str, outcomes: dict[str, str], *, tokens: frozenset[str] = frozenset(),
            pseudonym: str = "PSEUDO-1", output_study: str = "2.25.1",
            crosswalk: list[tuple[str, str, str]] | None = None, link: bool = True) -> str:
    """De-identify the study's pending instances: sop -> 'deidentified' | 'quarantined'."""
    rows = {row.sop_key: row for row in state.pending_instances(study)}
    done = state.finish_study(
        study, {sop: (st, f"out/{sop}.dcm" if st == "deidentified" else None,
                      "burned_in_annotation" if st == "quarantined" else None, None, "x")
                for sop, st in outcomes.items()},
        pseudonym=pseudonym, output_study=output_study, crosswalk=crosswalk or [],
        expected_received_at={sop: rows[sop].received_at for sop in outcomes}, patient_tokens=tokens,
        patient_link=pseudonym if link else None)
    return done[0]


def _retractions(state: State) -> list[tuple[str, str]]:
    return list(state.connection().execute("SELECT output_study, study_key FROM retractions ORDER BY output_study"))


def _states(state: State, study: str) -> dict[str, tuple[str, str | None]]:
    return {row.sop_key: (row.state, row.reason) for row in state.instances(study)}


# -- the list ------------------------------------------------------------------------------------


def test_each_import_reports_what_it_added_and_removed(state: State, site_key: SiteKey) -> None:
    choices = Choices(state)
    assert choices.info().imported_at is None and choices.info().entries == 0
    first = _import(choices, site_key, NHS, HOSPITAL, "943 476 5919")  # one patient written twice
    assert (first.entries, first.added, first.removed) == (2, 2, 0)
    second = _import(choices, site_key, HOSPITAL, OTHER)
    assert (second.entries, second.added, second.removed) == (2, 1, 1)
    again = _import(choices, site_key, "rxx-200002", "rxx 100001")
    assert (again.entries, again.added, again.removed) == (2, 0, 0)
    info = choices.info()
    assert info.entries == 2 and info.operator == "tester" and info.imported_at is not None
    assert choices.listed(optout.tokens(site_key, [OTHER])) and not choices.listed(optout.tokens(site_key, [NHS]))


def test_the_database_never_holds_a_listed_identifier(tmp_path: Path, state: State, site_key: SiteKey) -> None:
    """Only keyed tokens are kept: the database (and its WAL) cannot say who opted out."""
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [NHS, HOSPITAL]))
    choices = Choices(state)
    _import(choices, site_key, "943 476 5919", HOSPITAL, "RXX300003")
    _import(choices, site_key, NHS, "rxx100001", "RXX300003", "RXX400004")
    assert choices.info().entries == 4
    files = [p for p in tmp_path.iterdir() if p.name.startswith("state.sqlite")]
    assert any(p.name.endswith("-wal") for p in files)
    for path in files:
        data = path.read_bytes()
        for plain in (NHS, "943 476 5919", HOSPITAL, "rxx100001", "RXX300003", "RXX400004"):
            assert plain.encode() not in data, (path.name, plain)


def test_a_study_recorded_before_an_import_is_marked_by_it(state: State, site_key: SiteKey) -> None:
    _received(state, "S", ["a"])
    _received(state, "T", ["t"], at=5000.0)
    assert _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL])) == "queued"
    assert _finish(state, "T", {"t": "deidentified"}, tokens=optout.tokens(site_key, [OTHER]),
                   pseudonym="PSEUDO-2", output_study="2.25.2") == "queued"
    assert state.due_studies(now=10**10) == ["S", "T"]
    summary = _import(Choices(state), site_key, "rxx100001")
    assert (summary.studies_found, summary.retractions_queued) == (1, 0)  # nothing of S was sent
    assert state.study("S").opted_out_at is not None  # type: ignore[union-attr]
    assert state.study("T").opted_out_at is None  # type: ignore[union-attr]
    assert state.due_studies(now=10**10) == ["T"]  # S is never sent
    assert Choices(state).unsettled() == ["S"]
    assert Choices(state).study_opted_out("S") and not Choices(state).study_opted_out("T")


def test_a_study_recorded_after_an_import_is_marked_at_finish(state: State, site_key: SiteKey) -> None:
    _import(Choices(state), site_key, "943-476-5919")
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [NHS, HOSPITAL]))
    assert state.study("S").opted_out_at is not None  # type: ignore[union-attr]
    assert "study_opted_out" in [event for _, _, event, _ in state.audit_trail("S")]
    assert state.due_studies(now=10**10) == []
    assert Choices(state).unsettled() == ["S"]


def test_a_study_found_by_the_crosswalk_patient_id_is_marked(state: State, site_key: SiteKey) -> None:
    """De-identified before tokens were recorded: the crosswalk's Patient ID finds it."""
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, pseudonym="PSEUDO-H",
            crosswalk=[("patient", HOSPITAL, "PSEUDO-H")])
    _received(state, "T", ["t"], at=5000.0)
    _finish(state, "T", {"t": "deidentified"}, pseudonym="PSEUDO-O", output_study="2.25.2",
            crosswalk=[("patient", OTHER, "PSEUDO-O")])
    summary = _import(Choices(state), site_key, "rxx100001")
    assert summary.studies_found == 1
    assert state.study("S").opted_out_at is not None  # type: ignore[union-attr]
    assert state.study("T").opted_out_at is None  # type: ignore[union-attr]
    assert state.due_studies(now=10**10) == ["T"]
    assert Choices(state).opted_out_pseudonyms(lambda i: optout.token(site_key, i)) == {"PSEUDO-H"}


def test_an_nhs_number_on_the_list_takes_the_hospital_number_seen_with_it(state: State, site_key: SiteKey) -> None:
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL, NHS]))
    _received(state, "T", ["t"], at=5000.0)
    _finish(state, "T", {"t": "deidentified"}, tokens=optout.tokens(site_key, [OTHER]), output_study="2.25.2",
            pseudonym="PSEUDO-2")  # another patient
    choices = Choices(state)
    _import(choices, site_key, NHS)
    listed, links = choices.listed_tokens(), choices.marked_links()
    assert listed == {optout.token(site_key, NHS)} and links == {"PSEUDO-1"}  # the list itself stays as imported
    pseudonym_of = {HOSPITAL: "PSEUDO-1", OTHER: "PSEUDO-2"}.get
    matches = optout.matcher(site_key, listed, links, lambda i: pseudonym_of(optout.normalise(i)) or "")
    assert matches("rxx100001") and not matches(OTHER)  # the patient's clinical rows, by hospital number
    # A later study carrying the hospital number alone is the same patient's.
    _received(state, "U", ["u"], at=9000.0)
    _finish(state, "U", {"u": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL]), output_study="2.25.3")
    assert state.study("U").opted_out_at is not None  # type: ignore[union-attr]
    assert state.due_studies(now=10**10) == ["T"]


# -- settling a study found opted out ------------------------------------------------------------


def test_settling_excludes_what_is_left_purges_what_was_delivered_and_retracts_once(state: State,
                                                                                     site_key: SiteKey) -> None:
    _received(state, "S", ["a", "b", "c"])
    _finish(state, "S", {"a": "deidentified", "b": "deidentified", "c": "quarantined"},
            tokens=optout.tokens(site_key, [HOSPITAL]))
    state.record_sent("S", {"a": (SHA, 100)}, {})  # a delivered, b still to send, c held
    summary = _import(Choices(state), site_key, HOSPITAL)
    assert (summary.studies_found, summary.retractions_queued) == (1, 1)
    choices = Choices(state)
    assert choices.settle("S") == 3
    assert _states(state, "S") == {"a": ("purged", None), "b": ("excluded", "opted_out"),
                                   "c": ("excluded", "opted_out")}
    assert all(row.output is None for row in state.instances("S") if row.state == "excluded")
    study = state.study("S")
    assert study is not None and (study.state, study.reason, study.opt_out_settled) == ("excluded", "opted_out", 1)
    assert _retractions(state) == [("2.25.1", "S")]  # the import's, not a second one
    assert choices.unsettled() == [] and choices.opted_out_counts() == {"studies": 1, "unsettled": 0}
    assert state.due_studies(now=10**10) == []


def test_settling_a_study_marked_at_finish_queues_the_retraction_itself(state: State, site_key: SiteKey) -> None:
    """Delivered before tokens were recorded; a follow-up instance marks it at finish."""
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"})
    state.record_sent("S", {"a": (SHA, 100)}, {})
    assert state.study_delivered("S")
    assert _import(Choices(state), site_key, HOSPITAL).studies_found == 0
    _received(state, "S", ["b"], at=5000.0)
    assert _finish(state, "S", {"b": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL])) == "queued"
    assert _retractions(state) == []
    assert Choices(state).settle("S") == 2
    assert _states(state, "S") == {"a": ("purged", None), "b": ("excluded", "opted_out")}
    assert _retractions(state) == [("2.25.1", "S")]
    assert Choices(state).settle("S") == 0  # settled: nothing changes, no second notice
    assert _retractions(state) == [("2.25.1", "S")]


def test_settling_a_study_nothing_of_which_was_sent_queues_no_retraction(state: State, site_key: SiteKey) -> None:
    _received(state, "S", ["a", "b"])
    _finish(state, "S", {"a": "deidentified", "b": "quarantined"}, tokens=optout.tokens(site_key, [HOSPITAL]))
    _import(Choices(state), site_key, HOSPITAL)
    assert Choices(state).settle("S") == 2
    assert _states(state, "S") == {"a": ("excluded", "opted_out"), "b": ("excluded", "opted_out")}
    assert _retractions(state) == []
    assert state.study("S").state == "excluded"  # type: ignore[union-attr]


def test_a_study_being_received_again_is_left_to_the_pipeline(state: State, site_key: SiteKey) -> None:
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL]))
    _import(Choices(state), site_key, HOSPITAL)
    state.record_received("b", "S", 100, now=9000.0, series_key="x")
    assert Choices(state).unsettled() == []
    assert Choices(state).settle("S") == 0
    assert _states(state, "S")["a"] == ("deidentified", None)


# -- retraction notices --------------------------------------------------------------------------


def test_a_batch_in_flight_when_the_study_is_marked_is_retracted(state: State, site_key: SiteKey) -> None:
    _received(state, "S", ["a", "b"])
    _finish(state, "S", {"a": "deidentified", "b": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL]))
    assert _import(Choices(state), site_key, HOSPITAL).retractions_queued == 0
    state.record_sent("S", {"a": (SHA, 100)}, {})  # the platform acknowledged it after the import
    assert _retractions(state) == [("2.25.1", "S")]
    state.record_sent("S", {"b": (SHA, 100)}, {})
    assert _retractions(state) == [("2.25.1", "S")]


def test_a_study_not_on_the_list_queues_no_retraction_when_sent(state: State, site_key: SiteKey) -> None:
    _import(Choices(state), site_key, OTHER)
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL]))
    state.record_sent("S", {"a": (SHA, 100)}, {})
    assert _retractions(state) == []


def test_retraction_notices_are_retried_then_acknowledged(state: State, site_key: SiteKey) -> None:
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL]))
    state.record_sent("S", {"a": (SHA, 100)}, {})
    _import(Choices(state), site_key, HOSPITAL)
    choices = Choices(state)
    now = 10**10
    [due] = choices.due_retractions(now=now)
    assert (due.output_study, due.study_key, due.attempts) == ("2.25.1", "S", 0)
    assert choices.retraction_counts() == {"pending": 1, "acknowledged": 0}
    choices.retraction_postponed("2.25.1", now + 60, "HTTP 503")
    assert choices.due_retractions(now=now) == []
    [again] = choices.due_retractions(now=now + 61)
    assert again.attempts == 1
    choices.retraction_acknowledged("2.25.1")
    assert choices.due_retractions(now=now + 10**6) == []
    assert choices.retraction_counts() == {"pending": 0, "acknowledged": 1}
    assert "retraction_acknowledged" in [event for _, _, event, _ in state.audit_trail("S")]


# -- the access log ------------------------------------------------------------------------------


def _logged(state: State) -> Choices:
    choices = Choices(state)
    choices.log_access("alice (sudo by bob)", "reidentify", "pseudonym PSEUDO-1", "incidental finding, ticket 4411")
    choices.log_access("alice", "quarantine_release", "study S", "profile fixed, ticket 4412")
    choices.log_access("carol", "quarantine_purge", "study T", "duplicate of study S, ticket 4413")
    return choices


def test_the_access_log_keeps_who_did_what_and_why(state: State) -> None:
    choices = _logged(state)
    entries = choices.access_log()
    assert [(e.operator, e.action, e.subject, e.reason) for e in entries] == [
        ("alice (sudo by bob)", "reidentify", "pseudonym PSEUDO-1", "incidental finding, ticket 4411"),
        ("alice", "quarantine_release", "study S", "profile fixed, ticket 4412"),
        ("carol", "quarantine_purge", "study T", "duplicate of study S, ticket 4413")]
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert all(e.at > 0 for e in entries)
    assert choices.verify_access_log() is None


@pytest.mark.parametrize("statement", ["UPDATE access_log SET reason = 'nothing to see' WHERE id = 1",
                                       "DELETE FROM access_log WHERE id = 2", "DELETE FROM access_log"])
def test_the_access_log_refuses_updates_and_deletes(tmp_path: Path, state: State, statement: str) -> None:
    _logged(state)
    other = sqlite3.connect(tmp_path / "state.sqlite")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute(statement)
        other.rollback()
    finally:
        other.close()
    assert len(Choices(state).access_log()) == 3


def _behind_the_agents_back(path: Path, statement: str) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute("DROP TRIGGER access_log_no_update")
        db.execute("DROP TRIGGER access_log_no_delete")
        db.execute(statement)
        db.commit()
    finally:
        db.close()


def test_an_edit_behind_the_agents_back_is_found(tmp_path: Path, state: State) -> None:
    choices = _logged(state)
    second = choices.access_log()[1].id
    _behind_the_agents_back(tmp_path / "state.sqlite", f"UPDATE access_log SET reason = 'routine' WHERE id = {second}")
    assert choices.verify_access_log() == second


def test_an_operator_rewritten_behind_the_agents_back_is_found(tmp_path: Path, state: State) -> None:
    choices = _logged(state)
    first = choices.access_log()[0].id
    _behind_the_agents_back(tmp_path / "state.sqlite", f"UPDATE access_log SET operator = 'carol' WHERE id = {first}")
    assert choices.verify_access_log() == first


def test_an_entry_removed_behind_the_agents_back_is_found(tmp_path: Path, state: State) -> None:
    choices = _logged(state)
    entries = choices.access_log()
    _behind_the_agents_back(tmp_path / "state.sqlite", f"DELETE FROM access_log WHERE id = {entries[1].id}")
    assert choices.verify_access_log() == entries[2].id


def test_clinical_rows_queued_before_the_import_are_withheld_by_the_linked_hospital_number(
        state: State, site_key: SiteKey) -> None:
    """The list names the NHS number; the patient's images (all held on site, so their study has
    no pseudonym) linked it to the hospital number their clinical rows were pseudonymised by."""
    _received(state, "S", ["a"])
    state.finish_study("S", {"a": ("quarantined", None, "burned_in_annotation", None, "x")}, pseudonym=None,
                       output_study=None, crosswalk=[], patient_tokens=optout.tokens(site_key, [HOSPITAL, NHS]),
                       expected_received_at={"a": state.pending_instances("S")[0].received_at},
                       patient_link="PSEUDO-H")  # the worker's pseudonym of its Patient ID, held or not
    state.record_crosswalk([("patient", HOSPITAL, "PSEUDO-H"), ("patient", OTHER, "PSEUDO-O")])
    _import(Choices(state), site_key, NHS)
    assert Choices(state).opted_out_pseudonyms(lambda i: optout.token(site_key, i)) == {"PSEUDO-H"}


def test_an_earlier_study_without_tokens_is_found_through_the_hospital_number_linked_to_the_list(
        state: State, site_key: SiteKey) -> None:
    """The national list names NHS numbers; a study de-identified before tokens were recorded has
    only its crosswalk Patient ID (the hospital number). A later study of the patient links the
    two: the import finds the earlier study too, and retracts it."""
    _received(state, "OLD", ["a"])
    _finish(state, "OLD", {"a": "deidentified"}, pseudonym="PSEUDO-H", crosswalk=[("patient", HOSPITAL, "PSEUDO-H")])
    state.record_sent("OLD", {"a": (SHA, 100)}, {})
    _received(state, "NEW", ["b"], at=5000.0)
    _finish(state, "NEW", {"b": "deidentified"}, pseudonym="PSEUDO-H", output_study="2.25.2",
            crosswalk=[("patient", HOSPITAL, "PSEUDO-H")], tokens=optout.tokens(site_key, [HOSPITAL, NHS]))
    summary = _import(Choices(state), site_key, "943 476 5919")
    assert summary.studies_found == 2 and summary.retractions_queued == 1
    assert state.study("OLD").opted_out_at is not None  # type: ignore[union-attr]
    assert _retractions(state) == [("2.25.1", "OLD")]


def test_a_study_that_links_the_list_to_a_hospital_number_marks_the_patients_earlier_studies(
        state: State, site_key: SiteKey) -> None:
    """The list names the NHS number; the patient's earlier study, delivered, carried only the
    hospital number. The study that carries both marks the earlier one, which is then settled
    and retracted; another patient's study is not touched."""
    choices = Choices(state)
    _import(choices, site_key, NHS)
    _received(state, "EARLY", ["e"])
    _finish(state, "EARLY", {"e": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL]),
            pseudonym="PSEUDO-1", output_study="2.25.10")
    state.record_sent("EARLY", {"e": (SHA, 100)}, {})
    _received(state, "OTHER", ["o"], at=3000.0)
    _finish(state, "OTHER", {"o": "deidentified"}, tokens=optout.tokens(site_key, [OTHER]), pseudonym="PSEUDO-2",
            output_study="2.25.20")
    _received(state, "LATER", ["l"], at=5000.0)
    _finish(state, "LATER", {"l": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL, NHS]),
            pseudonym="PSEUDO-1", output_study="2.25.30")
    assert state.study("EARLY").opted_out_at is not None  # type: ignore[union-attr]
    assert state.study("OTHER").opted_out_at is None  # type: ignore[union-attr]
    for study in choices.unsettled():
        choices.settle(study)
    assert _retractions(state) == [("2.25.10", "EARLY")]  # the only one with something sent
    assert state.due_studies(now=10**10) == ["OTHER"]


# -- the review's cases: who is the same patient, and what may already be on the platform -----------


def test_a_placeholder_shared_with_an_opted_out_patient_joins_nobody(state: State, site_key: SiteKey) -> None:
    """UNKNOWN in Other Patient IDs, and UNKNOWN as a Patient ID (no link), are not one patient."""
    choices = Choices(state)
    _import(choices, site_key, NHS)
    _received(state, "A", ["a"])
    _finish(state, "A", {"a": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL, NHS, "UNKNOWN"]),
            pseudonym="PSEUDO-A", output_study="2.25.1")
    _received(state, "B", ["b"], at=3000.0)
    _finish(state, "B", {"b": "deidentified"}, tokens=optout.tokens(site_key, [OTHER, "UNKNOWN"]),
            pseudonym="PSEUDO-B", output_study="2.25.2")
    _received(state, "C", ["c"], at=5000.0)  # Patient ID UNKNOWN: the worker gives it no link
    _finish(state, "C", {"c": "deidentified"}, tokens=optout.tokens(site_key, ["UNKNOWN"]),
            pseudonym="PSEUDO-U", output_study="2.25.3", link=False)
    assert state.study("A").opted_out_at is not None  # type: ignore[union-attr]
    assert state.due_studies(now=10**10) == ["B", "C"]
    assert optout.is_placeholder("UNKNOWN") and optout.is_placeholder("0000000000")


def test_a_follow_up_of_a_settled_study_is_settled_again_not_left_queued(state: State, site_key: SiteKey) -> None:
    choices = Choices(state)
    _import(choices, site_key, HOSPITAL)
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL]))
    state.record_sent("S", {"a": (SHA, 100)}, {})
    for study in choices.unsettled():
        choices.settle(study)
    _received(state, "S", ["late"], at=9000.0)  # the PACS sends one more instance of it
    assert _finish(state, "S", {"late": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL])) == "queued"
    assert choices.unsettled() == ["S"]
    choices.settle("S")
    study = state.study("S")
    assert study is not None and (study.state, study.reason) == ("excluded", "opted_out")
    assert state.due_studies(now=10**10) == [] and len(_retractions(state)) == 1


def test_a_study_whose_upload_began_is_retracted_even_with_no_answer_recorded(state: State,
                                                                               site_key: SiteKey) -> None:
    """The platform stored a batch but its answer was lost (or the agent was killed before it
    recorded it): nothing is in `sent`, yet the study may be there."""
    _received(state, "S", ["a"])
    _finish(state, "S", {"a": "deidentified"}, tokens=optout.tokens(site_key, [HOSPITAL]))
    state.delivery_started("S")
    summary = _import(Choices(state), site_key, HOSPITAL)
    assert summary.retractions_queued == 1 and _retractions(state) == [("2.25.1", "S")]


def test_the_checks_the_forwarder_makes_per_request_look_studies_up_by_index(state: State) -> None:
    """study_opted_out runs before every STOW request and the import marks by pseudonym: neither
    may scan a table that grows with every study."""
    db = state.connection()
    plans = [" ".join(str(r[-1]) for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", args)) for sql, args in (
        ("SELECT 1 FROM studies WHERE patient_link = ? AND opted_out_at IS NOT NULL LIMIT 1", ("x",)),
        ("SELECT study_key FROM studies WHERE opted_out_at IS NULL AND (patient_link = ? OR pseudonym = ?)",
         ("x", "x")),
        ("SELECT 1 FROM study_patients p JOIN optout_tokens o USING (token) WHERE p.study_key = ? LIMIT 1", ("x",)),
    )]
    for plan in plans:
        assert "SCAN studies" not in plan and "SCAN p" not in plan, plan
