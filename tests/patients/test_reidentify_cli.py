"""`optout`, `reidentify`, `audit` and the reasons `quarantine` asks for, as a site's operator runs
them: identifiers go in and never come back out, and no lookup happens unlogged."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from agent import config as config_module
from agent import optout, patients
from agent.keys import load_key_file
from agent.spool.choices import Choices
from agent.spool.state import State
from tests.cli.helpers import Run, make_key, nmip

NHS = "9434765919"
HOSPITAL = "RXX100001"
SOURCE_STUDY = "1.2.826.0.1.3680043.2.1125.424242"
REASON = "incidental finding, ticket 4411"
FORMS = (NHS, "943 476 5919", "943-476-5919", HOSPITAL, "rxx100001")


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("key"))


@pytest.fixture
def site(tmp_path: Path, key_file: Path) -> Path:
    """A site's configuration: its key and its state database."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"pipeline": {"key_file": str(key_file), "profile": "nmip",
                                                 "database": str(tmp_path / "var" / "state.sqlite")}}))
    return path


def _database(site: Path) -> Path:
    return config_module.load(site).pipeline.database


def _run(site: Path, *args: object) -> Run:
    return nmip(*args, "--config", site, cwd=site.parent)


def _list_file(site: Path, text: str, name: str = "optout.csv") -> Path:
    path = site.parent / name
    path.write_text(text, encoding="utf-8")
    return path


def _listed(site: Path, key_file: Path, identifier: str) -> bool:
    """What `optout check` answers, asked in this process (each command run costs half a second)."""
    state = State(_database(site))
    try:
        return Choices(state).listed(optout.tokens(load_key_file(key_file), [identifier]))
    finally:
        state.close()


def _access_log(site: Path) -> list[tuple[str, str, str, str]]:
    state = State(_database(site))
    try:
        return [(e.operator, e.action, e.subject, e.reason) for e in Choices(state).access_log()]
    finally:
        state.close()


def _study(site: Path, key_file: Path, *, sent: bool) -> None:
    """A study of the patient RXX100001 (NHS number 9434765919 in its images), pseudonym
    PSEUDO-H, de-identified as Study Instance UID 2.25.9, and delivered if `sent`."""
    key = load_key_file(key_file)
    state = State(_database(site))
    try:
        state.record_received("a", "S", 100, now=1000.0, series_key="x")
        state.mark_stable(1.0, now=2000.0)
        [row] = state.pending_instances("S")
        state.finish_study("S", {"a": ("deidentified", "out/a.dcm", None, None, "x")}, pseudonym="PSEUDO-H",
                           output_study="2.25.9", crosswalk=[("patient", HOSPITAL, "PSEUDO-H"),
                                                             ("uid", SOURCE_STUDY, "2.25.9")],
                           expected_received_at={"a": row.received_at},
                           patient_tokens=optout.tokens(key, [HOSPITAL, NHS]))
        if sent:
            state.record_sent("S", {"a": ("0" * 64, 100)}, {})
    finally:
        state.close()


# -- optout --------------------------------------------------------------------------------------


def test_import_prints_counts_and_says_the_file_holds_identifiers(site: Path) -> None:
    listed = _list_file(site, f"NHS Number\r\n943 476 5919\r\n{HOSPITAL}\r\n\r\n")
    run = _run(site, "optout", "import", listed)
    assert run.returncode == 0, run.output
    assert "2 identifier(s)" in run.stdout and "header" in run.stdout and "2 added, 0 removed" in run.stdout
    assert "holds identifiers" in run.stdout and str(listed.name) in run.stdout
    assert not any(form in run.output for form in FORMS)
    again = _run(site, "optout", "import", _list_file(site, f"{NHS}\nRXX300003\n", "second.csv"))
    assert again.returncode == 0, again.output
    assert "2 identifier(s)" in again.stdout and "1 added, 1 removed" in again.stdout
    database = _database(site)
    for path in database.parent.iterdir():
        data = path.read_bytes()
        assert not any(form.encode() in data for form in (*FORMS, "RXX300003")), path.name


def test_import_finds_the_studies_already_here_and_retracts_the_delivered(site: Path, key_file: Path) -> None:
    _study(site, key_file, sent=True)
    run = _run(site, "optout", "import", _list_file(site, "943-476-5919\n"))
    assert run.returncode == 0, run.output
    assert "1 stud(ies) held here" in run.stdout and "1 delivered stud(ies) will be retracted" in run.stdout
    report = _run(site, "optout", "list", "--json")
    assert report.returncode == 0, report.output
    data = report.json()
    assert data["entries"] == 1
    assert data["studies_opted_out"] == {"studies": 1, "unsettled": 1}
    assert data["retractions"] == {"pending": 1, "acknowledged": 0}


