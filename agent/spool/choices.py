"""Patients' choices in the state database: the opt-out list, whose studies are whose, what is
left to settle for a patient who opted out, retraction notices, and the access log.

Only keyed tokens are kept (agent/optout.py): `optout_tokens` is the list, `study_patients` the
tokens of each study's patient identifiers, so a later import finds the studies it concerns.
A study is its patient's opt-out when one of its identifiers is on the list, or when another
study of the same patient is: the same patient is the same `patient_link`, the pseudonym of a
Patient ID that names one patient (agent/optout.py: not UNKNOWN or 0000000000), so an NHS
number on the list also takes the patient's studies that carry only the hospital number.
Identifiers in Other Patient IDs never link studies (a placeholder there would join strangers).

A study found opted out is marked (`studies.opted_out_at`) in the same transaction that finds
it, whichever comes first, the import or the study, with every other study of its patient; the
daemon then settles it: nothing more is sent, its identifiable copies go, and if any of it may
have reached the platform (an instance acknowledged, or a request made: a lost answer is not a
refusal) a retraction notice is queued (`record_sent` queues one too for a batch that was in
flight when the mark was made).

The access log is append-only (triggers refuse UPDATE and DELETE) and chained: each entry's
`chain` is a SHA-256 over the previous one's and its own fields, so an entry edited or removed
from the middle shows in `verify_access_log`; each entry also goes to the host's syslog
(agent/patients.py), out of the agent user's reach.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.optout import is_placeholder

if TYPE_CHECKING:
    from agent.spool.state import State

#: Whether a study may be on the platform: an instance acknowledged, or a request made for it.
_MAY_BE_SENT = ("(studies.delivery_started_at IS NOT NULL OR EXISTS (SELECT 1 FROM sent JOIN instances i"
                " USING (sop_key) WHERE i.study_key = studies.study_key))")

OPTED_OUT = "opted_out"
RETRACTION_REASON = "opt_out"


@dataclass(frozen=True)
class ImportSummary:
    entries: int
    added: int
    removed: int
    studies_found: int  # studies already here whose patient is on the new list
    retractions_queued: int


@dataclass(frozen=True)
class ListInfo:
    entries: int
    imported_at: float | None
    operator: str | None


@dataclass(frozen=True)
class AccessEntry:
    id: int
    at: float
    operator: str
    action: str
    subject: str
    reason: str
    chain: str = ""


@dataclass(frozen=True)
class Retraction:
    output_study: str
    study_key: str
    queued_at: float
    attempts: int


# -- inside another transaction of State's -------------------------------------------------------


def record_patients(db: sqlite3.Connection, study_key: str, tokens: Iterable[str], now: float,
                    link: str | None = None) -> bool:
    """Keep a study's patient tokens and link; mark it, and every study of its patient, if it is
    its patient's opt-out. True when it is (a follow-up of a settled study is settled again)."""
    db.executemany("INSERT OR IGNORE INTO study_patients (study_key, token) VALUES (?, ?)",
                   [(study_key, t) for t in sorted(set(tokens))])
    if link:
        db.execute("UPDATE studies SET patient_link = ? WHERE study_key = ?", (link, study_key))
    row = db.execute("SELECT opted_out_at, patient_link FROM studies WHERE study_key = ?", (study_key,)).fetchone()
    if row is None:
        return False
    marked, link = row[0] is not None, row[1] or link
    listed = marked or db.execute(
        "SELECT 1 FROM study_patients p JOIN optout_tokens o USING (token) WHERE p.study_key = ? LIMIT 1",
        (study_key,)).fetchone() is not None or (bool(link) and _link_marked(db, str(link)))
    if not listed:
        return False
    if not marked:
        db.execute("UPDATE studies SET opted_out_at = ? WHERE study_key = ?", (now, study_key))
        _event(db, now, study_key, "study_opted_out", "found at de-identification")
    db.execute("UPDATE studies SET opt_out_settled = 0 WHERE study_key = ?", (study_key,))
    if link:
        _mark_patient(db, str(link), now)
    return True


def _link_marked(db: sqlite3.Connection, link: str) -> bool:
    return db.execute("SELECT 1 FROM studies WHERE patient_link = ? AND opted_out_at IS NOT NULL LIMIT 1",
                      (link,)).fetchone() is not None


