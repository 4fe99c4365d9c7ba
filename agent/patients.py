"""What `optout`, `reidentify` and `audit` do: patients' choices and re-identification, on site.

Re-identification reads the crosswalk of the state database, which never leaves the site. Every
lookup is written to the access log before its answer is shown, with the operator (the user
who ran the command, and who they were before sudo) and the reason they gave; so is every
quarantine release and purge (agent/operate.py).
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import syslog
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import optout
from agent.config import Config
from agent.errors import UsageError
from agent.keys import SiteKey, load_key_file
from agent.spool.choices import AccessEntry, Choices, ImportSummary, ListInfo
from agent.spool.state import State

MIN_REASON = 8  # characters: "incidental finding, ticket 4411", not "x"


class NoReason(UsageError):
    """A re-identification, release or purge asked for without a reason: refused, exit 2."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def operator() -> str:
    """Who runs this command: the effective user, and the person who logged in, from the
    kernel's login uid (sudo and su keep it, and no environment variable can change it);
    SUDO_USER only when there is no login uid (a container), marked as claimed."""
    name = _user(os.geteuid())
    try:
        login = int(Path("/proc/self/loginuid").read_text().strip())
    except (OSError, ValueError):
        login = 0xFFFFFFFF
    if login != 0xFFFFFFFF:  # (uid_t)-1: no login session (a service, a container)
        logged_in = _user(login)
        return name if logged_in == name else f"{name} (logged in as {logged_in})"
    claimed = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {claimed}, claimed)" if claimed and claimed != name else name


def _to_syslog(entry: AccessEntry) -> None:
    """A copy of each access-log entry in the host's log (the journal under systemd), out of
    reach of the agent's user: removing or rewriting entries in the database shows against it.
    The reason is free text and may name a patient: only its length goes."""
    try:
        syslog.openlog("nmip-agent", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
        syslog.syslog(syslog.LOG_NOTICE, f"access_log id={entry.id} action={entry.action} operator={entry.operator!r} "
                                         f"subject={entry.subject!r} reason_chars={len(entry.reason)} "
                                         f"chain={entry.chain}")
        syslog.closelog()
    except OSError:
        pass  # no syslog on this host: the database entry stands alone


def require_reason(reason: str | None, what: str) -> str:
    text = " ".join((reason or "").split())
    if len(text) < MIN_REASON:
        raise NoReason(f"{what} needs --reason: why it is done (at least {MIN_REASON} characters; "
                       "it goes to the access log with your user name)")
    return text


def _open(config: Config) -> tuple[State, Choices]:
    state = State(config.pipeline.database)
    return state, Choices(state)


def import_list(config: Config, path: Path, *, allow_empty: bool = False) -> tuple[ImportSummary, optout.OptOutFile]:
    """Replace the opt-out list with the identifiers in `path` (kept as keyed tokens only)."""
    listed = optout.read_list(path)
    if not listed.identifiers and not allow_empty:
        raise optout.OptOutListError(f"{path}: no identifier in it: an empty export would lift every opt-out; "
                                     "if the list really is empty, import it with --allow-empty")
    key = load_key_file(config.pipeline.key_file)
    state, choices = _open(config)
    try:
        summary = choices.replace_list(optout.tokens(key, listed.identifiers), _token_of(key), operator())
    finally:
        state.close()
    return summary, listed


def list_info(config: Config) -> tuple[ListInfo, dict[str, int], dict[str, int]]:
    """The list's size and age, studies found opted out, and retraction notices."""
    state, choices = _open(config)
    try:
        return choices.info(), choices.opted_out_counts(), choices.retraction_counts()
    finally:
        state.close()


def check_identifier(config: Config, identifier: str) -> bool:
    """Whether one identifier is on the list. It tells a patient's choice: logged like a lookup
    (the identifier itself is not)."""
    key = load_key_file(config.pipeline.key_file)
    state, choices = _open(config)
    try:
        _to_syslog(choices.log_access(operator(), "optout_check", "an identifier", "optout check"))
        return choices.listed(optout.tokens(key, [identifier]))
    finally:
        state.close()


def _token_of(key: SiteKey) -> Callable[[str], str]:
    return lambda identifier: optout.token(key, identifier)


@dataclass(frozen=True)
class SourceStudy:
    study_key: str
    state: str
    source_study_uid: str | None
    pseudonymous_study_uid: str | None


@dataclass(frozen=True)
class Reidentified:
    patient_ids: tuple[str, ...]
    pseudonym: str | None
    studies: tuple[SourceStudy, ...]
    logged: AccessEntry


def reidentify(config: Config, *, pseudonym: str | None, study_uid: str | None, reason: str | None) -> Reidentified:
    """The hospital Patient ID and source studies behind a pseudonym or a pseudonymous Study
    Instance UID. The lookup is logged first, found or not."""
    text = require_reason(reason, "reidentify")
    if (pseudonym is None) == (study_uid is None):
        raise UsageError("reidentify: give --pseudonym or --study-uid (one of them)")
    subject = f"pseudonym {pseudonym}" if pseudonym is not None else f"study_uid {study_uid}"
    state, choices = _open(config)
    try:
        logged = choices.log_access(operator(), "reidentify", subject, text)
        _to_syslog(logged)
        db = state.connection()
        if study_uid is not None:
            row = db.execute("SELECT pseudonym FROM studies WHERE output_study = ? AND pseudonym IS NOT NULL",
                             (study_uid.strip(),)).fetchone()
            pseudonym = None if row is None else str(row[0])
            rows = db.execute("SELECT study_key, state, output_study FROM studies WHERE output_study = ?",
                              (study_uid.strip(),)).fetchall()
        else:
            pseudonym = (pseudonym or "").strip()
            rows = db.execute("SELECT study_key, state, output_study FROM studies WHERE pseudonym = ?"
                              " ORDER BY last_received_at", (pseudonym,)).fetchall()
        patient_ids = tuple(r[0] for r in db.execute(
            "SELECT id_old FROM crosswalk WHERE kind = 'patient' AND id_new = ? ORDER BY id_old", (pseudonym or "",)))
        studies = tuple(SourceStudy(str(key), str(st), _source_uid(db, out), out) for key, st, out in rows)
    finally:
        state.close()
    return Reidentified(patient_ids, pseudonym, studies, logged)


def _source_uid(db: sqlite3.Connection, output_study: str | None) -> str | None:
    if not output_study:
        return None
    row = db.execute("SELECT id_old FROM crosswalk WHERE kind = 'uid' AND id_new = ?", (output_study,)).fetchone()
    return None if row is None else str(row[0])


def log_operator_action(config: Config, action: str, study_key: str, reason: str) -> None:
    """A quarantine release or purge, in the access log before it is done."""
    state, choices = _open(config)
    try:
        _to_syslog(choices.log_access(operator(), action, f"study {study_key}", reason))
    finally:
        state.close()


def access_log(config: Config) -> tuple[list[AccessEntry], int | None]:
    """Every entry, and the first whose chain does not hold (None: the log is whole)."""
    state, choices = _open(config)
    try:
        return choices.access_log(), choices.verify_access_log()
    finally:
        state.close()
