"""The agent's configuration: one YAML file, checked whole at start-up.

Every key is declared here with its type, default and check; `load` refuses unknown keys and bad
values with the file, the key and what is expected (`config.yaml: receive.port: an integer from 1
to 65535, got 'eleven'`). Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from agent.errors import AgentError
from agent.limits import Limits


class ConfigError(AgentError):
    """The configuration cannot be used; the message names the file and the key."""


def check_private(source: Path, key: str, path: Path) -> None:
    """Refuse a secret file named by `key` (`platform.client_key`, `receive.tls.key`) that is
    missing or that the agent's group or others may access."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{source}: {key}: {path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{source}: {key}: {path}: not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        who = "readable by others" if st.st_mode & stat.S_IRWXO else "open to its group"
        raise ConfigError(f"{source}: {key}: {path} is {who} (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")


def load_ca_bundle(context: ssl.SSLContext, source: Path, key: str, path: Path) -> None:
    """Trust the CA certificates in the PEM file named by `key` (`platform.ca_bundle`,
    `receive.tls.ca_bundle`), or refuse the configuration saying why."""
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError:  # before OSError, of which it is a subclass
        raise ConfigError(f"{source}: {key}: {path}: no PEM CA certificate in it") from None
    except OSError as exc:
        raise ConfigError(f"{source}: {key}: {path}: cannot read ({exc.strerror})") from None


@dataclass(frozen=True)
class Peer:
    """A DICOM peer allowed to associate: its calling AE title and the address it comes from."""

    ae_title: str
    address: str


@dataclass(frozen=True)
class ReceiveTlsConfig:
    """DICOM over TLS (PS3.15 Annex B.1): what the agent presents, and the CA whose certificates it
    requires of every PACS before reading a byte of DICOM."""

    certificate: Path
    key: Path
    ca_bundle: Path


@dataclass(frozen=True)
class ReceiveConfig:
    ae_title: str = "NMIP_AGENT"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    allowed_peers: tuple[Peer, ...] = ()
    max_associations: int = 8
    network_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    max_pdu_bytes: int = 262_144
    processes: int = 2
    association_request_timeout_s: float = 5.0  # the A-ASSOCIATE-RQ must arrive whole within this
    max_connections: int = 64  # open connections from addresses that are not allowed peers
    max_connections_per_address: int = 16  # open connections from any one address
    tls: ReceiveTlsConfig | None = None  # None: plain TCP


@dataclass(frozen=True)
class SpoolConfig:
    directory: Path = Path("var/spool")
    quota_mb: int = 20_480
    min_free_mb: int = 1_024
    retention_days: int = 30


@dataclass(frozen=True)
class PipelineConfig:
    profile: str = "nccid"
    key_file: Path = Path("var/site.key")
    database: Path = Path("var/state.sqlite")
    outbox: Path = Path("var/outbox")
    quarantine: Path = Path("var/quarantine")
    quiet_period_s: float = 60.0
    workers: int = 2


@dataclass(frozen=True)
class PlatformConfig:
    """Where and how de-identified studies and clinical tables are delivered (empty URL: held)."""

    dicomweb_url: str = ""
    manifest_url: str = ""
    clinical_url: str = ""
    ca_bundle: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    token_file: Path | None = None
    oauth2_token_url: str = ""
    oauth2_client_id: str = ""
    oauth2_client_secret_file: Path | None = None
    batch_size: int = 50
    http2: bool = False
    timeout_s: float = 60.0
    retry_initial_s: float = 2.0
    retry_max_s: float = 600.0
    upload_window: str = ""
    bandwidth_mbit_s: float = 0.0
    proxy: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.dicomweb_url)


@dataclass(frozen=True)
class ClinicalConfig:
    """The clinical CSV drop folder; `schema` is checked by agent.clinical at start-up."""

    drop_folder: Path = Path("var/clinical/drop")
    rejects: Path = Path("var/clinical/rejects")
    archive: Path = Path("var/clinical/archive")
    after_upload: str = "archive"
    stable_s: float = 5.0
    schema: Any = None

    @property
    def enabled(self) -> bool:
        return self.schema is not None


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class ObserveConfig:
    """The local health and metrics endpoint (agent/observe.py); port 0: off."""

    bind: str = "127.0.0.1"
    port: int = 0
    platform_stale_minutes: int = 30  # /readyz: the platform must have been reached this recently


@dataclass(frozen=True)
class OptOutConfig:
    """Patients' choices (agent/optout.py): how old the imported opt-out list may be before a
    profile that makes it mandatory holds delivery."""

    max_age_days: int = 30


