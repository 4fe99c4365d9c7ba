"""The HTTPS client to the platform: one pooled httpx.Client, verified TLS, client certificate, token.

Everything costly or secret is settled once, at construction: the SSLContext (the configured CA
bundle only, never the system store; the site's certificate and key), the token read from its
file or the OAuth2 client secret, the rate limiter. A request then costs a dict of headers and a
generator over the instance files. Secret files must be private to the agent's user (the house
rule of agent.keys.load_key_file); a problem is a ConfigError naming the config key and file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import httpx

from agent import __version__
from agent import log as agent_log
from agent import metrics
from agent.config import ConfigError, PlatformConfig, check_private, load_ca_bundle
from agent.forward.errors import (
    AuthenticationFailed,
    DeliveryError,
    PlatformError,
    PlatformUnreachable,
    Rejected,
    TlsFailed,
    parse_retry_after,
)
from agent.forward.schedule import Backoff, RateLimiter, UploadWindow
from agent.forward.stow import DICOM_JSON, MultipartBody, OutgoingInstance, StowOutcome, classify, parse_stow_response

_log = agent_log.get(__name__)

# Statuses by which a STOW-RS server refuses the content of a request (PS3.18 10.5.3 Table
# 10.5.3-1): the body may say which instances; if not, deliver_study narrows the batch down.
STOW_REFUSED = frozenset({400, 409, 413, 422})
PUT_DONE = frozenset({200, 201, 204})
# An OAuth2 token is renewed this long before it expires, so no request goes out with a token
# about to lapse on the way.
TOKEN_MARGIN_S = 60.0
_TOKEN = re.compile(r"[\x21-\x7e]+")  # one RFC 6750 token: visible ASCII, no space or line break
_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}")
# httpx logs each request's URL at INFO; httpcore and h2/hpack trace connections and headers
# (the bearer token among them) at DEBUG. None of that may reach the agent's log.
_QUIET_LOGGERS = ("httpx", "httpcore", "h2", "hpack")


def quiet_http_loggers() -> None:
    """Keep httpx, httpcore, h2 and hpack to warnings, whatever level the agent logs at."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# -- secrets and TLS -------------------------------------------------------------------------