def _mark_patient(db: sqlite3.Connection, link: str, now: float) -> int:
    """Mark every study of the patient `link` names: by its link, or by its pseudonym for a study
    recorded before links were (the same Patient ID gives the same pseudonym)."""
    found = [r[0] for r in db.execute("SELECT study_key FROM studies WHERE opted_out_at IS NULL"
                                      " AND (patient_link = ? OR pseudonym = ?)", (link, link)).fetchall()]
    for study_key in found:
        db.execute("UPDATE studies SET opted_out_at = ? WHERE study_key = ?", (now, study_key))
        _event(db, now, study_key, "study_opted_out", "another study of the patient is on the list")
    return len(found)


def queue_retraction_if_opted_out(db: sqlite3.Connection, study_key: str, now: float) -> None:
    """Instances were just recorded as sent: if the study was marked meanwhile, retract it."""
    row = db.execute("SELECT output_study, opted_out_at FROM studies WHERE study_key = ?", (study_key,)).fetchone()
    if row is not None and row[1] is not None and row[0]:
        _queue_retraction(db, study_key, str(row[0]), now)


def _queue_retraction(db: sqlite3.Connection, study_key: str, output_study: str, now: float) -> bool:
    queued = db.execute("INSERT OR IGNORE INTO retractions (output_study, study_key, reason, queued_at)"
                        " VALUES (?, ?, ?, ?)", (output_study, study_key, RETRACTION_REASON, now)).rowcount
    if queued:
        _event(db, now, study_key, "retraction_queued", RETRACTION_REASON)
    return bool(queued)


def _event(db: sqlite3.Connection, at: float, study_key: str | None, event: str, detail: str | None) -> None:
    db.execute("INSERT INTO audit (at, study_key, sop_key, event, detail) VALUES (?, ?, NULL, ?, ?)",
               (at, study_key, event, detail))