@dataclass(frozen=True)
class Config:
    receive: ReceiveConfig = field(default_factory=ReceiveConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    clinical: ClinicalConfig = field(default_factory=ClinicalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    limits: Limits = field(default_factory=Limits)
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    optout: OptOutConfig = field(default_factory=OptOutConfig)
    source: Path = Path("config.yaml")


# -- checks: each returns the value or raises ValueError with "what is expected" ----------------


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"an integer from {lo} to {hi}")
        return value

    return check


def _number(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(f"a number from {lo:g} to {hi:g}")
        return float(value)

    return check


def _ae_title(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 16 or "\\" in value or not value.isascii():
        raise ValueError("an AE title: 1 to 16 ASCII characters, no backslash")
    return value.strip()


def _address(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError("an IP address such as 0.0.0.0 or 10.1.2.3") from None


def _text(choices: tuple[str, ...] | None = None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or (choices and value not in choices):
            raise ValueError(f"one of {', '.join(choices)}" if choices else "a non-empty string")
        return value.strip()

    return check


def _https_url(value: Any) -> str:
    if not isinstance(value, str) or (value and not re.fullmatch(r"https://[^\s/?#@]+(/[^\s?#]*)?", value)):
        raise ValueError("an https:// URL without user or password in it (credentials go in files), or empty")
    return value.rstrip("/")


def _plain_text(value: Any) -> str:
    if not isinstance(value, str) or not value.isprintable():
        raise ValueError("a string")
    return value.strip()


def _proxy_url(value: Any) -> str:
    if not isinstance(value, str) or (value and not re.fullmatch(r"https?://[^\s/?#@]+/?", value)):
        raise ValueError("the site's forward proxy as http://host:port (no user or password: secrets are"
                         " never in this file), or empty for none")
    return value.rstrip("/")


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _window(value: Any) -> str:
    if not isinstance(value, str) or (value and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d", value)):
        raise ValueError("HH:MM-HH:MM in local time, such as 19:00-07:00, or empty for always")
    return value


def _schema(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError("a mapping (see docs/clinical.md)")
    return value


def _tls(value: Any) -> ReceiveTlsConfig:
    names = [spec.name for spec in fields(ReceiveTlsConfig)]
    if not isinstance(value, dict):
        raise ValueError(f"a mapping with {', '.join(names)}")
    unknown = sorted(map(str, set(value) - set(names)))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; expected {', '.join(names)}")
    for name in names:
        if not isinstance(value.get(name), str) or not value[name].strip():
            raise ValueError(f"{name} is missing: {', '.join(names)} go together (a file path each)")
    return ReceiveTlsConfig(**{name: Path(value[name].strip()) for name in names})


def _peers(value: Any) -> tuple[Peer, ...]:
    if not isinstance(value, list):
        raise ValueError("a list of {ae_title, address} entries")
    peers = []
    for index, entry in enumerate(value):
        where = f"entry {index + 1} (counting from 1)"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: a mapping with ae_title and address")
        unknown, missing = set(entry) - {"ae_title", "address"}, {"ae_title", "address"} - set(entry)
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(map(str, unknown))[0]!r}; expected ae_title and address")
        if missing:
            raise ValueError(f"{where}: {sorted(missing)[0]} is missing")
        try:
            peers.append(Peer(_ae_title(entry["ae_title"]), _address(entry["address"])))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(peers)


_CHECKS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "limits": {
        "max_depth": _int(4, 10_000), "max_value_bytes": _int(65_536, 1 << 31), "max_elements": _int(10_000, 100_000_000),
        "max_instance_mb": _int(16, 1_000_000), "worker_memory_mb": _int(512, 1_000_000),
        "instance_seconds": _number(1, 86_400),
    },
    "receive": {
        "ae_title": _ae_title, "bind_address": _address, "port": _int(1, 65535), "allowed_peers": _peers,
        "max_associations": _int(1, 64), "network_timeout_s": _number(1, 3600), "idle_timeout_s": _number(1, 86400),
        "max_pdu_bytes": _int(4096, 16_777_216), "processes": _int(1, 32),
        "association_request_timeout_s": _number(1, 60), "max_connections": _int(1, 4096),
        "max_connections_per_address": _int(1, 1024), "tls": _tls,
    },
    "spool": {"directory": Path, "quota_mb": _int(1, 10_000_000), "min_free_mb": _int(0, 10_000_000),
              "retention_days": _int(1, 3650)},
    "pipeline": {"profile": _text(), "key_file": Path, "database": Path, "outbox": Path, "quarantine": Path,
                 "quiet_period_s": _number(0, 86400), "workers": _int(1, 64)},
    "platform": {
        "dicomweb_url": _https_url, "manifest_url": _https_url, "clinical_url": _https_url, "ca_bundle": Path,
        "client_certificate": Path, "client_key": Path, "token_file": Path, "oauth2_token_url": _https_url,
        "oauth2_client_id": _plain_text, "oauth2_client_secret_file": Path, "batch_size": _int(1, 1000),
        "http2": _bool, "timeout_s": _number(1, 3600), "retry_initial_s": _number(0.1, 3600),
        "retry_max_s": _number(1, 86400), "upload_window": _window, "bandwidth_mbit_s": _number(0, 100_000),
        "proxy": _proxy_url,
    },
    "clinical": {"drop_folder": Path, "rejects": Path, "archive": Path, "after_upload": _text(("archive", "purge")),
                 "stable_s": _number(0, 3600), "schema": _schema},
    "log": {"level": _text(("debug", "info", "warning", "error"))},
    "observe": {"bind": _address, "port": _int(0, 65535), "platform_stale_minutes": _int(1, 10_080)},
    "optout": {"max_age_days": _int(1, 3650)},
}  # fmt: skip
#: Keys whose wrong value may hold a secret (a proxy URL with a password): never repeated in the error.
_NOT_ECHOED = {"proxy", "allowed_peers", "tls", "dicomweb_url", "manifest_url", "clinical_url", "oauth2_token_url"}  # may hold a password; the list is noise
_SECTIONS: dict[str, type] = {
    "receive": ReceiveConfig, "spool": SpoolConfig, "pipeline": PipelineConfig, "platform": PlatformConfig,
    "clinical": ClinicalConfig, "log": LogConfig, "limits": Limits, "observe": ObserveConfig, "optout": OptOutConfig,
}


def load(path: Path) -> Config:
    """Read and check `path`; every problem is a ConfigError naming the file and the key."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc, path)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(_SECTIONS)})")
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section {sorted(unknown)[0]!r}; expected {', '.join(_SECTIONS)}")
    sections = {name: _section(path, name, data.get(name) or {}) for name in _SECTIONS}
    config = Config(**sections, source=path)
    _check_platform(path, config.platform)
    if config.platform.enabled and config.clinical.enabled and not config.platform.clinical_url:
        raise ConfigError(f"{path}: platform.clinical_url: required when clinical.schema is set and delivery is on")
    return config


def _yaml_problem(exc: yaml.YAMLError, path: Path) -> str:
    """What the parser found and where, on a line the file has: an unclosed bracket is reported
    by PyYAML at the end of the stream, one line past the last; the line it opened on is the
    context."""
    try:
        lines = len(path.read_text(encoding="utf-8").splitlines()) or 1
    except (OSError, UnicodeDecodeError):
        lines = 1
    problem = str(getattr(exc, "problem", "") or "a syntax error").strip()
    mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    text = problem
    if mark is not None:
        text += f" at the end of the file (line {lines})" if mark.line >= lines else f" at line {mark.line + 1}"
    context_text = str(getattr(exc, "context", "") or "").strip()
    if context is not None and context_text:
        text += f", {context_text} that starts at line {context.line + 1}"
    return text


def _check_platform(path: Path, platform: PlatformConfig) -> None:
    """Keys that only make sense together: delivery needs a CA, a way to authenticate and a
    manifest URL (a study is delivered only once its manifest is)."""
    if not platform.enabled:
        return
    problems = [
        (not platform.manifest_url, "manifest_url", "required when dicomweb_url is set"),
        (platform.ca_bundle is None, "ca_bundle", "required: the platform's certificate is always verified"),
        ((platform.client_certificate is None) != (platform.client_key is None), "client_key",
         "client_certificate and client_key go together"),
        (platform.client_certificate is None and platform.token_file is None and not platform.oauth2_token_url,
         "client_certificate", "one of client_certificate, token_file or oauth2_token_url is required"),
        (bool(platform.oauth2_token_url) != bool(platform.oauth2_client_id and platform.oauth2_client_secret_file),
         "oauth2_token_url", "oauth2_token_url, oauth2_client_id and oauth2_client_secret_file go together"),
        (platform.token_file is not None and bool(platform.oauth2_token_url), "token_file",
         "either token_file or oauth2_token_url, not both"),
        (platform.retry_initial_s > platform.retry_max_s, "retry_initial_s", "at most retry_max_s"),
    ]
    for wrong, key, expected in problems:
        if wrong:
            raise ConfigError(f"{path}: platform.{key}: {expected}")


def _section(path: Path, name: str, values: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: {name}: expected a mapping")
    unknown = set(values) - set(_CHECKS[name])
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{path}: {name}.{key}: unknown key; expected one of {', '.join(_CHECKS[name])}")
    checked = {}
    for key, value in values.items():
        if value is None:  # `key: null` in the YAML: the default
            continue
        try:
            checked[key] = _CHECKS[name][key](value)
        except (ValueError, TypeError) as exc:
            shown = "" if key in _NOT_ECHOED else f", got {value!r}"
            raise ConfigError(f"{path}: {name}.{key}: {exc}{shown}") from None
    for spec in fields(cls):
        value = checked.get(spec.name, getattr(cls(), spec.name))
        if isinstance(value, Path) and not value.is_absolute():
            checked[spec.name] = (path.parent / value).resolve()
        elif isinstance(value, ReceiveTlsConfig):
            checked[spec.name] = ReceiveTlsConfig(*((path.parent / p).resolve() for p in
                                                    (value.certificate, value.key, value.ca_bundle)))
    return cls(**checked)
