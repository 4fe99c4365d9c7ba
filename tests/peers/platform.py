"""A real central platform on loopback, for the agent's delivery tests: nginx in front of Orthanc.

    with platform(tmp_path) as central:                       # or the `central_platform` fixtures
        ctx = central.ssl_context()                           # trusts the test CA, presents the site cert
        httpx.post(central.dicomweb_url + "/studies", ..., headers=central.auth_headers(), verify=ctx)
        central.stored_sop_instance_uids()                    # what Orthanc holds
        central.put_files("manifests")                        # what was PUT, by relative path

What runs (both child processes of the test, nothing from the Debian services):
- nginx (Debian package nginx, built --with-http_dav_module) on 127.0.0.1 and a free port:
  TLS with a server certificate from a test CA (tests/peers/certs.py) naming 127.0.0.1 and
  localhost, `ssl_verify_client on` against that CA, and `Authorization: Bearer <token>` on every
  location but the OAuth2 token endpoint (401 and `WWW-Authenticate: Bearer` otherwise).
  HTTP/1.1, and HTTP/2 for a client that offers h2 by ALPN. `/dicom-web/` is proxied to
  Orthanc's DICOMweb plugin, the body buffered first (no size limit) so that a chunked upload
  reaches Orthanc with a Content-Length; `/manifests/` and `/clinical/` take
  WebDAV PUTs into webdav_root (201 Created for a new file, 204 No Content when it replaces one;
  missing folders are created); `POST /oauth2/token` answers the client-credentials JSON when
  HTTP Basic carries the right client id and secret (401 `{"error": "invalid_client"}`
  otherwise; nginx cannot read the form body, so grant_type is not checked). Every file nginx
  writes (pid, logs, temp bodies) is under workdir/nginx.
- Orthanc (Debian package orthanc, via tests/peers/orthanc.py) with the DICOMweb plugin (Debian
  package orthanc-dicomweb), REST on a free port that nginx alone uses, its DICOM listener off,
  storage under workdir, and a Lua `ReceivedInstanceFilter` that refuses the SOP Instance UIDs
  listed in a file (reject_sop_instances()).

What the TLS front answers, as observed with nginx 1.22.1 (Debian bookworm):
- no client certificate, or one from another CA (other_client_certificate): the TLS handshake
  completes and nginx answers HTTP 400 with an HTML body saying "No required SSL certificate
  was sent" / "The SSL certificate error", so the client sees a 400, not a handshake failure.
- a server certificate from another CA (use_other_ca_server_certificate()): a client trusting
  only ca_bundle fails certificate verification (ssl.SSLCertVerificationError,
  CERTIFICATE_VERIFY_FAILED), before any HTTP is sent.
- stop(): nothing listens, connections are refused; start() listens again on the same port.

STOW-RS when reject_sop_instances() refuses an instance (Orthanc 1.10.1 + DICOMweb plugin 1.7,
Debian bookworm), observed with `Accept: application/dicom+json` (XML alike):
- HTTP 200 (STOW_STATUS_WHEN_REFUSED), never 202/400/409, whichever instance is refused.
- FailedSOPSequence (0008,1198) is present but EMPTY: no FailureReason (0008,1197) is given.
- ReferencedSOPSequence (0008,1199) lists exactly the instances stored, each with
  ReferencedSOPClassUID, ReferencedSOPInstanceUID and RetrieveURL; the refused one is absent.
- The parts BEFORE the refused one are stored; the refused one and every part AFTER it in the
  same request are neither stored nor listed (sent [ok, refused, ok] -> stored [ok]; refused
  first -> nothing stored, both sequences empty). So "the rest stored" holds only when the
  refused instance is the last part.
Why (from Orthanc's log and the plugin's source): the Lua filter raises an error (Orthanc's
LuaError, code 2031), the plugin's internal POST /instances throws, and 1.7 does not catch it
per part, so apparently its multipart reader gives up there and the answer is built from the
parts before. (A filter returning false instead is worse, also observed: Orthanc answers
"FilteredOut", the plugin counts it as stored and lists it in ReferencedSOPSequence, so the
client is told a dropped instance was stored.) The plugin's current upstream source catches the
error per part and answers 202 with a FailedSOPSequence item (FailureReason 0x0110), but Debian
bookworm ships 1.7, so no FailedSOPSequence item can be produced here by refusing an instance.
A client therefore has to compare ReferencedSOPSequence with what it sent, whatever the status.
The response never lists an instance that was not stored. test_platform.py pins this down.

The one per-instance FailedSOPSequence item DICOMweb 1.7 does produce, also observed: a POST to
`/dicom-web/studies/{StudyInstanceUID}` with a part from another study answers HTTP 409 with NO
Content-Type header (the body is still DICOM JSON): that part in FailedSOPSequence with
ReferencedSOPClassUID, ReferencedSOPInstanceUID and FailureReason 272 (0x0110, as a JSON
number), not stored; the other parts stored and in ReferencedSOPSequence.
refuse_stow_except_study(uid) makes nginx send a client's `POST /dicom-web/studies` there, to
get such answers from a client that never names the study.

The platform can be shared by the tests of a module (central_platform fixture) and reset() to
its initial state (no instances, no PUT files, first token, platform certificate, no rejected
UIDs, no pinned study, nginx running) between them (clean_platform fixture).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .certs import Pki, make_pki
from .orthanc import Orthanc, OrthancError, orthanc, orthanc_available
from .ports import LOOPBACK, free_port, port_open, stop_process

NGINX = "/usr/sbin/nginx"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STARTUP_TIMEOUT_S = 30.0
OAUTH2_EXPIRES_IN_S = 3600
OLD_WORKER_WAIT_S = 5.0  # after a reload, how long to wait for the old workers to be gone
# What Orthanc 1.10.1 + DICOMweb 1.7 answer to a STOW-RS request with a refused instance (see above).
STOW_STATUS_WHEN_REFUSED = 200
_POLL_S = 0.02
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")

__all__ = [
    "Platform",
    "platform",
    "platform_available",
    "central_platform",
    "clean_platform",
    "STOW_STATUS_WHEN_REFUSED",
    "StoredInstance",
]


def platform_available() -> bool:
    """True when nginx, Orthanc and the DICOMweb plugin are installed (scripts/install-debian-packages.sh)."""
    return os.access(NGINX, os.X_OK) and orthanc_available() and os.path.exists(DICOMWEB_PLUGIN)


def _write_secret(path: Path, text: str) -> Path:
    """Write text to a file created 0600 (a token or client secret as an operator would store it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    os.chmod(path, 0o600)
    return path


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _check_token(token: str) -> str:
    # The token goes into nginx's config between quotes: keep to RFC 6750's b64token characters.
    if not token or not set(token) <= _TOKEN_CHARS:
        raise ValueError(f"not a bearer token nginx can be configured with: {token!r}")
    return token


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- Orthanc: DICOMweb plugin and the Lua filter behind reject_sop_instances()

_LUA_FILTER = """\
-- Refuse the SOP Instance UIDs listed, one a line, in the file below (re-read for each instance,
-- so the tests change it without restarting Orthanc). An error, not `return false`: a filtered-out
-- instance counts as stored for the DICOMweb plugin, an error makes its POST /instances fail.
local REJECTED = %s

function ReceivedInstanceFilter(dicom, origin, info)
  local listing = io.open(REJECTED, "r")
  if listing == nil then
    return true
  end
  local uid = dicom.SOPInstanceUID
  for line in listing:lines() do
    if line == uid then
      listing:close()
      error("nmip test platform: refusing SOP instance " .. uid)
    end
  end
  listing:close()
  return true
end
"""


def _orthanc_extra(lua: Path, public_port: int) -> dict[str, Any]:
    return {
        "Plugins": [DICOMWEB_PLUGIN],
        "LuaScripts": [str(lua)],
        "DicomServerEnabled": False,  # images arrive over STOW-RS only
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            # RetrieveURLs in STOW-RS answers name nginx's public address, not Orthanc's own.
            "Host": f"{LOOPBACK}:{public_port}",
            "Ssl": True,
        },
    }