class Choices:
    """The tables above, over one State (its connections and transactions)."""

    def __init__(self, state: State) -> None:
        self.state = state

    # -- the list -------------------------------------------------------------------------------

    def replace_list(self, new: frozenset[str], patient_token: Callable[[str], str], operator: str) -> ImportSummary:
        """Put `new` (tokens) in place of the list, in one transaction, and mark every study of a
        patient on it: by the tokens recorded for the study, by the Patient IDs of the crosswalk
        (studies de-identified before tokens were recorded), then every other study of those
        patients. Marked studies that may be on the platform get a retraction notice queued.
        The crosswalk's tokens are made before the write lock is taken: receiving goes on."""
        crosswalk = [(id_new, patient_token(id_old), not is_placeholder(id_old)) for id_old, id_new in
                     self.state.connection().execute("SELECT id_old, id_new FROM crosswalk WHERE kind = 'patient'")]
        now = time.time()
        with self.state.transaction() as db:
            old = {r[0] for r in db.execute("SELECT token FROM optout_tokens")}
            db.execute("DELETE FROM optout_tokens")
            db.executemany("INSERT INTO optout_tokens (token) VALUES (?)", [(t,) for t in sorted(new)])
            added, removed = len(new - old), len(old - new)
            db.execute("INSERT INTO optout_imports (at, entries, added, removed, operator) VALUES (?, ?, ?, ?, ?)",
                       (now, len(new), added, removed, operator))
            direct = [r[0] for r in db.execute("SELECT DISTINCT p.study_key FROM optout_tokens o JOIN study_patients p"
                                               " USING (token)")]
            for study_key in direct:
                db.execute("UPDATE studies SET opted_out_at = ? WHERE study_key = ? AND opted_out_at IS NULL",
                           (now, study_key))
            links = {pseudonym for pseudonym, token, linkable in crosswalk if linkable and token in new}
            links |= {r[0] for r in db.execute("SELECT DISTINCT patient_link FROM studies WHERE opted_out_at = ?"
                                               " AND patient_link IS NOT NULL", (now,))}
            for link in links:
                _mark_patient(db, link, now)
            found = db.execute("SELECT COUNT(*) FROM studies WHERE opted_out_at = ?", (now,)).fetchone()[0]
            queued = 0
            for study_key, output_study in db.execute(
                    f"SELECT study_key, output_study FROM studies WHERE opted_out_at = ? AND output_study IS NOT NULL"
                    f" AND {_MAY_BE_SENT}", (now,)).fetchall():
                queued += _queue_retraction(db, study_key, output_study, now)
            _event(db, now, None, "optout_list_imported", json.dumps(
                {"entries": len(new), "added": added, "removed": removed, "studies_found": found}))
        return ImportSummary(len(new), added, removed, int(found), queued)

    def info(self) -> ListInfo:
        db = self.state.connection()
        entries = int(db.execute("SELECT COUNT(*) FROM optout_tokens").fetchone()[0])
        row = db.execute("SELECT at, operator FROM optout_imports ORDER BY id DESC LIMIT 1").fetchone()
        return ListInfo(entries, None if row is None else float(row[0]), None if row is None else str(row[1]))

    def listed_tokens(self) -> frozenset[str]:
        """The list's tokens, read once for a whole clinical file."""
        return frozenset(r[0] for r in self.state.connection().execute("SELECT token FROM optout_tokens"))

    def marked_links(self) -> frozenset[str]:
        """The links (pseudonyms) of patients with a study found opted out: their clinical rows,
        keyed by the hospital number, are left out too."""
        return frozenset(r[0] for r in self.state.connection().execute(
            "SELECT DISTINCT patient_link FROM studies WHERE opted_out_at IS NOT NULL AND patient_link IS NOT NULL"))

    def listed(self, tokens: Iterable[str]) -> bool:
        tokens = list(set(tokens))
        if not tokens:
            return False
        marks = ",".join("?" * len(tokens))
        return self.state.connection().execute(
            f"SELECT 1 FROM optout_tokens WHERE token IN ({marks}) LIMIT 1", tokens).fetchone() is not None

    def study_opted_out(self, study_key: str, tokens: Iterable[str] = (), link: str = "") -> bool:
        """Marked already, or its identifiers (`tokens`, or those recorded for it) are on the
        list, or another study of its patient (`link`, or its recorded link) was found opted out."""
        db = self.state.connection()
        row = db.execute(
            "SELECT opted_out_at IS NOT NULL OR EXISTS (SELECT 1 FROM study_patients p JOIN optout_tokens o"
            " USING (token) WHERE p.study_key = ?), patient_link FROM studies WHERE study_key = ?",
            (study_key, study_key)).fetchone()
        if row is not None and row[0]:
            return True
        links = {l for l in (link, row[1] if row is not None else None) if l}
        return self.listed(tokens) or any(_link_marked(db, l) for l in links)

    def opted_out_pseudonyms(self, patient_token: Callable[[str], str]) -> set[str]:
        """Pseudonyms of patients on the list (for pseudonymised clinical rows queued before an
        import): by the crosswalk's Patient IDs on the list, and the patients of marked studies."""
        db = self.state.connection()
        listed = self.listed_tokens()
        found = {id_new for id_old, id_new in db.execute("SELECT id_old, id_new FROM crosswalk WHERE kind = 'patient'")
                 if patient_token(id_old) in listed}
        found |= self.marked_links()
        found |= {r[0] for r in db.execute("SELECT pseudonym FROM studies WHERE opted_out_at IS NOT NULL"
                                          " AND pseudonym IS NOT NULL")}
        return found

    # -- settling a study found opted out --------------------------------------------------------

    def unsettled(self) -> list[str]:
        """Studies marked opted out with copies or sending left, that nothing else has in hand
        (receiving and stable studies are the pipeline's: it excludes them itself)."""
        return [r[0] for r in self.state.connection().execute(
            "SELECT study_key FROM studies WHERE opted_out_at IS NOT NULL"
            " AND opt_out_settled = 0 AND state NOT IN ('receiving', 'stable') ORDER BY opted_out_at")]

    def settle(self, study_key: str) -> int:
        """Nothing of the study is sent any more: its unsent and held instances become excluded
        (`opted_out`), its delivered ones purged, a retraction is queued if any of it may be on
        the platform,
        and the study is excluded. The caller removes the copies first. Returns instances changed."""
        now = time.time()
        with self.state.transaction() as db:
            row = db.execute("SELECT state, output_study FROM studies WHERE study_key = ? AND opted_out_at IS NOT NULL",
                             (study_key,)).fetchone()
            if row is None or row[0] in ("receiving", "stable"):
                return 0  # received again meanwhile: the pipeline decides it
            changed = db.execute(
                "UPDATE instances SET state = 'excluded', output = NULL, reason = ?, detail = ?"
                " WHERE study_key = ? AND state IN ('deidentified', 'quarantined')",
                (OPTED_OUT, "the patient is on the opt-out list", study_key)).rowcount
            changed += db.execute("UPDATE instances SET state = 'purged' WHERE study_key = ? AND state = 'delivered'",
                                  (study_key,)).rowcount
            may_be_sent = db.execute(f"SELECT {_MAY_BE_SENT} FROM studies WHERE study_key = ?",
                                     (study_key,)).fetchone()[0]
            if may_be_sent and row[1]:
                _queue_retraction(db, study_key, str(row[1]), now)
            db.execute("UPDATE studies SET state = 'excluded', reason = ?, opt_out_settled = 1, updated_at = ?"
                       " WHERE study_key = ?", (OPTED_OUT, now, study_key))
            db.execute("DELETE FROM deliveries WHERE study_key = ?", (study_key,))
            _event(db, now, study_key, "study_opt_out_settled", f"{changed} instance(s)")
        return int(changed)

    # -- retraction notices ----------------------------------------------------------------------

    def due_retractions(self, now: float | None = None) -> list[Retraction]:
        now = time.time() if now is None else now
        return [Retraction(*r) for r in self.state.connection().execute(
            "SELECT output_study, study_key, queued_at, attempts FROM retractions WHERE acknowledged_at IS NULL"
            " AND next_attempt_at <= ? ORDER BY queued_at", (now,))]

    def retraction_acknowledged(self, output_study: str) -> None:
        now = time.time()
        with self.state.transaction() as db:
            db.execute("UPDATE retractions SET acknowledged_at = ? WHERE output_study = ?", (now, output_study))
            key = db.execute("SELECT study_key FROM retractions WHERE output_study = ?", (output_study,)).fetchone()
            _event(db, now, key[0] if key else None, "retraction_acknowledged", None)

    def retraction_postponed(self, output_study: str, next_attempt_at: float, problem: str) -> None:
        with self.state.transaction() as db:
            db.execute("UPDATE retractions SET attempts = attempts + 1, next_attempt_at = ?, last_problem = ?"
                       " WHERE output_study = ?", (next_attempt_at, problem, output_study))

    def retraction_counts(self) -> dict[str, int]:
        row = self.state.connection().execute(
            "SELECT COALESCE(SUM(acknowledged_at IS NULL), 0), COALESCE(SUM(acknowledged_at IS NOT NULL), 0)"
            " FROM retractions").fetchone()
        return {"pending": int(row[0]), "acknowledged": int(row[1])}

    def opted_out_counts(self) -> dict[str, int]:
        """Studies found opted out, and of them those still to settle."""
        row = self.state.connection().execute(
            "SELECT COUNT(*), COALESCE(SUM(opt_out_settled = 0), 0) FROM studies WHERE opted_out_at IS NOT NULL").fetchone()
        return {"studies": int(row[0]), "unsettled": int(row[1])}

    # -- the access log --------------------------------------------------------------------------

    def log_access(self, operator: str, action: str, subject: str, reason: str) -> AccessEntry:
        """Append one entry (before the answer is shown: a lookup never happens unlogged)."""
        now = time.time()
        with self.state.transaction() as db:
            previous = db.execute("SELECT chain FROM access_log ORDER BY id DESC LIMIT 1").fetchone()
            chain = _chain(previous[0] if previous else "", now, operator, action, subject, reason)
            cursor = db.execute("INSERT INTO access_log (at, operator, action, subject, reason, chain)"
                                " VALUES (?, ?, ?, ?, ?, ?)", (now, operator, action, subject, reason, chain))
        return AccessEntry(int(cursor.lastrowid or 0), now, operator, action, subject, reason, chain)

    def access_log(self) -> list[AccessEntry]:
        return [AccessEntry(*r) for r in self.state.connection().execute(
            "SELECT id, at, operator, action, subject, reason, chain FROM access_log ORDER BY id")]

    def verify_access_log(self) -> int | None:
        """The id of the first entry whose chain does not hold (edited or removed before it), or None."""
        previous = ""
        for id_, at, operator, action, subject, reason, chain in self.state.connection().execute(
                "SELECT id, at, operator, action, subject, reason, chain FROM access_log ORDER BY id"):
            if _chain(previous, at, operator, action, subject, reason) != chain:
                return int(id_)
            previous = chain
        return None


def _chain(previous: str, at: float, operator: str, action: str, subject: str, reason: str) -> str:
    fields = json.dumps([previous, repr(at), operator, action, subject, reason], ensure_ascii=True)
    return hashlib.sha256(fields.encode("ascii")).hexdigest()
