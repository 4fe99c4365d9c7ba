"""Why a request to the platform failed, in the few kinds `status` shows and the pipeline acts on.

    DeliveryError (agent.errors.AgentError)   transient: retry on the backoff schedule
    ├── PlatformUnreachable     unreachable     refused, reset, timed out, name not resolved
    ├── TlsFailed               tls             the platform's certificate fails verification (loud)
    ├── AuthenticationFailed    authentication  401/403 after one refresh, client certificate refused (loud)
    ├── PlatformError           server          5xx, 429, 408, or an answer that shows a wrong URL (loud)
    └── Rejected                rejected        the platform refuses this content: not transient

Authentication and TLS failures are transient too: nothing is dropped and delivery never stops
for good. A new token file is read at the next attempt; a new CA bundle, client certificate or
key, or OAuth2 secret is read when the agent restarts. `loud`
says they need a person, and the client logs them at error level. Messages name the platform's
host, the HTTP status and the config key to look at, never a token, a header or a URL path.
"""

from __future__ import annotations

import datetime
import email.utils
import time
from typing import ClassVar

from agent.errors import AgentError

# A Retry-After further away than this is treated as this: a misconfigured header must not hold
# a study back for days (the platform can answer the same again on the next attempt).
RETRY_AFTER_LIMIT_S = 3600.0


class DeliveryError(AgentError):
    """A request to the platform failed; `kind` is the word `status` shows."""

    kind: ClassVar[str] = "server"
    transient: ClassVar[bool] = True
    loud: bool = False

    def __init__(self, message: str, *, retry_after_s: float | None = None, status_code: int | None = None,
                 loud: bool | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status_code = status_code
        if loud is not None:
            self.loud = loud


class PlatformUnreachable(DeliveryError):
    """No answer: connection refused or reset, timeout, unknown host."""

    kind = "unreachable"


class TlsFailed(DeliveryError):
    """The TLS handshake failed, typically the platform's certificate against platform.ca_bundle."""

    kind = "tls"
    loud = True


class AuthenticationFailed(DeliveryError):
    """The platform refuses our credentials (token, OAuth2 client, client certificate)."""

    kind = "authentication"
    loud = True


class PlatformError(DeliveryError):
    """The platform answered with an error that a later attempt may not get (5xx, 429, 408, ...)."""

    kind = "server"


class Rejected(DeliveryError):
    """The platform refuses what was sent (a PUT answered 400, 409, 413, 422): retrying will not help."""

    kind = "rejected"
    transient = False


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date, RFC 9110 10.2.3).

    None when absent or unreadable; never negative; at most RETRY_AFTER_LIMIT_S.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": RFC 9110 dates are GMT anyway
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_LIMIT_S)