def read_secret(source: Path, key: str, path: Path) -> str:
    """The one token held by a private file (surrounding whitespace dropped); never echoed."""
    check_private(source, f"platform.{key}", path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{source}: platform.{key}: {path}: cannot read it as text") from None
    if not _TOKEN.fullmatch(text):
        raise ConfigError(f"{source}: platform.{key}: {path}: expected one line holding only the secret "
                          "(visible ASCII, no spaces)")
    return text


def ssl_context(config: PlatformConfig, source: Path) -> ssl.SSLContext:
    """TLS 1.2+ trusting platform.ca_bundle alone, hostname checked, presenting the site's certificate."""
    if config.ca_bundle is None:
        raise ConfigError(f"{source}: platform.ca_bundle: required: the platform's certificate is always verified")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname; no CA loaded yet
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_ca_bundle(context, source, "platform.ca_bundle", config.ca_bundle)
    if config.client_certificate is not None and config.client_key is not None:
        check_private(source, "platform.client_key", config.client_key)
        try:
            # An encrypted key gets an empty passphrase (and fails) rather than a terminal prompt.
            context.load_cert_chain(str(config.client_certificate), str(config.client_key), password=lambda: b"")
        except FileNotFoundError as exc:
            raise ConfigError(f"{source}: platform.client_certificate: {config.client_certificate}: "
                              f"cannot read ({exc.strerror})") from None
        except (OSError, ssl.SSLError):
            raise ConfigError(
                f"{source}: platform.client_key: {config.client_key} and platform.client_certificate "
                f"{config.client_certificate} are not a matching PEM certificate and unencrypted key") from None
    return context


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


# -- credentials -----------------------------------------------------------------------------


class Credentials(Protocol):
    """What authenticates a request besides the client certificate."""

    def header(self) -> dict[str, str]:
        """Headers to add to the next request."""

    def refresh(self, used: dict[str, str]) -> bool:
        """After a 401/403 to a request sent with `used`: True if a retry may now succeed."""


class NoToken:
    """Mutual TLS only."""

    def header(self) -> dict[str, str]:
        return {}

    def refresh(self, used: dict[str, str]) -> bool:
        return False


class FileToken:
    """A static bearer token from platform.token_file, read at start and again after a 401.

    Reading it again lets an operator rotate the token on disk without restarting the agent.
    """

    def __init__(self, source: Path, path: Path) -> None:
        self._source, self._path = source, path
        self._lock = threading.Lock()
        self._header = self._read()

    def _read(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {read_secret(self._source, 'token_file', self._path)}"}

    def header(self) -> dict[str, str]:
        return self._header

    def refresh(self, used: dict[str, str]) -> bool:
        with self._lock:
            try:
                self._header = self._read()
            except ConfigError as exc:
                raise AuthenticationFailed(str(exc)) from None
            return self._header != used


class OAuth2ClientCredentials:
    """A bearer token from the OAuth2 token endpoint (RFC 6749 4.4), renewed before expiry and on 401.

    The client authenticates with HTTP Basic (RFC 6749 2.3.1: id and secret form-encoded, then
    base64), which every authorisation server must accept. One lock: when several threads see a
    401 together, one fetches and the others use its token.
    """

    def __init__(self, http: httpx.Client, source: Path, config: PlatformConfig,
                 errors: Callable[[BaseException, str], DeliveryError],
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert config.oauth2_client_secret_file is not None
        secret = read_secret(source, "oauth2_client_secret_file", config.oauth2_client_secret_file)
        pair = f"{urllib.parse.quote(config.oauth2_client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
        self._basic = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        self._http, self._url, self._client_id = http, config.oauth2_token_url, config.oauth2_client_id
        self._errors, self._clock = errors, clock
        self._lock = threading.Lock()
        self._header: dict[str, str] = {}
        self._renew_at = 0.0

    def header(self) -> dict[str, str]:
        with self._lock:
            if not self._header or self._clock() >= self._renew_at:
                self._fetch()
            return self._header

    def refresh(self, used: dict[str, str]) -> bool:
        with self._lock:
            if self._header == used:  # nobody renewed it meanwhile
                self._fetch()
            return True

    def _fetch(self) -> None:
        host = httpx.URL(self._url).host
        try:
            response = self._http.post(self._url, data={"grant_type": "client_credentials"},
                                       headers={"Authorization": self._basic, "Accept": "application/json"})
        except httpx.TransportError as exc:
            raise self._errors(exc, self._url) from exc
        status = response.status_code
        document = _json_object(response)
        if status in (400, 401, 403):
            code = document.get("error")
            said = f" {code}" if isinstance(code, str) and re.fullmatch(r"[a-z_]{1,40}", code) else ""
            raise AuthenticationFailed(
                f"{host}: the OAuth2 token endpoint refused client {self._client_id!r} (HTTP {status}{said}); "
                "check platform.oauth2_client_id and platform.oauth2_client_secret_file", status_code=status)
        if status != 200:
            raise PlatformError(f"{host}: HTTP {status} from the OAuth2 token endpoint",
                                retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
                                status_code=status, loud=not (status >= 500 or status in (408, 429)))
        token, lifetime = document.get("access_token"), document.get("expires_in")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token) or \
                str(document.get("token_type", "bearer")).lower() != "bearer":
            raise PlatformError(f"{host}: the OAuth2 token endpoint's answer holds no bearer access_token", loud=True)
        self._header = {"Authorization": f"Bearer {token}"}
        forever = float("inf")
        usable = float(lifetime) if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool) else forever
        self._renew_at = self._clock() + max(usable - min(TOKEN_MARGIN_S, usable / 2), 0.0)


def _json_object(response: httpx.Response) -> dict[str, object]:
    try:
        document = json.loads(response.content)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


# -- the client ------------------------------------------------------------------------------


class PlatformClient:
    """The agent's connection to the platform: STOW-RS for images, PUT for manifests and CSVs.

    Thread-safe; one per agent, closed at shutdown (a context manager). Every failure is a
    DeliveryError (agent.forward.errors); the client itself never waits or retries, except once
    after a 401/403 with renewed credentials. Backoff, upload window and batching are the
    caller's (see `backoff`, `window` and deliver_study).
    """

    def __init__(self, config: PlatformConfig, source: Path) -> None:
        quiet_http_loggers()
        if not config.dicomweb_url:
            raise ConfigError(f"{source}: platform.dicomweb_url: not set, so there is nothing to deliver to")
        self.config, self.source = config, source
        self.backoff = Backoff(config.retry_initial_s, config.retry_max_s)
        self.window = UploadWindow.parse(config.upload_window)
        self.window_offset_s = 0
        self._limiter = RateLimiter.megabits(config.bandwidth_mbit_s)
        self._stow_url = f"{config.dicomweb_url}/studies"
        try:
            self._http = httpx.Client(
                verify=ssl_context(config, source), http1=True, http2=config.http2, trust_env=False,
                proxy=config.proxy or None,  # CONNECT through the site's proxy: TLS stays end to end
                timeout=httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 30.0)),
                follow_redirects=False, headers={"User-Agent": f"nmip-agent/{__version__}"},
            )
        except ImportError:
            raise ConfigError(
                f"{source}: platform.http2: true needs the h2 package (pip install 'httpx[http2]')") from None
        self._credentials: Credentials
        try:
            if config.token_file is not None:
                self._credentials = FileToken(source, config.token_file)
            elif config.oauth2_token_url:
                self._credentials = OAuth2ClientCredentials(self._http, source, config, self._transport_error)
            else:
                self._credentials = NoToken()
        except BaseException:
            self._http.close()
            raise

    def __repr__(self) -> str:
        return f"PlatformClient({self.config.dicomweb_url!r})"

    def open_later(self, seconds: int) -> None:
        """Open the upload window `seconds` after its configured start (the site's keyed offset)."""
        self.window_offset_s = seconds
        self.window = UploadWindow.parse(self.config.upload_window).opening_later(seconds)

    def retune(self, config: PlatformConfig) -> None:
        """SIGHUP: a new upload window (with the same offset) and bandwidth cap, from the next request on."""
        self.window = UploadWindow.parse(config.upload_window).opening_later(self.window_offset_s)
        self._limiter = RateLimiter.megabits(config.bandwidth_mbit_s)

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections; any later request raises RuntimeError."""
        self._http.close()

    # -- the operations

    def store_instances(self, batch: Sequence[OutgoingInstance]) -> StowOutcome:
        """One STOW-RS request for `batch`; the answer instance by instance (see agent.forward.stow).

        Raises DeliveryError when the request as a whole failed (unreachable, TLS, authentication,
        server error), and OSError when an instance file cannot be read.
        """
        if not batch:
            return StowOutcome(200)
        started = time.monotonic()
        body = MultipartBody(batch)
        with self._reported("stow"):
            response = self._send("POST", self._stow_url, body, body.content_type, "dicomweb_url", accept=DICOM_JSON)
            status = response.status_code
            if not (200 <= status < 300 or status in STOW_REFUSED) or _client_certificate_refused(response):
                raise self._status_error(response, "STOW-RS", "dicomweb_url")
        answer = parse_stow_response(response.headers.get("Content-Type", ""), response.content)
        outcome = classify(batch, status, answer, refused=status in STOW_REFUSED,
                           retry_after_s=parse_retry_after(response.headers.get("Retry-After")))
        _log.debug("stow_request_done", instances=len(batch), bytes=body.length, http_status=status,
                   stored=len(outcome.stored), transient=len(outcome.transient), rejected=len(outcome.rejected),
                   refused=len(outcome.refused), unacknowledged=len(outcome.unacknowledged),
                   seconds=round(time.monotonic() - started, 3))
        return outcome

    def put(self, url: str, body: bytes, content_type: str) -> None:
        """PUT `body` at `url`, under platform.manifest_url or clinical_url; 200, 201, 204 are success."""
        key = next((k for k in ("manifest_url", "clinical_url")
                    if getattr(self.config, k) and url.startswith(getattr(self.config, k) + "/")), None)
        if key is None:  # the credentials go to the configured platform only
            raise ValueError("put: the URL is not under platform.manifest_url or platform.clinical_url")
        with self._reported(key.removesuffix("_url")):
            response = self._send("PUT", url, body, content_type, key)
            if response.status_code not in PUT_DONE or _client_certificate_refused(response):
                raise self._status_error(response, "PUT", key)

    def put_manifest(self, study_instance_uid: str, manifest: bytes) -> None:
        """PUT a study manifest at {manifest_url}/{pseudonymous study UID}.json."""
        self.put(self._url_for("manifest_url", study_instance_uid, ".json"), manifest, "application/json")

    def put_retraction(self, study_instance_uid: str, notice: bytes) -> None:
        """PUT a retraction notice at {manifest_url}/{pseudonymous study UID}.retraction.json."""
        self.put(self._url_for("manifest_url", study_instance_uid, ".retraction.json"), notice, "application/json")

    def put_clinical(self, batch_id: str, csv: bytes) -> None:
        """PUT a pseudonymised clinical table at {clinical_url}/{batch id}.csv."""
        self.put(self._url_for("clinical_url", batch_id, ".csv"), csv, "text/csv; charset=utf-8")

    # -- plumbing

    def _url_for(self, key: str, name: str, suffix: str) -> str:
        base = getattr(self.config, key)
        if not base:
            raise ConfigError(f"{self.source}: platform.{key}: not set")
        if not _NAME.fullmatch(name):
            raise ValueError(f"{key}: a name of letters, digits, '.', '_' and '-' is expected")
        return f"{base}/{name}{suffix}"

    def _send(self, method: str, url: str, body: MultipartBody | bytes, content_type: str, key: str, *,
              accept: str | None = None) -> httpx.Response:
        """Send once, and once more if a 401/403 led to renewed credentials."""
        length = body.length if isinstance(body, MultipartBody) else len(body)
        for attempt in (0, 1):
            auth = self._credentials.header()
            headers = {"Content-Type": content_type, "Content-Length": str(length), **auth}
            if accept is not None:
                headers["Accept"] = accept
            try:
                response = self._http.request(method, url, content=self._content(body), headers=headers)
            except httpx.TransportError as exc:
                raise self._transport_error(exc, url) from exc
            if response.status_code in (401, 403) and attempt == 0 and self._credentials.refresh(auth):
                continue
            return response
        raise AssertionError("unreachable")

    def _content(self, body: MultipartBody | bytes) -> Iterator[bytes] | bytes:
        if isinstance(body, MultipartBody):
            return body.stream(self._limiter)
        return body if self._limiter is None else self._limiter.paced(body)

    @contextlib.contextmanager
    def _reported(self, endpoint: str) -> Iterator[None]:
        """Time a request to `endpoint` for /metrics, count it if it failed, and log a loud
        DeliveryError (authentication, TLS, a wrong URL) at error level, once, as it leaves."""
        started = time.monotonic()
        try:
            yield
        except DeliveryError as exc:
            metrics.upload_failures.labels(endpoint, exc.kind).inc()
            if exc.loud:
                _log.error(f"platform_{exc.kind}_failed", kind=exc.kind, http_status=exc.status_code, detail=str(exc))
            raise
        metrics.upload_seconds.labels(endpoint).observe(time.monotonic() - started)

    def _transport_error(self, exc: BaseException, url: str) -> DeliveryError:
        """Translate an httpx transport error, once, into the kind `status` shows."""
        host = httpx.URL(url).host
        cause = _ssl_cause(exc)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TlsFailed(
                f"{host}: the platform's certificate fails verification ({cause.verify_message}); "
                f"check platform.ca_bundle ({self.config.ca_bundle}) and the name in the URL")
        if cause is not None and "ALERT" in (cause.reason or ""):
            return TlsFailed(
                f"{host}: the platform ended the TLS handshake ({cause.reason}); check "
                "platform.client_certificate and platform.client_key")
        # Any other TLS error while connecting is a handshake that failed (e.g. WRONG_VERSION_NUMBER:
        # the port speaks plain HTTP). An EOF or reset is a connection that went away: unreachable.
        if isinstance(exc, httpx.ConnectError) and cause is not None and not isinstance(
                cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
            return TlsFailed(f"{host}: the TLS handshake failed ({cause.reason or type(cause).__name__}); "
                                        "check that the URL's port speaks HTTPS")
        if isinstance(exc, httpx.TimeoutException):
            return PlatformUnreachable(f"{host}: no answer within {self.config.timeout_s:g} s ({type(exc).__name__})")
        return PlatformUnreachable(f"{host}: {type(exc).__name__}: {str(exc)[:160] or 'no detail'}")

    def _status_error(self, response: httpx.Response, what: str, key: str) -> DeliveryError:
        """The DeliveryError for an HTTP answer that is not a success."""
        status, host = response.status_code, response.url.host
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status in (401, 403) or _client_certificate_refused(response):
            refused = "the client certificate" if _client_certificate_refused(response) else "our credentials"
            return AuthenticationFailed(
                f"{host}: HTTP {status} to {what}: the platform refuses {refused}; check platform."
                + ("client_certificate" if refused != "our credentials" else self._credential_keys()),
                status_code=status, retry_after_s=retry_after)
        if status in (408, 429) or status >= 500:
            return PlatformError(f"{host}: HTTP {status} to {what}", status_code=status, retry_after_s=retry_after)
        if status in STOW_REFUSED or status == 410:
            return Rejected(f"{host}: HTTP {status} {response.reason_phrase} to {what}", status_code=status)
        return PlatformError(f"{host}: unexpected HTTP {status} to {what}; check platform.{key}",
                                        status_code=status, retry_after_s=retry_after, loud=True)

    def _credential_keys(self) -> str:
        if self.config.token_file is not None:
            return "token_file"
        if self.config.oauth2_token_url:
            return "oauth2_client_id and platform.oauth2_client_secret_file"
        return "client_certificate"


def _client_certificate_refused(response: httpx.Response) -> bool:
    """nginx's answer to a missing or untrusted client certificate.

    nginx completes the TLS handshake and answers 400 with a page naming the certificate (its
    internal 495 and 496 statuses), so such a 400 is an authentication failure of every request,
    never a refusal of the instances sent.
    """
    if response.status_code in (495, 496):
        return True
    return response.status_code == 400 and response.headers.get("Content-Type", "").startswith("text/html") \
        and b"SSL certificate" in response.content[:4096]