# --- nginx


@dataclass
class _NginxSettings:
    port: int
    orthanc_port: int
    prefix: Path
    webdav_root: Path
    pki: Pki
    token: str
    oauth2_client_id: str
    oauth2_client_secret: str
    other_ca_server: bool = False
    oauth2_expires_in: int = OAUTH2_EXPIRES_IN_S
    stow_study: str | None = None  # refuse_stow_except_study()

    def server_certificate(self) -> tuple[Path, Path]:
        if self.other_ca_server:
            return self.pki.other_server_certificate, self.pki.other_server_key
        return self.pki.server_certificate, self.pki.server_key


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")


def _nginx_conf(s: _NginxSettings) -> str:
    """nginx.conf for the current settings (rewritten, then reloaded, by every change)."""
    certificate, key = s.server_certificate()
    p = s.prefix
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers write webdav_root and temp paths
    token_json = json.dumps(
        {"access_token": s.token, "token_type": "Bearer", "expires_in": s.oauth2_expires_in}
    )
    bearer_required = """
            if ($nmip_bearer_ok = 0) {
                add_header WWW-Authenticate 'Bearer realm="nmip-test-platform"' always;
                return 401;
            }"""
    webdav = """
            root %s;
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;""" % s.webdav_root
    proxy = f"""
            proxy_pass http://{LOOPBACK}:{s.orthanc_port};  # the URI as the client sent it
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header Authorization "";
            proxy_set_header X-Forwarded-Proto https;
            # Whole body first (to a temp file under the prefix), so Orthanc always gets a
            # Content-Length even from a chunked client; no size limit; slow studies allowed.
            proxy_request_buffering on;
            proxy_connect_timeout 10s;
            proxy_send_timeout 300s;
            proxy_read_timeout 300s;"""
    pinned_stow = ""
    if s.stow_study is not None:  # refuse_stow_except_study(): POST .../studies -> .../studies/{uid}
        pinned_stow = f"""
        location = /dicom-web/studies {{{bearer_required}
            if ($request_method = POST) {{
                rewrite ^ /dicom-web/studies/{s.stow_study} break;
            }}{proxy}
        }}
"""
    return f"""\
# Written by tests/peers/platform.py; rewritten and reloaded by each change of settings.
{user}daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout 10s;
pid {p / "nginx.pid"};
error_log {p / "logs" / "error.log"} info;

events {{
    worker_connections 256;
}}

http {{
    access_log {p / "logs" / "access.log"};
    client_body_temp_path {p / "tmp" / "body"};
    proxy_temp_path {p / "tmp" / "proxy"};
    fastcgi_temp_path {p / "tmp" / "fastcgi"};
    uwsgi_temp_path {p / "tmp" / "uwsgi"};
    scgi_temp_path {p / "tmp" / "scgi"};
    default_type application/octet-stream;
    server_tokens off;
    keepalive_timeout 30s;
    map_hash_bucket_size 256;  # the map keys below (whole Authorization values) exceed the default 64

    map $http_authorization $nmip_bearer_ok {{
        default 0;
        "Bearer {s.token}" 1;
    }}
    map $http_authorization $nmip_oauth2_client_ok {{
        default 0;
        "{_basic(s.oauth2_client_id, s.oauth2_client_secret)}" 1;
    }}

    server {{
        listen {LOOPBACK}:{s.port} ssl http2;  # HTTP/2 only for clients offering it (ALPN)
        server_name 127.0.0.1 localhost;

        ssl_certificate {certificate};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {s.pki.ca_certificate};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_session_cache off;
        ssl_session_tickets off;

        client_max_body_size 0;

        # Readiness probe of platform.py (behind the same checks as the real endpoints).
        location = /health {{{bearer_required}
            return 204;
        }}

        location = /oauth2/token {{
            default_type application/json;
            if ($request_method != POST) {{
                return 405 '{{"error": "invalid_request"}}';
            }}
            if ($nmip_oauth2_client_ok = 0) {{
                add_header WWW-Authenticate 'Basic realm="nmip-test-platform"' always;
                return 401 '{{"error": "invalid_client"}}';
            }}
            add_header Cache-Control no-store always;
            return 200 '{token_json}';
        }}

        location /dicom-web/ {{{bearer_required}{proxy}
        }}
{pinned_stow}
        location /manifests/ {{{bearer_required}{webdav}
        }}

        location /clinical/ {{{bearer_required}{webdav}
        }}

        location / {{{bearer_required}
            return 404;
        }}
    }}
}}
"""