def test_an_empty_file_is_refused_unless_allowed(site: Path, key_file: Path) -> None:
    assert _run(site, "optout", "import", _list_file(site, f"{NHS}\n{HOSPITAL}\n")).returncode == 0
    for empty in ("", "NHS Number\r\n\r\n"):
        run = _run(site, "optout", "import", _list_file(site, empty, "empty.csv"))
        assert run.returncode == 2, run.output
        assert "--allow-empty" in run.stderr
        assert _listed(site, key_file, NHS)  # the old list stays in force
    run = _run(site, "optout", "import", _list_file(site, "NHS Number\r\n", "empty.csv"), "--allow-empty")
    assert run.returncode == 0, run.output
    assert "0 identifier(s)" in run.stdout and "0 added, 2 removed" in run.stdout
    assert not _listed(site, key_file, NHS)


def test_a_file_that_cannot_be_taken_is_refused_and_the_list_kept(site: Path, key_file: Path) -> None:
    assert _run(site, "optout", "import", _list_file(site, f"{NHS}\n")).returncode == 0
    long = _list_file(site, f"{HOSPITAL}\n" + "Plantedsurname Plantedforename " * 4 + "\n", "long.csv")
    run = _run(site, "optout", "import", long)
    assert run.returncode == 2 and "line 2" in run.stderr
    assert "Plantedsurname" not in run.output and HOSPITAL not in run.output
    assert _listed(site, key_file, NHS) and not _listed(site, key_file, HOSPITAL)


def test_list_never_prints_an_identifier(site: Path) -> None:
    never = _run(site, "optout", "list")
    assert never.returncode == 0 and "never imported" in never.stdout and "optout import" in never.stdout
    assert _run(site, "optout", "import", _list_file(site, f"patient_id\n{HOSPITAL}\n943 476 5919\n")).returncode == 0
    text, data = _run(site, "optout", "list"), _run(site, "optout", "list", "--json")
    for run in (text, data):
        assert run.returncode == 0, run.output
        assert not any(form in run.output for form in FORMS)
    assert "2 identifier(s)" in text.stdout and data.json()["entries"] == 2


def test_check_exits_0_on_the_list_and_1_off_it(site: Path) -> None:
    assert _run(site, "optout", "import", _list_file(site, f"{NHS}\nrxx-100001\n")).returncode == 0
    for listed in ("943 476 5919", HOSPITAL):
        run = _run(site, "optout", "check", listed)
        assert run.returncode == 0 and "on the opt-out list" in run.stdout, listed
    run = _run(site, "optout", "check", "RXX100002")
    assert run.returncode == 1 and "not on the opt-out list" in run.stdout


# -- reidentify ----------------------------------------------------------------------------------


def test_reidentify_without_a_reason_is_refused_and_logs_nothing(site: Path, key_file: Path) -> None:
    _study(site, key_file, sent=False)
    for reason in ((), ("--reason", "   x   ")):
        run = _run(site, "reidentify", "--pseudonym", "PSEUDO-H", *reason)
        assert run.returncode == 2, run.output
        assert "--reason" in run.stderr and HOSPITAL not in run.output
    assert _access_log(site) == []


def test_reidentify_needs_one_of_pseudonym_and_study_uid(site: Path, key_file: Path) -> None:
    _study(site, key_file, sent=False)
    for which in ((), ("--pseudonym", "PSEUDO-H", "--study-uid", "2.25.9")):
        run = _run(site, "reidentify", *which, "--reason", REASON)
        assert run.returncode == 2, run.output
        assert "--pseudonym" in run.stderr and HOSPITAL not in run.output
    assert _access_log(site) == []


def test_reidentify_answers_and_logs_the_lookup(site: Path, key_file: Path) -> None:
    _study(site, key_file, sent=False)
    run = _run(site, "reidentify", "--pseudonym", "PSEUDO-H", "--reason", f"  {REASON} ")
    assert run.returncode == 0, run.output
    assert f"hospital Patient ID: {HOSPITAL}" in run.stdout
    assert SOURCE_STUDY in run.stdout and "2.25.9" in run.stdout
    assert "access log entry 1" in run.stdout
    [(operator, action, subject, reason)] = _access_log(site)
    assert operator and (action, subject, reason) == ("reidentify", "pseudonym PSEUDO-H", REASON)
    by_uid = _run(site, "reidentify", "--study-uid", "2.25.9", "--reason", REASON)
    assert by_uid.returncode == 0, by_uid.output
    assert f"hospital Patient ID: {HOSPITAL}" in by_uid.stdout and "pseudonym: PSEUDO-H" in by_uid.stdout
    assert [entry[1:3] for entry in _access_log(site)] == [("reidentify", "pseudonym PSEUDO-H"),
                                                           ("reidentify", "study_uid 2.25.9")]


