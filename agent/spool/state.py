"""The state database: every instance and study, where it is, and how it got there.

SQLite in WAL mode with synchronous=FULL: a committed transaction survives a kill -9 and a power
cut. One connection per thread (pynetdicom calls handlers on association threads). Keys are
opaque keyed hashes; only the crosswalk table holds source identifiers, and it stays on site.

Study states: receiving -> stable -> queued (something de-identified to deliver) -> delivered
(every instance sent and the manifest acknowledged by the platform) -> purged (identifiable copies
gone); quarantined (nothing to deliver and something held); excluded (every instance out of the
profile's scope). Instance states: received -> deidentified -> delivered -> purged; quarantined
(refused by the gate or the platform, or held with its series); excluded (out of scope: its spool
copy is deleted at once, the record stays). The grain of a refusal is the series: a study with
a series held is still queued and delivered for its other series. Clinical batches: queued ->
uploaded, or refused.

The schema is versioned with `PRAGMA user_version`; `_MIGRATIONS` take a database of any earlier
version forward, in one transaction each, after a copy of it is kept beside it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError
from agent.spool import choices

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_key     TEXT PRIMARY KEY,
    study_key   TEXT NOT NULL,
    size        INTEGER NOT NULL,
    state       TEXT NOT NULL,
    received_at REAL NOT NULL,
    output      TEXT,
    reason      TEXT,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_key, state);
CREATE TABLE IF NOT EXISTS studies (
    study_key        TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    last_received_at REAL NOT NULL,
    updated_at       REAL NOT NULL,
    pseudonym        TEXT,
    output_study     TEXT,
    reason           TEXT
);
CREATE INDEX IF NOT EXISTS studies_by_state ON studies (state, last_received_at);
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY,
    at        REAL NOT NULL,
    study_key TEXT,
    sop_key   TEXT,
    event     TEXT NOT NULL,
    detail    TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    study_key       TEXT PRIMARY KEY,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_problem    TEXT
);
CREATE TABLE IF NOT EXISTS sent (
    sop_key TEXT PRIMARY KEY,
    sha256  TEXT NOT NULL,
    size    INTEGER NOT NULL,
    sent_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS platform_problem (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    kind            TEXT NOT NULL,
    detail          TEXT NOT NULL,
    since           REAL NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clinical_batches (
    batch         TEXT PRIMARY KEY,
    state         TEXT NOT NULL,
    rows_in       INTEGER NOT NULL,
    rows_out      INTEGER NOT NULL,
    rows_rejected INTEGER NOT NULL,
    held          TEXT,
    reason        TEXT,
    received_at   REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS crosswalk (
    kind   TEXT NOT NULL,
    id_old TEXT NOT NULL,
    id_new TEXT NOT NULL,
    PRIMARY KEY (kind, id_old)
);
"""