def _children(pid: int) -> dict[int, str]:
    """Child processes of pid -> their command line (nginx's process titles)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # the process went away meanwhile
    return found


class _Nginx:
    """One nginx master in the foreground (a child process), restartable on the same port."""

    def __init__(self, settings: _NginxSettings):
        self.settings = settings
        self.conf = settings.prefix / "nginx.conf"
        self.error_log = settings.prefix / "logs" / "error.log"
        self.process: subprocess.Popen[bytes] | None = None
        for sub in ("logs", "tmp"):
            (settings.prefix / sub).mkdir(parents=True, exist_ok=True)

    def write_conf(self) -> None:
        _write_atomic(self.conf, _nginx_conf(self.settings))

    def start(self) -> None:
        if self.running():
            return
        self.write_conf()
        args = [NGINX, "-p", f"{self.settings.prefix}/", "-c", str(self.conf), "-e", str(self.error_log)]
        with open(self.settings.prefix / "logs" / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not port_open(LOOPBACK, self.settings.port, timeout=1.0):
            if self.process.poll() is not None or time.monotonic() >= deadline:
                code = self.process.poll()
                self.stop()
                raise RuntimeError(
                    f"nginx did not listen on {LOOPBACK}:{self.settings.port} (exit code {code}); "
                    f"its error log:\n{_tail(self.error_log)}"
                )
            time.sleep(_POLL_S)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Fast shutdown (SIGTERM): open connections are closed, the port is free on return."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, grace)

    def reload(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Rewrite the config and SIGHUP the master; return once only new workers take connections.

        The master starts new workers, then tells the old ones to stop accepting, close their
        idle keep-alive connections and finish (title "worker process is shutting down"). This
        waits for that, then (up to OLD_WORKER_WAIT_S) for the old workers to be gone, so that a
        client's pooled connection is not reused against the old settings: its next request opens
        a new connection, served with the new ones. An old worker still busy with a request after
        that is left to finish it (worker_shutdown_timeout bounds it).
        """
        if not self.running():
            self.write_conf()  # start() will read it
            return
        assert self.process is not None
        old = set(_children(self.process.pid))
        self.write_conf()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            children = _children(self.process.pid)
            new = [pid for pid in children if pid not in old and "worker process" in children[pid]]
            old_accepting = [pid for pid in old if pid in children and "shutting down" not in children[pid]]
            if new and not old_accepting:
                break
            if self.process.poll() is not None or time.monotonic() >= deadline:
                raise RuntimeError(f"nginx did not reload within {timeout:g} s; its error log:\n{_tail(self.error_log)}")
            time.sleep(_POLL_S)
        settle = time.monotonic() + OLD_WORKER_WAIT_S
        while old & set(_children(self.process.pid)) and time.monotonic() < settle:
            time.sleep(_POLL_S)