def test_a_lookup_that_finds_nothing_is_logged_too(site: Path, key_file: Path) -> None:
    _study(site, key_file, sent=False)
    run = _run(site, "reidentify", "--pseudonym", "NOBODY", "--reason", REASON)
    assert run.returncode == 1 and "nothing found" in run.stdout
    assert HOSPITAL not in run.output
    assert [entry[1:] for entry in _access_log(site)] == [("reidentify", "pseudonym NOBODY", REASON)]


def test_the_lookup_is_logged_before_the_crosswalk_is_read(site: Path, key_file: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry is committed before any statement reads the crosswalk: a lookup that fails or is
    killed halfway is still on record."""
    _study(site, key_file, sent=False)
    statements: list[str] = []
    real = patients.State

    def traced(path: Path, **kwargs: bool) -> State:
        state = real(path, **kwargs)
        state.connection().set_trace_callback(statements.append)
        return state

    monkeypatch.setattr(patients, "State", traced)
    found = patients.reidentify(config_module.load(site), pseudonym="PSEUDO-H", study_uid=None, reason=REASON)
    assert found.patient_ids == (HOSPITAL,)
    insert = next(i for i, s in enumerate(statements) if "INSERT INTO access_log" in s)
    commit = next(i for i, s in enumerate(statements) if i > insert and s.strip().upper() == "COMMIT")
    reads = [i for i, s in enumerate(statements) if "crosswalk" in s and s.lstrip().upper().startswith("SELECT")]
    assert reads and commit < min(reads)


# -- audit ---------------------------------------------------------------------------------------


def test_audit_prints_the_log_and_exits_1_once_it_is_tampered_with(site: Path, key_file: Path) -> None:
    _study(site, key_file, sent=False)
    empty = _run(site, "audit")
    assert empty.returncode == 0 and "empty" in empty.stdout
    loaded = config_module.load(site)
    patients.reidentify(loaded, pseudonym="PSEUDO-H", study_uid=None, reason=REASON)
    patients.reidentify(loaded, pseudonym="NOBODY", study_uid=None, reason="checking a platform query, ticket 4412")
    run = _run(site, "audit")
    assert run.returncode == 0, run.output
    assert "reidentify" in run.stdout and "pseudonym PSEUDO-H" in run.stdout and REASON in run.stdout
    assert "ticket 4412" in run.stdout and HOSPITAL not in run.output
    data = _run(site, "audit", "--json").json()
    assert data["intact"] is True and data["first_broken"] is None and len(data["entries"]) == 2
    db = sqlite3.connect(_database(site))
    try:
        db.execute("DROP TRIGGER access_log_no_update")
        db.execute("UPDATE access_log SET reason = 'routine' WHERE id = 1")
        db.commit()
    finally:
        db.close()
    broken = _run(site, "audit", "--json")
    assert broken.returncode == 1
    assert "behind the agent's back at entry 1" in broken.stderr
    assert json.loads(broken.stdout)["first_broken"] == 1 and json.loads(broken.stdout)["intact"] is False


# -- quarantine ----------------------------------------------------------------------------------


def test_quarantine_actions_need_a_reason(site: Path) -> None:
    for action, reason in (("release", ()), ("purge", ()), ("purge", ("--reason", "because"))):
        run = _run(site, "quarantine", action, "S", *reason)
        assert run.returncode == 2, run.output
        assert "needs --reason" in run.stderr
    assert not _database(site).exists() or _access_log(site) == []


def test_optout_check_reads_the_identifier_from_standard_input_and_is_logged(site: Path) -> None:
    """`optout check -` keeps the NHS number out of shell history and sudo's log; the check
    tells a patient's choice, so it is in the access log (without the identifier)."""
    import subprocess
    import sys

    assert _run(site, "optout", "import", _list_file(site, "9434765919\n")).returncode == 0
    run = subprocess.run([sys.executable, "-m", "agent.cli", "optout", "check", "-", "--config", str(site)],
                         input="943 476 5919\n", capture_output=True, text=True, timeout=60, cwd=site.parent)
    assert run.returncode == 0 and "on the opt-out list" in run.stdout, run.stderr
    logged = _access_log(site)
    assert [(action, subject) for _, action, subject, _ in logged] == [("optout_check", "an identifier")]
    assert "9434765919" not in repr(logged)
