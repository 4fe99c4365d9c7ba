"""`nmip-agent config check`: everything `serve` would refuse, found without starting it.

Hospital IT runs it after editing config.yaml, before a restart: it reads the configuration,
loads the key and the profile, builds the platform client (CA bundle, client certificate, token
file modes) and the receiver's TLS context (`receive.tls`), parses the clinical schema, looks at
the folders the agent keeps data in and the certificates' expiry, and, when asked, makes one TLS
handshake with the platform. It creates and changes nothing.
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent import config as config_module
from agent.errors import AgentError

if TYPE_CHECKING:
    from agent.forward.client import PlatformClient

Level = Literal["ok", "warning", "error"]
_EXPIRY_WARNING = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Finding:
    level: Level
    what: str
    detail: str


def check(path: Path, *, handshake: bool = False) -> list[Finding]:
    """Every finding, errors first stop nothing: one run says all that is wrong."""
    try:
        config = config_module.load(path)
    except AgentError as exc:
        return [Finding("error", "configuration", str(exc))]
    findings = [Finding("ok", "configuration", f"{path}: every key valid")]
    findings += _key(config)
    findings += _profile(config)
    findings += _folders(config)
    findings += _database(config)
    findings += _listening(config)
    client = None
    if config.platform.enabled:
        client, found = _platform(config)
        findings += found
        findings += _certificate_expiry({"platform.client_certificate": config.platform.client_certificate,
                                         "platform.ca_bundle": config.platform.ca_bundle})
    else:
        findings.append(Finding("warning", "platform", "platform.dicomweb_url is not set: nothing will be delivered"))
    if config.receive.tls is not None:
        findings += _receive_tls(config)
    if config.clinical.enabled:
        findings += _schema(config)
    if handshake and client is not None:
        findings.append(_handshake(client))
    if client is not None:
        client.close()
    if config.receive.port < 1024:
        findings.append(Finding("ok" if os.geteuid() == 0 else "warning", "receive.port",
                                f"port {config.receive.port} needs CAP_NET_BIND_SERVICE (the packaged unit grants it)"))
    return findings


def _key(config: config_module.Config) -> list[Finding]:
    from agent.keys import load_key_file

    try:
        key = load_key_file(config.pipeline.key_file)
    except AgentError as exc:
        return [Finding("error", "pipeline.key_file", str(exc))]
    return [Finding("ok", "pipeline.key_file", f"key {key.key_id} loads; back it up off this machine")]


def _profile(config: config_module.Config) -> list[Finding]:
    from agent.deidentify import load_profile, ocr

    try:
        profile = load_profile(config.pipeline.profile)
    except AgentError as exc:
        return [Finding("error", "pipeline.profile", str(exc))]
    found = [Finding("ok", "pipeline.profile", f"{profile.name} version {profile.version} loads "
                     f"({len(profile.pixels.rules)} pixel rules, OCR {'on' if profile.pixels.ocr else 'off'})")]
    if profile.pixels.ocr and not ocr.available():
        found.append(Finding("error", "pipeline.profile", "the profile reads burned-in text and Tesseract is not "
                             "installed (Debian: tesseract-ocr tesseract-ocr-eng): every at-risk image would be refused"))
    return found


def _folders(config: config_module.Config) -> list[Finding]:
    """Each folder the agent writes: existing and private, or creatable by this user."""
    found = []
    folders = {"spool.directory": config.spool.directory, "pipeline.outbox": config.pipeline.outbox,
               "pipeline.quarantine": config.pipeline.quarantine, "pipeline.database": config.pipeline.database.parent}
    if config.clinical.enabled:
        folders |= {"clinical.drop_folder": config.clinical.drop_folder, "clinical.rejects": config.clinical.rejects,
                    "clinical.archive": config.clinical.archive}
    for key, folder in folders.items():
        if folder is None:
            continue
        folder = Path(folder)
        if folder.exists():
            st = folder.stat()
            if not stat.S_ISDIR(st.st_mode):
                found.append(Finding("error", key, f"{folder} is not a folder"))
            elif st.st_uid != os.geteuid():
                found.append(Finding("error", key, f"{folder} is owned by user id {st.st_uid}, not this user "
                                     f"({os.geteuid()})"))
            elif not os.access(folder, os.W_OK | os.X_OK):
                found.append(Finding("error", key, f"{folder} is not writable by this user"))
            elif stat.S_IMODE(st.st_mode) & 0o077 and key != "clinical.drop_folder":
                found.append(Finding("warning", key, f"{folder} is mode {stat.S_IMODE(st.st_mode):04o}: serve "
                                     f"makes it 0700 (it holds identifiable data)"))
            else:
                found.append(Finding("ok", key, f"{folder}"))
            continue
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK | os.X_OK):
            found.append(Finding("error", key, f"{folder} does not exist and {parent} is not writable by this user"))
        else:
            found.append(Finding("ok", key, f"{folder} will be created (0700)"))
    return found


def _database(config: config_module.Config) -> list[Finding]:
    """The state database's files (private, this user's), its schema against this agent's, and
    whether delivery waits for an opt-out list; read only, through a read-only connection."""
    import sqlite3

    from agent.deidentify.profile import optout_required
    from agent.optout import OptOutPolicy
    from agent.spool.state import SCHEMA_VERSION

    database = config.pipeline.database
    if not database.exists():
        required = optout_required(config.pipeline.profile)
        return [Finding("ok", "pipeline.database", f"{database} will be created"),
                *([Finding("warning", "optout", "the profile makes the opt-out list mandatory: import it before "
                           "going live (`nmip-agent optout import FILE`)")] if required and config.platform.enabled else [])]
    found = []
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if not path.exists():
            continue
        st = path.stat()
        if st.st_uid != os.geteuid():
            found.append(Finding("error", "pipeline.database", f"{path} is owned by user id {st.st_uid}, not this "
                                 f"user ({os.geteuid()}): run as the agent's user, or chown it"))
        elif stat.S_IMODE(st.st_mode) & 0o077:
            found.append(Finding("warning", "pipeline.database", f"{path} is mode {stat.S_IMODE(st.st_mode):04o}: "
                                 "serve makes it 0600 (it holds the crosswalk)"))
    try:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            has_list = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'optout_imports'").fetchone()
            imported = db.execute("SELECT MAX(at) FROM optout_imports").fetchone()[0] if has_list else None
        finally:
            db.close()
    except sqlite3.Error as exc:
        return found + [Finding("error", "pipeline.database", f"{database} cannot be read ({type(exc).__name__})")]
    if version > SCHEMA_VERSION:
        found.append(Finding("error", "pipeline.database", f"schema version {version} is newer than this agent's "
                             f"({SCHEMA_VERSION}): run the agent version that wrote it, or restore a backup"))
    elif version < SCHEMA_VERSION:
        found.append(Finding("warning", "pipeline.database", f"schema version {version}: serve takes it to "
                             f"{SCHEMA_VERSION} at its next start, keeping a copy as it was"))
    else:
        found.append(Finding("ok", "pipeline.database", f"{database} (schema version {version})"))
    if config.platform.enabled:
        held = OptOutPolicy(optout_required(config.pipeline.profile), config.optout.max_age_days).problem(imported)
        found.append(Finding("error", "optout", f"delivery held: {held}") if held else
                     Finding("ok", "optout", "the opt-out list is current" if imported else "not required"))
    return found


def _listening(config: config_module.Config) -> list[Finding]:
    """receive.port (and observe.port) can be listened on, unless the agent itself holds them."""
    import socket

    from agent.notify import RunningLock

    if RunningLock(config.pipeline.database).holder() is not None:
        return [Finding("ok", "receive.port", "the agent is running and holds its ports")]
    found = []
    for key, address, port in (("receive.port", config.receive.bind_address, config.receive.port),
                               ("observe.port", config.observe.bind, config.observe.port)):
        if not port:
            continue
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except PermissionError:
                continue  # a port below 1024: said below, the unit grants it
            except OSError as exc:
                found.append(Finding("error", key, f"{address}:{port} cannot be listened on ({exc.strerror}): "
                                     "another program holds it, or the address is not this host's"))
    return found


def _platform(config: config_module.Config) -> tuple[PlatformClient | None, list[Finding]]:
    from agent.forward.client import PlatformClient

    try:
        client = PlatformClient(config.platform, config.source)
    except AgentError as exc:
        return None, [Finding("error", "platform", str(exc))]
    return client, [Finding("ok", "platform", "CA bundle, client credentials and token file load")]


def _receive_tls(config: config_module.Config) -> list[Finding]:
    """The SSLContext a receiver process builds (files readable, key private and matching), and expiry."""
    from agent.receive_tls import server_context

    tls = config.receive.tls
    assert tls is not None
    try:
        server_context(tls, config.source)
    except AgentError as exc:
        return [Finding("error", "receive.tls", str(exc))]
    found = [Finding("ok", "receive.tls", "certificate, key and CA bundle load; PACS must present a certificate "
                     "signed by receive.tls.ca_bundle (TLS 1.2 or later)")]
    return found + _certificate_expiry({"receive.tls.certificate": tls.certificate,
                                        "receive.tls.ca_bundle": tls.ca_bundle})


def _certificate_expiry(files: dict[str, Path | None]) -> list[Finding]:
    """Each certificate's expiry, by config key: the first of a `...certificate` file (the leaf),
    every one of a CA bundle."""
    from cryptography import x509

    found = []
    now = datetime.datetime.now(datetime.timezone.utc)
    for key, path in files.items():
        if path is None:
            continue
        try:
            certificates = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError):
            continue  # the check before this one says what is wrong with the file
        for certificate in certificates[:1] if key.endswith("certificate") else certificates:
            ends = certificate.not_valid_after_utc
            subject = certificate.subject.rfc4514_string()
            if ends < now:
                found.append(Finding("error", key, f"{subject} expired on {ends:%Y-%m-%d}"))
            elif ends - now < _EXPIRY_WARNING:
                found.append(Finding("warning", key, f"{subject} expires on {ends:%Y-%m-%d}: renew it"))
            else:
                found.append(Finding("ok", key, f"{subject} valid until {ends:%Y-%m-%d}"))
    return found


def _schema(config: config_module.Config) -> list[Finding]:
    from agent.clinical.schema import parse_schema

    try:
        parse_schema(config.clinical.schema, config.source)
    except AgentError as exc:
        return [Finding("error", "clinical.schema", str(exc))]
    return [Finding("ok", "clinical.schema", "parses")]


def _handshake(client: PlatformClient) -> Finding:
    """One TLS handshake and request to the platform's DICOMweb root: trust, certificate, proxy."""
    import httpx

    http: httpx.Client = getattr(client, "_http")
    url = str(client.config.dicomweb_url)
    try:
        response = http.get(url, timeout=15)
    except httpx.HTTPError as exc:
        return Finding("error", "platform.dicomweb_url", f"no TLS connection ({type(exc).__name__}): check the "
                       f"address, the proxy, platform.ca_bundle and the client certificate")
    return Finding("ok", "platform.dicomweb_url", f"TLS handshake done; the platform answered HTTP {response.status_code}")


def exit_code(findings: list[Finding]) -> int:
    """2 when serve would refuse to start or deliver, 1 for warnings only, 0 when all is well."""
    levels = {f.level for f in findings}
    return 2 if "error" in levels else 1 if "warning" in levels else 0