#: Forward migrations: _MIGRATIONS[n] takes a database from version n to n + 1. Version 0 is the
#: schema above as first installed (no user_version). Append; never edit a released step.
_MIGRATIONS: tuple[str, ...] = (
    # 1 (issue 9): each instance's series, so a refusal holds back its series, not its study.
    "ALTER TABLE instances ADD COLUMN series_key TEXT;"
    " CREATE INDEX IF NOT EXISTS instances_by_series ON instances (study_key, series_key);",
    # 2 (issue 13): patients' choices (agent/spool/choices.py). The opt-out list as keyed tokens;
    # each study's patient tokens; when a study was found opted out; retraction notices; and the
    # append-only access log of re-identifications and quarantine actions.
    "CREATE TABLE optout_tokens (token TEXT PRIMARY KEY);"
    " CREATE TABLE optout_imports (id INTEGER PRIMARY KEY, at REAL NOT NULL, entries INTEGER NOT NULL,"
    "  added INTEGER NOT NULL, removed INTEGER NOT NULL, operator TEXT NOT NULL);"
    " CREATE TABLE study_patients (study_key TEXT NOT NULL, token TEXT NOT NULL, PRIMARY KEY (study_key, token));"
    " CREATE INDEX study_patients_by_token ON study_patients (token);"
    " ALTER TABLE studies ADD COLUMN opted_out_at REAL;"
    " ALTER TABLE studies ADD COLUMN opt_out_settled INTEGER NOT NULL DEFAULT 0;"
    " CREATE TABLE retractions (output_study TEXT PRIMARY KEY, study_key TEXT NOT NULL, reason TEXT NOT NULL,"
    "  queued_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0,"
    "  last_problem TEXT, acknowledged_at REAL);"
    " CREATE TABLE access_log (id INTEGER PRIMARY KEY, at REAL NOT NULL, operator TEXT NOT NULL,"
    "  action TEXT NOT NULL, subject TEXT NOT NULL, reason TEXT NOT NULL, chain TEXT NOT NULL);"
    " CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log"
    "  BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END;"
    " CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log"
    "  BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END;",
    # 3 (issue 13, review): a study's patient link (the pseudonym of a Patient ID that names one
    # patient), when its delivery began (a request whose answer was lost may have stored it), and
    # the indexes the opt-out checks and the import look studies up by.
    "ALTER TABLE studies ADD COLUMN patient_link TEXT;"
    " ALTER TABLE studies ADD COLUMN delivery_started_at REAL;"
    " CREATE INDEX studies_by_pseudonym ON studies (pseudonym);"
    " CREATE INDEX studies_by_link ON studies (patient_link);"
    " CREATE INDEX studies_unsettled ON studies (opted_out_at) WHERE opted_out_at IS NOT NULL AND opt_out_settled = 0;",
)
SCHEMA_VERSION = len(_MIGRATIONS)
#: Reasons that do not hold a series back for the instances that come after them: the platform
#: refused that instance after the rest of its series had been sent.
_NOT_HOLDING = ("series_quarantined", "platform_rejected")


def _statements(script: str) -> list[str]:
    """A migration's statements, one by one (a trigger's body holds `;` of its own)."""
    statements, current = [], ""
    for part in script.split(";"):
        current += part + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" ;"):
                statements.append(current.strip())
            current = ""
    return statements


class SchemaTooNew(AgentError):
    """The database was written by a newer agent: a downgrade would misread it."""


class SchemaTooOld(AgentError):
    """The database is older than this agent and only the service upgrades it."""


class StudyBusy(AgentError):
    """An operator's action on a study that is being received or de-identified right now."""


@dataclass(frozen=True)
class InstanceRow:
    sop_key: str
    study_key: str
    size: int
    state: str
    received_at: float
    output: str | None
    reason: str | None
    detail: str | None
    series_key: str | None  # None: received before the series was recorded, or the source has none


@dataclass(frozen=True)
class StudyRow:
    study_key: str
    state: str
    last_received_at: float
    updated_at: float
    pseudonym: str | None
    output_study: str | None
    reason: str | None
    opted_out_at: float | None = None  # when its patient was found on the opt-out list
    opt_out_settled: int = 0  # 1 once nothing of it is left to send and its copies are gone
    patient_link: str | None = None  # the patient's pseudonym when its Patient ID names one patient
    delivery_started_at: float | None = None  # the first request to the platform for it