# --- the platform


@dataclass(frozen=True)
class StoredInstance:
    """An instance Orthanc holds: its Orthanc ID and its tags (simplified: keyword -> value)."""

    orthanc_id: str
    tags: dict[str, Any]

    @property
    def sop_instance_uid(self) -> str:
        return str(self.tags["SOPInstanceUID"])


@dataclass(repr=False)
class Platform:
    """A running central platform; see platform()."""

    workdir: Path
    port: int
    pki: Pki
    token_file: Path
    oauth2_client_id: str
    oauth2_client_secret_file: Path
    webdav_root: Path
    orthanc: Orthanc
    _nginx: _Nginx
    _rejected_file: Path
    _initial_token: str
    _rejected: frozenset[str] = field(default=frozenset())

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Platform({self.base_url}, {state}, workdir={self.workdir})"

    # --- where the agent connects, and with what

    @property
    def base_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}/manifests"

    @property
    def clinical_url(self) -> str:
        return f"{self.base_url}/clinical"

    @property
    def oauth2_token_url(self) -> str:
        return f"{self.base_url}/oauth2/token"

    @property
    def ca_bundle(self) -> Path:
        return self.pki.ca_certificate

    @property
    def other_ca_bundle(self) -> Path:
        """A CA that did NOT sign the platform's server certificate (but did sign the "other" one)."""
        return self.pki.other_ca_certificate

    @property
    def client_certificate(self) -> Path:
        return self.pki.client_certificate

    @property
    def client_key(self) -> Path:
        return self.pki.client_key

    @property
    def other_client_certificate(self) -> Path:
        """A client certificate from the other CA: nginx answers 400 to it."""
        return self.pki.other_client_certificate

    @property
    def other_client_key(self) -> Path:
        return self.pki.other_client_key

    @property
    def token(self) -> str:
        """The bearer token nginx accepts now (and the OAuth2 endpoint hands out)."""
        return self._nginx.settings.token

    @property
    def oauth2_client_secret(self) -> str:
        return self._nginx.settings.oauth2_client_secret

    @property
    def error_log(self) -> Path:
        return self._nginx.error_log

    @property
    def access_log(self) -> Path:
        return self._nginx.settings.prefix / "logs" / "access.log"

    def ssl_context(
        self, *, client_certificate: bool | tuple[Path, Path] = True, ca: Path | None = None
    ) -> ssl.SSLContext:
        """A client context trusting `ca` (default ca_bundle) alone, hostname checked, presenting
        the site's certificate (True), none (False) or the given (certificate, key)."""
        context = ssl.create_default_context(cafile=str(ca or self.ca_bundle))
        if client_certificate is True:
            client_certificate = (self.client_certificate, self.client_key)
        if client_certificate:
            certificate, key = client_certificate
            context.load_cert_chain(str(certificate), str(key))
        return context

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token if token is not None else self.token}"}

    # --- faults

    def stop(self) -> None:
        """Stop nginx: connections to port are refused until start(). Orthanc and its data stay."""
        self._nginx.stop()

    def start(self) -> None:
        """Start nginx again on the same port, with the current settings; return once it serves."""
        self._nginx.start()
        self._wait_serving()

    @property
    def running(self) -> bool:
        return self._nginx.running()

    def use_other_ca_server_certificate(self) -> None:
        """Present a server certificate signed by other_ca_bundle: clients trusting ca_bundle refuse it."""
        self._change(other_ca_server=True)

    def use_platform_server_certificate(self) -> None:
        """Back to the server certificate signed by the test CA."""
        self._change(other_ca_server=False)

    @contextmanager
    def other_ca_server_certificate(self) -> Iterator[None]:
        self.use_other_ca_server_certificate()
        try:
            yield
        finally:
            self.use_platform_server_certificate()

    def set_token(self, new: str, *, update_token_file: bool = False, expires_in: int | None = None) -> None:
        """Accept only `new` from now on (the old token gets 401); the OAuth2 endpoint hands out `new`
        (with `expires_in` seconds, when given, instead of 3600).

        token_file keeps the old token unless update_token_file (an operator rotating it on disk).
        """
        changes: dict[str, Any] = {"token": _check_token(new)}
        if expires_in is not None:
            changes["oauth2_expires_in"] = int(expires_in)
        self._change(**changes)
        if update_token_file:
            _write_secret(self.token_file, new)

    def refuse_stow_except_study(self, study_instance_uid: str | None) -> None:
        """nginx forwards `POST /dicom-web/studies` to Orthanc as `POST /dicom-web/studies/{uid}`
        (None: as sent again), so DICOMweb 1.7 refuses every part of another study with a
        FailedSOPSequence item (FailureReason 0x0110) under HTTP 409 with no Content-Type, and
        stores the parts of that study: the only per-instance failure items this platform can
        produce (module docstring). A UID of no study refuses whole batches, item by item.
        """
        if study_instance_uid is not None and not set(study_instance_uid) <= set("0123456789."):
            raise ValueError(f"not a UID: {study_instance_uid!r}")
        self._change(stow_study=study_instance_uid)

    def reject_sop_instances(self, uids: Iterable[str]) -> None:
        """Make Orthanc refuse these SOP Instance UIDs (replacing the previous set; empty: refuse none).

        Over STOW-RS a refused instance, and every later part of the same request, is left out
        of ReferencedSOPSequence under HTTP 200 (module docstring).
        """
        self._rejected = frozenset(uids)
        _write_atomic(self._rejected_file, "".join(uid + "\n" for uid in sorted(self._rejected)))

    # --- what the platform holds

    def stored_instances(self) -> dict[str, StoredInstance]:
        """SOP Instance UID -> the instance Orthanc stored (all its tags, simplified)."""
        found: dict[str, StoredInstance] = {}
        for orthanc_id in self.orthanc.get("/instances"):
            tags = self.orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
            instance = StoredInstance(orthanc_id, tags)
            found[instance.sop_instance_uid] = instance
        return found

    def stored_sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs Orthanc holds (one request per instance, enough for test-sized studies)."""
        uids: set[str] = set()
        for orthanc_id in self.orthanc.get("/instances"):
            uids.add(str(self.orthanc.get(f"/instances/{orthanc_id}")["MainDicomTags"]["SOPInstanceUID"]))
        return uids

    def instance_bytes(self, sop_instance_uid: str) -> bytes:
        """The DICOM file Orthanc stored for this SOP Instance UID (KeyError when it holds none)."""
        orthanc_id = self.stored_instances()[sop_instance_uid].orthanc_id
        data = self.orthanc.get(f"/instances/{orthanc_id}/file")
        assert isinstance(data, bytes)
        return data

    def put_files(self, collection: str = "manifests") -> dict[str, bytes]:
        """Files PUT under /{collection}/ ("manifests" or "clinical"): relative path -> content."""
        root = self.webdav_root / collection
        if not root.exists():
            return {}
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    def put_path(self, collection: str, name: str) -> Path:
        """Where a PUT to {collection}_url/name lands."""
        return self.webdav_root / collection / name

    def reset(self) -> None:
        """Back to the state platform() started in, for the next test: no instances, no PUT files,
        the first token, the platform's certificate, no refused UIDs, nginx serving."""
        for patient in self.orthanc.get("/patients"):
            try:
                self.orthanc.request("DELETE", f"/patients/{patient}")
            except OrthancError as exc:
                if exc.status != 404:
                    raise
        for collection in ("manifests", "clinical"):
            shutil.rmtree(self.webdav_root / collection, ignore_errors=True)
            (self.webdav_root / collection).mkdir(parents=True)
        if self._rejected:
            self.reject_sop_instances(())
        _write_secret(self.token_file, self._initial_token)
        settings = self._nginx.settings
        initial = {
            "token": self._initial_token,
            "other_ca_server": False,
            "oauth2_expires_in": OAUTH2_EXPIRES_IN_S,
            "stow_study": None,
        }
        if any(getattr(settings, name) != value for name, value in initial.items()):
            self._change(**initial)
        if not self.running:
            self.start()

    # --- plumbing

    def _change(self, **settings: Any) -> None:
        for name, value in settings.items():
            setattr(self._nginx.settings, name, value)
        self._nginx.reload()
        if self.running:
            self._wait_serving()

    def _expected_server_certificate(self) -> bytes:
        pem = self._nginx.settings.server_certificate()[0].read_text()
        return ssl.PEM_cert_to_DER_cert(pem)

    def _wait_serving(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Until GET /health, with the current token and site certificate, answers 204 from a
        server presenting the expected certificate."""
        expected = hashlib.sha256(self._expected_server_certificate()).hexdigest()
        deadline = time.monotonic() + timeout
        last: str = "no attempt"
        while True:
            try:
                fingerprint, status = _probe(self.port, self.client_certificate, self.client_key, self.token)
                if fingerprint == expected and status == 204:
                    return
                last = f"certificate {fingerprint[:16]}, HTTP {status}"
            except OSError as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the platform on port {self.port} did not serve within {timeout:g} s (last: {last}); "
                    f"nginx's error log:\n{_tail(self.error_log)}"
                )
            time.sleep(_POLL_S)


def _probe(port: int, certificate: Path, key: Path, token: str) -> tuple[str, int]:
    """(SHA-256 of the server certificate, HTTP status of GET /health), without verifying the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(certificate), str(key))
    with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            request = f"GET /health HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            head = b""
            while b"\r\n" not in head:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                head += chunk
    status_line = head.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) >= 2 and status_line[1].isdigit() else 0
    return hashlib.sha256(der).hexdigest(), status


@contextmanager
def platform(workdir: Path, *, token: str | None = None) -> Iterator[Platform]:
    """Start Orthanc (DICOMweb) and nginx in front of it under workdir; stop both on exit.

    Ready means Orthanc's REST API answered with the DICOMweb plugin loaded and nginx served
    GET /health over mutual TLS with the token. A fresh PKI, token and OAuth2 client secret are
    made for every platform.
    """
    if not platform_available():
        raise FileNotFoundError(
            f"{NGINX}, Orthanc or {DICOMWEB_PLUGIN} missing: run scripts/install-debian-packages.sh"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    pki = make_pki(workdir / "pki")
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    initial_token = _check_token(token or secrets.token_urlsafe(32))
    client_secret = secrets.token_urlsafe(24)
    port = free_port()
    lua = workdir / "orthanc-filter.lua"
    rejected_file = workdir / "rejected-sop-instance-uids.txt"
    rejected_file.write_text("")
    lua.write_text(_LUA_FILTER % json.dumps(str(rejected_file)))
    webdav_root = workdir / "webdav"
    for collection in ("manifests", "clinical"):
        (webdav_root / collection).mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        server = stack.enter_context(orthanc(workdir, extra_config=_orthanc_extra(lua, port)))
        stack.callback(_kill, server.process)
        _check_dicomweb_loaded(server)
        nginx = _Nginx(
            _NginxSettings(
                port=port,
                orthanc_port=server.http_port,
                prefix=workdir / "nginx",
                webdav_root=webdav_root,
                pki=pki,
                token=initial_token,
                oauth2_client_id="nmip-agent-test-site",
                oauth2_client_secret=client_secret,
            )
        )
        stack.callback(nginx.stop)
        central = Platform(
            workdir=workdir,
            port=port,
            pki=pki,
            token_file=_write_secret(secrets_dir / "token", initial_token),
            oauth2_client_id=nginx.settings.oauth2_client_id,
            oauth2_client_secret_file=_write_secret(secrets_dir / "oauth2-client-secret", client_secret),
            webdav_root=webdav_root,
            orthanc=server,
            _nginx=nginx,
            _rejected_file=rejected_file,
            _initial_token=initial_token,
        )
        central.start()
        yield central


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: Orthanc's clean stop takes over 2 s (its HTTP server's), and its storage and index
    are thrown away with workdir anyway. orthanc()'s own stop then finds it gone."""
    if process.poll() is None:
        process.kill()
        process.wait()


def _check_dicomweb_loaded(server: Orthanc) -> None:
    plugins = server.get("/plugins")
    if "dicom-web" not in plugins:
        raise RuntimeError(f"Orthanc did not load {DICOMWEB_PLUGIN} (plugins: {plugins}); its log:\n{server.log_text()[-3000:]}")


# --- pytest fixtures (import them into a test module to use them)


@pytest.fixture(scope="module")
def central_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One platform for the tests of a module (skipped when nginx/Orthanc/DICOMweb are missing)."""
    if not platform_available():
        pytest.skip("nginx, Orthanc or orthanc-dicomweb not installed: run scripts/install-debian-packages.sh")
    with platform(tmp_path_factory.mktemp("platform")) as central:
        yield central


@pytest.fixture
def clean_platform(central_platform: Platform) -> Platform:
    """The module's platform, reset() to its initial state for this test."""
    central_platform.reset()
    return central_platform