class State:
    """The agent's database; safe to share between threads (each gets its own connection)."""

    def __init__(self, path: Path, *, upgrade: bool = False) -> None:
        """`upgrade`: take an older database forward (the daemon, `serve`, at start). Without it
        an older database holding data is refused: a command run between a package upgrade and
        the service's restart must not change the schema under the daemon still running."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # executescript commits on its own
        path.chmod(0o600)
        self._migrate(upgrade)

    def schema_version(self) -> int:
        return int(self._db().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, upgrade: bool) -> None:
        """Bring the database to SCHEMA_VERSION, keeping a copy of it as it was first."""
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path}: state database schema version {version} is newer than this agent's "
                               f"({SCHEMA_VERSION}): run the agent version that wrote it, or restore a backup")
        if version == SCHEMA_VERSION:
            return
        holds_data = self._holds_data()
        if holds_data and not upgrade:
            raise SchemaTooOld(f"{self.path}: state database schema version {version} is older than this agent's "
                               f"({SCHEMA_VERSION}): restart the service (`nmip-agent serve` upgrades it), then "
                               "run this command again")
        if holds_data:  # a new database has nothing to keep
            self._keep_copy(version)
        for step in range(version, SCHEMA_VERSION):
            with self._tx() as db:
                if int(db.execute("PRAGMA user_version").fetchone()[0]) != step:
                    continue  # another process (a receiver) migrated it meanwhile
                for statement in _statements(_MIGRATIONS[step]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {step + 1}")
                self._audit(db, time.time(), None, None, "state_schema_migrated", f"{step} -> {step + 1}")

    def _holds_data(self) -> bool:
        db = self._db()
        return any(db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() for table in ("audit", "instances", "studies"))

    def _keep_copy(self, version: int) -> None:
        """`state.sqlite.v<N>`: the database before its first migration from version N (0600)."""
        copy = self.path.with_name(f"{self.path.name}.v{version}")
        if copy.exists():
            return
        partial = copy.with_name(f"{copy.name}.{os.getpid()}.partial")
        target = sqlite3.connect(partial)
        try:
            partial.chmod(0o600)
            self._db().backup(target)
        finally:
            target.close()
        try:
            os.link(partial, copy)  # never over a copy another process kept first
        except FileExistsError:
            pass
        finally:
            partial.unlink()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            for companion in ("-wal", "-shm"):  # the WAL holds the crosswalk: never another user's to read
                try:
                    os.chmod(f"{self.path}{companion}", 0o600)
                except FileNotFoundError:
                    pass
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, for the modules that keep tables of their own here (choices)."""
        return self._db()

    def transaction(self) -> "contextlib.AbstractContextManager[sqlite3.Connection]":
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception), for those modules."""
        return self._tx()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- receive ------------------------------------------------------------------------------

    def spooled_keys(self) -> set[str]:
        """Keys of every instance whose source is still in the spool."""
        return {r[0] for r in self._db().execute("SELECT sop_key FROM instances WHERE state NOT IN ('purged', 'excluded')")}

    def spool_bytes(self) -> int:
        """Bytes of identifiable data held in the spool (what the quota counts)."""
        row = self._db().execute("SELECT COALESCE(SUM(size), 0) FROM instances"
                                 " WHERE state NOT IN ('purged', 'excluded')").fetchone()
        return int(row[0])

    def record_received(self, sop_key: str, study_key: str, size: int, now: float | None = None,
                        series_key: str | None = None) -> bool:
        """An instance is durably spooled. A resent instance replaces the earlier one, counted once.

        Returns True when it reopens a study that had already been processed (a follow-up).
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO instances (sop_key, study_key, size, state, received_at, series_key)"
                " VALUES (?, ?, ?, 'received', ?, ?)"
                " ON CONFLICT (sop_key) DO UPDATE SET study_key = excluded.study_key, size = excluded.size,"
                " state = 'received', received_at = excluded.received_at, output = NULL, reason = NULL, detail = NULL,"
                " series_key = excluded.series_key",
                (sop_key, study_key, size, now, series_key),
            )
            row = db.execute("SELECT state FROM studies WHERE study_key = ?", (study_key,)).fetchone()
            follow_up = row is not None and row[0] not in ("receiving",)
            db.execute(
                "INSERT INTO studies (study_key, state, last_received_at, updated_at) VALUES (?, 'receiving', ?, ?)"
                " ON CONFLICT (study_key) DO UPDATE SET state = 'receiving', last_received_at = excluded.last_received_at,"
                " updated_at = excluded.updated_at",
                (study_key, now, now),
            )
            if row is None or follow_up:
                self._audit(db, now, study_key, None, "study_receiving", "follow-up" if follow_up else "new")
            self._audit(db, now, study_key, sop_key, "instance_received", None)
        return follow_up

    # -- pipeline -----------------------------------------------------------------------------

    def mark_stable(self, quiet_period_s: float, now: float | None = None) -> list[str]:
        """Studies with nothing received for the quiet period become stable; returns their keys."""
        now = time.time() if now is None else now
        with self._tx() as db:
            keys = [r[0] for r in db.execute(
                "SELECT study_key FROM studies WHERE state = 'receiving' AND last_received_at <= ?",
                (now - quiet_period_s,),
            )]
            for key in keys:
                db.execute("UPDATE studies SET state = 'stable', updated_at = ? WHERE study_key = ?", (now, key))
                self._audit(db, now, key, None, "study_stable", None)
        return keys

    def stable_studies(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT study_key FROM studies WHERE state = 'stable' ORDER BY updated_at")]

    def pending_instances(self, study_key: str) -> list[InstanceRow]:
        """Instances of a study still to de-identify (received, or interrupted by a crash)."""
        rows = self._db().execute(
            "SELECT * FROM instances WHERE study_key = ? AND state = 'received' ORDER BY received_at", (study_key,)
        )
        return [InstanceRow(*r) for r in rows]

    def reopen_held_series(self, study_key: str) -> int:
        """A series held only because of an instance since resent (a PACS correcting it): its held
        instances are taken again with the resent one, so the series is decided whole. Returns how
        many were reopened."""
        now = time.time()
        with self._tx() as db:
            count = db.execute(
                "UPDATE instances SET state = 'received', output = NULL, reason = NULL, detail = NULL"
                " WHERE study_key = ? AND state = 'quarantined' AND reason = 'series_quarantined'"
                " AND COALESCE(series_key, '') IN (SELECT COALESCE(series_key, '') FROM instances"
                "   WHERE study_key = ? AND state = 'received')"
                " AND COALESCE(series_key, '') NOT IN (SELECT COALESCE(series_key, '') FROM instances"
                "   WHERE study_key = ? AND state = 'quarantined' AND reason NOT IN (?, ?))",
                (study_key, study_key, study_key, *_NOT_HOLDING)).rowcount
            if count:
                self._audit(db, now, study_key, None, "series_reopened", f"{count} held instance(s)")
        return int(count)

    def held_series(self, study_key: str) -> set[str]:
        """Series of the study held back on site: an instance refused by the gate, or held with it
        ("" stands for instances whose series is not known). New instances of them are held too."""
        return {r[0] for r in self._db().execute(
            "SELECT DISTINCT COALESCE(series_key, '') FROM instances WHERE study_key = ? AND state = 'quarantined'"
            " AND reason != 'platform_rejected'", (study_key,))}

    def finish_study(
        self,
        study_key: str,
        outcomes: dict[str, tuple[str, str | None, str | None, str | None, str | None]],
        *,
        pseudonym: str | None,
        output_study: str | None,
        crosswalk: list[tuple[str, str, str]],
        expected_received_at: dict[str, float],
        hold: dict[str, str] | None = None,
        patient_tokens: frozenset[str] = frozenset(),
        patient_link: str | None = None,
    ) -> tuple[str, list[str]]:
        """Record a study's de-identification in one transaction; returns the study's new state and
        the instances recorded as excluded (whose spool copies may now go).

        `outcomes` maps sop_key to (state, output, reason, detail, series_key). An instance resent
        while the study was being processed (its received_at changed) stays `received` for the next
        round. `hold` (sop_key -> detail): de-identified instances of an earlier round, not sent yet,
        whose series is now held: quarantined as `series_quarantined`. The study is queued when it has anything to deliver or delivered before (the
        manifest is sent again, with the new counts), quarantined when it has only held
        instances, excluded when every instance was out of scope.
        """
        now = time.time()
        excluded: list[str] = []
        with self._tx() as db:
            for sop_key, (state, output, reason, detail, series_key) in outcomes.items():
                changed = db.execute(
                    "UPDATE instances SET state = ?, output = ?, reason = ?, detail = ?,"
                    " series_key = COALESCE(series_key, ?) WHERE sop_key = ? AND state = 'received' AND received_at = ?",
                    (state, output, reason, detail, series_key or None, sop_key, expected_received_at[sop_key]),
                ).rowcount
                if changed:
                    self._audit(db, now, study_key, sop_key, f"instance_{state}", reason)
                    if state == "excluded":
                        excluded.append(sop_key)
            for sop_key, detail in (hold or {}).items():
                if db.execute("UPDATE instances SET state = 'quarantined', output = NULL, reason = 'series_quarantined',"
                              " detail = ? WHERE sop_key = ? AND state = 'deidentified'", (detail, sop_key)).rowcount:
                    self._audit(db, now, study_key, sop_key, "instance_quarantined", "series_quarantined")
            db.executemany("INSERT OR IGNORE INTO crosswalk (kind, id_old, id_new) VALUES (?, ?, ?)", crosswalk)
            # An import made since the pipeline looked marks the study here: the forwarder then never sends it.
            choices.record_patients(db, study_key, patient_tokens, now, patient_link)
            row = db.execute("SELECT state FROM studies WHERE study_key = ?", (study_key,)).fetchone()
            if row is not None and row[0] != "stable":
                return str(row[0]), excluded  # reopened by a new instance meanwhile: processed again
            counts = dict(db.execute("SELECT state, COUNT(*) FROM instances WHERE study_key = ? GROUP BY state",
                                     (study_key,)).fetchall())
            if counts.get("received"):  # released meanwhile (not in this round): the next round takes them
                return "stable", excluded
            sent_before = db.execute(
                "SELECT 1 FROM sent JOIN instances USING (sop_key) WHERE study_key = ?"
                " AND state IN ('delivered', 'purged') LIMIT 1", (study_key,)).fetchone() is not None
            if counts.get("deidentified") or sent_before:
                db.execute(
                    "UPDATE studies SET state = 'queued', reason = NULL, updated_at = ?,"
                    " pseudonym = COALESCE(?, pseudonym), output_study = COALESCE(?, output_study) WHERE study_key = ?",
                    (now, pseudonym, output_study, study_key),
                )
                held = counts.get("quarantined", 0)
                self._audit(db, now, study_key, None, "study_deidentified",
                            f"{held} instance(s) held on site" if held else None)
                self._audit(db, now, study_key, None, "study_queued", None)
                return "queued", excluded
            if counts.get("quarantined"):
                # The study's reason is an instance's own refusal, not its consequence.
                reasons = [r[0] for r in db.execute(
                    "SELECT reason FROM instances WHERE study_key = ? AND state = 'quarantined' ORDER BY received_at",
                    (study_key,))]
                reason = next((r for r in reasons if r not in ("series_quarantined", "study_quarantined")), reasons[0])
                db.execute("UPDATE studies SET state = 'quarantined', reason = ?, updated_at = ? WHERE study_key = ?",
                           (reason, now, study_key))
                self._audit(db, now, study_key, None, "study_quarantined", reason)
                return "quarantined", excluded
            db.execute("UPDATE studies SET state = 'excluded', reason = NULL, updated_at = ? WHERE study_key = ?",
                       (now, study_key))
            self._audit(db, now, study_key, None, "study_excluded", f"{counts.get('excluded', 0)} instance(s)")
            return "excluded", excluded

    def still_in(self, sop_key: str, state: str, received_at: float) -> bool:
        """The instance is still in `state` and its spooled copy the same one (no resend since):
        asked under the spool's lock before its file is deleted."""
        row = self._db().execute("SELECT state, received_at FROM instances WHERE sop_key = ?", (sop_key,)).fetchone()
        return row is not None and row[0] == state and row[1] == received_at

    # -- delivery -----------------------------------------------------------------------------

    def due_studies(self, now: float | None = None) -> list[str]:
        """Queued studies whose next delivery attempt is due, oldest first."""
        now = time.time() if now is None else now
        return [r[0] for r in self._db().execute(
            "SELECT s.study_key FROM studies s LEFT JOIN deliveries d USING (study_key)"
            " WHERE s.state = 'queued' AND s.opted_out_at IS NULL AND COALESCE(d.next_attempt_at, 0) <= ?"
            " ORDER BY s.updated_at", (now,))]

    def studies_in(self, state: str) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT study_key FROM studies WHERE state = ?", (state,))]

    def delivery_attempts(self, study_key: str) -> int:
        row = self._db().execute("SELECT attempts FROM deliveries WHERE study_key = ?", (study_key,)).fetchone()
        return 0 if row is None else int(row[0])

    def instances_in(self, study_key: str, state: str) -> list[InstanceRow]:
        rows = self._db().execute("SELECT * FROM instances WHERE study_key = ? AND state = ? ORDER BY output",
                                  (study_key, state))
        return [InstanceRow(*r) for r in rows]

    def delivery_started(self, study_key: str) -> None:
        """Before the first request for a study: from now on it may be on the platform (an answer
        lost is not a refusal), so an opt-out found later retracts it."""
        with self._tx() as db:
            db.execute("UPDATE studies SET delivery_started_at = ? WHERE study_key = ? AND delivery_started_at IS NULL",
                       (time.time(), study_key))

    def record_sent(self, study_key: str, sent: dict[str, tuple[str, int]],
                    refused: dict[str, tuple[str, str]]) -> None:
        """Instances the platform acknowledged (sop_key -> sha256, size as sent) and refused
        (sop_key -> reason code, the platform's reason), in one transaction."""
        now = time.time()
        with self._tx() as db:
            for sop_key, (sha256, size) in sent.items():
                db.execute("INSERT OR REPLACE INTO sent (sop_key, sha256, size, sent_at) VALUES (?, ?, ?, ?)",
                           (sop_key, sha256, size, now))
                db.execute("UPDATE instances SET state = 'delivered' WHERE sop_key = ? AND state = 'deidentified'",
                           (sop_key,))
                self._audit(db, now, study_key, sop_key, "instance_delivered", None)
            if sent:  # a batch in flight when the study was found opted out: the platform is told to drop it
                choices.queue_retraction_if_opted_out(db, study_key, now)
            for sop_key, (reason, detail) in refused.items():
                db.execute("UPDATE instances SET state = 'quarantined', reason = ?, detail = ?"
                           " WHERE sop_key = ? AND state = 'deidentified'", (reason, detail, sop_key))
                self._audit(db, now, study_key, sop_key, "instance_quarantined", reason)

    def delivery_postponed(self, study_key: str, next_attempt_at: float, problem: str) -> int:
        """One more attempt that left instances unacknowledged; returns the attempts so far."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO deliveries (study_key, attempts, next_attempt_at, last_problem) VALUES (?, 1, ?, ?)"
                " ON CONFLICT (study_key) DO UPDATE SET attempts = attempts + 1,"
                " next_attempt_at = excluded.next_attempt_at, last_problem = excluded.last_problem",
                (study_key, next_attempt_at, problem))
            self._audit(db, time.time(), study_key, None, "delivery_postponed", problem)
            return int(db.execute("SELECT attempts FROM deliveries WHERE study_key = ?", (study_key,)).fetchone()[0])

    def redo_instances(self, study_key: str, sop_keys: list[str]) -> None:
        """De-identify these instances again (their outbox copy is gone): back to received, and
        the study back to stable so the pipeline takes it at once."""
        now = time.time()
        with self._tx() as db:
            for sop_key in sop_keys:
                db.execute("UPDATE instances SET state = 'received', output = NULL WHERE sop_key = ?"
                           " AND state = 'deidentified'", (sop_key,))
                self._audit(db, now, study_key, sop_key, "instance_redo", "outbox copy unreadable")
            db.execute("UPDATE studies SET state = 'stable', updated_at = ? WHERE study_key = ? AND state = 'queued'",
                       (now, study_key))

    def quarantine_study(self, study_key: str, reason: str) -> None:
        """Every instance was refused downstream: the study is quarantined, with that reason."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE studies SET state = 'quarantined', reason = ?, updated_at = ? WHERE study_key = ?",
                       (reason, now, study_key))
            db.execute("DELETE FROM deliveries WHERE study_key = ?", (study_key,))
            self._audit(db, now, study_key, None, "study_quarantined", reason)

    def sent_instances(self, study_key: str) -> list[tuple[str, str, int, float]]:
        """(output path, sha256, size, sent_at) of every instance of the study the platform holds."""
        return list(self._db().execute(
            "SELECT i.output, s.sha256, s.size, s.sent_at FROM instances i JOIN sent s USING (sop_key)"
            " WHERE i.study_key = ? AND i.state IN ('delivered', 'purged') ORDER BY i.output", (study_key,)))

    def study_delivered(self, study_key: str) -> bool:
        """The manifest is acknowledged: the study is delivered (unless reopened meanwhile)."""
        now = time.time()
        with self._tx() as db:
            changed = db.execute(
                "UPDATE studies SET state = 'delivered', updated_at = ? WHERE study_key = ? AND state = 'queued'"
                " AND NOT EXISTS (SELECT 1 FROM instances WHERE study_key = ? AND state IN ('received', 'deidentified'))",
                (now, study_key, study_key)).rowcount
            db.execute("DELETE FROM deliveries WHERE study_key = ?", (study_key,))
            if changed:
                self._audit(db, now, study_key, None, "study_delivered", None)
        return bool(changed)

    def study_purged(self, study_key: str) -> list[str]:
        """Identifiable copies of a delivered study's delivered instances are gone; returns their keys."""
        now = time.time()
        with self._tx() as db:
            keys = [r[0] for r in db.execute(
                "SELECT sop_key FROM instances WHERE study_key = ? AND state = 'delivered'", (study_key,))]
            db.execute("UPDATE instances SET state = 'purged' WHERE study_key = ? AND state = 'delivered'",
                       (study_key,))
            db.execute("UPDATE studies SET state = 'purged', updated_at = ? WHERE study_key = ? AND state = 'delivered'",
                       (now, study_key))
            self._audit(db, now, study_key, None, "study_purged", f"{len(keys)} identifiable instance(s)")
        return keys

    def set_platform_problem(self, kind: str, detail: str, attempts: int, next_attempt_at: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO platform_problem (id, kind, detail, since, attempts, next_attempt_at)"
                " VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,"
                " detail = excluded.detail, attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at",
                (kind, detail, now, attempts, next_attempt_at))

    def clear_platform_problem(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM platform_problem")

    def platform_problem(self) -> dict[str, object] | None:
        row = self._db().execute("SELECT kind, detail, since, attempts, next_attempt_at FROM platform_problem").fetchone()
        return None if row is None else dict(zip(("kind", "detail", "since", "attempts", "next_attempt_at"), row))

    def bytes_since(self, since: float) -> tuple[int, int]:
        """(bytes received, bytes sent to the platform) since `since`: the day's inflow and drain."""
        db = self._db()
        received = db.execute("SELECT COALESCE(SUM(size), 0) FROM instances WHERE received_at >= ?"
                              " AND state NOT IN ('excluded')", (since,)).fetchone()[0]
        sent = db.execute("SELECT COALESCE(SUM(size), 0) FROM sent WHERE sent_at >= ?", (since,)).fetchone()[0]
        return int(received), int(sent)

    def check_writable(self) -> None:
        """Take the write lock and give it back: raises if the database cannot be written."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")

    def reasons(self) -> dict[tuple[str, str], int]:
        """Instances held or left out, per (state, reason): quarantined and excluded."""
        rows = self._db().execute("SELECT state, reason, COUNT(*) FROM instances WHERE state IN ('quarantined',"
                                  " 'excluded') GROUP BY state, reason").fetchall()
        return {(str(state), str(reason or "")): int(n) for state, reason, n in rows}

    def instances_refused_by_platform(self) -> int:
        row = self._db().execute("SELECT COUNT(*) FROM instances WHERE state = 'quarantined'"
                                 " AND reason = 'platform_rejected'").fetchone()
        return int(row[0])

    # -- clinical batches ---------------------------------------------------------------------

    def record_crosswalk(self, pairs: list[tuple[str, str, str]]) -> None:
        """(kind, source, pseudonymous) pairs for an on-site re-identification (clinical rows' patients)."""
        if pairs:
            with self._tx() as db:
                db.executemany("INSERT OR IGNORE INTO crosswalk (kind, id_old, id_new) VALUES (?, ?, ?)", pairs)

    def clinical_batch(self, batch: str) -> str | None:
        row = self._db().execute("SELECT state FROM clinical_batches WHERE batch = ?", (batch,)).fetchone()
        return None if row is None else str(row[0])

    def record_clinical(self, batch: str, state: str, rows: tuple[int, int, int], held: str | None,
                        reason: str | None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO clinical_batches (batch, state, rows_in, rows_out, rows_rejected, held, reason,"
                " received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (batch) DO UPDATE SET"
                " state = excluded.state, rows_in = excluded.rows_in, rows_out = excluded.rows_out,"
                " rows_rejected = excluded.rows_rejected, held = excluded.held, reason = excluded.reason,"
                " updated_at = excluded.updated_at WHERE clinical_batches.state = 'refused'",
                (batch, state, *rows, held, reason, now, now))
            self._audit(db, now, None, None, f"clinical_{state}", batch)

    def due_clinical(self) -> list[tuple[str, str | None]]:
        return [(r[0], r[1]) for r in self._db().execute(
            "SELECT batch, held FROM clinical_batches WHERE state = 'queued' ORDER BY received_at")]

    def clinical_uploaded(self, batch: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE clinical_batches SET state = 'uploaded', held = NULL, updated_at = ? WHERE batch = ?",
                       (now, batch))
            self._audit(db, now, None, None, "clinical_uploaded", batch)

    def clinical_refused(self, batch: str, reason: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE clinical_batches SET state = 'refused', held = NULL, reason = ?, updated_at = ?"
                       " WHERE batch = ?", (reason, now, batch))
            self._audit(db, now, None, None, "clinical_refused", batch)

    def clinical_counts(self) -> dict[str, int]:
        return dict(self._db().execute("SELECT state, COUNT(*) FROM clinical_batches GROUP BY state").fetchall())

    # -- operators ----------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        db = self._db()
        return {
            "studies": dict(db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()),
            "instances": dict(db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall()),
        }

    def oldest(self, state: str) -> float | None:
        row = self._db().execute("SELECT MIN(updated_at) FROM studies WHERE state = ?", (state,)).fetchone()
        return None if row[0] is None else float(row[0])

    def studies(self, state: str | None = None) -> list[StudyRow]:
        query = "SELECT * FROM studies" + (" WHERE state = ?" if state else "") + " ORDER BY updated_at"
        return [StudyRow(*r) for r in self._db().execute(query, (state,) if state else ())]

    def studies_with_quarantine(self) -> list[StudyRow]:
        """Quarantined studies, and studies (delivered, say) with some instance in quarantine."""
        return [StudyRow(*r) for r in self._db().execute(
            "SELECT * FROM studies WHERE state = 'quarantined' OR study_key IN"
            " (SELECT study_key FROM instances WHERE state = 'quarantined') ORDER BY updated_at")]

    def study(self, study_key: str) -> StudyRow | None:
        row = self._db().execute("SELECT * FROM studies WHERE study_key = ?", (study_key,)).fetchone()
        return None if row is None else StudyRow(*row)

    def instances(self, study_key: str) -> list[InstanceRow]:
        rows = self._db().execute("SELECT * FROM instances WHERE study_key = ? ORDER BY received_at", (study_key,))
        return [InstanceRow(*r) for r in rows]

    def release(self, study_key: str) -> int:
        """Send a quarantined study through the pipeline again (after a profile fix)."""
        now = time.time()
        with self._tx() as db:
            count = db.execute(
                "UPDATE instances SET state = 'received', reason = NULL, detail = NULL, output = NULL"
                " WHERE study_key = ? AND state = 'quarantined'", (study_key,),
            ).rowcount
            if not count:
                return 0
            db.execute("UPDATE studies SET state = 'stable', reason = NULL, updated_at = ? WHERE study_key = ?"
                       " AND state != 'receiving'", (now, study_key))  # a receiving study is taken when quiet
            self._audit(db, now, study_key, None, "study_released", f"{count} instance(s)")
        return int(count)

    def purge(self, study_key: str) -> list[str]:
        """Forget a study's held instances; returns their keys so their files can go. The rest of
        the study (series queued or delivered) goes on; a study only of held series is purged."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT state FROM studies WHERE study_key = ?", (study_key,)).fetchone()
            if row is not None and row[0] in ("receiving", "stable"):
                raise StudyBusy(f"study {study_key} is being {'received' if row[0] == 'receiving' else 'de-identified'}:"
                                " try again once it is settled (`status`)")
            keys = [r[0] for r in db.execute(
                "SELECT sop_key FROM instances WHERE study_key = ? AND state = 'quarantined'", (study_key,))]
            db.execute("UPDATE instances SET state = 'purged' WHERE study_key = ? AND state = 'quarantined'",
                       (study_key,))
            db.execute("UPDATE studies SET state = 'purged', updated_at = ? WHERE study_key = ? AND state = 'quarantined'",
                       (now, study_key))
            self._audit(db, now, study_key, None, "quarantine_purged", f"{len(keys)} instance(s)")
        return keys

    def audit_trail(self, study_key: str) -> list[tuple[float, str | None, str, str | None]]:
        return list(self._db().execute(
            "SELECT at, sop_key, event, detail FROM audit WHERE study_key = ? ORDER BY id", (study_key,)))

    @staticmethod
    def _audit(db: sqlite3.Connection, at: float, study_key: str | None, sop_key: str | None, event: str,
               detail: str | None) -> None:
        db.execute("INSERT INTO audit (at, study_key, sop_key, event, detail) VALUES (?, ?, ?, ?, ?)",
                   (at, study_key, sop_key, event, detail))
