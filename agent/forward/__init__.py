"""forward: deliver de-identified studies, manifests and clinical tables to the central platform.

    with PlatformClient(config.platform, config.source) as client:
        delivery = deliver_study(client, instances, config.platform.batch_size)   # STOW-RS
        if delivery.complete:
            client.put_manifest(study_instance_uid, manifest_bytes)               # then the manifest
        elif delivery.error is not None:
            wait = client.backoff.delay(failures_in_a_row, delivery.error.retry_after_s)

Modules, from the wire up: `errors` (the DeliveryError tree), `schedule` (Backoff, UploadWindow,
RateLimiter), `stow` (the STOW-RS body and answer, transient or rejected by FailureReason),
`client` (PlatformClient: TLS, tokens, requests) and `deliver` (deliver_study: batches and the
search for a refused instance).
"""

from agent.forward.client import PlatformClient, quiet_http_loggers
from agent.forward.deliver import StowClient, StudyDelivery, deliver_study
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
from agent.forward.stow import InstanceFailure, OutgoingInstance, StowOutcome, failure_text, is_transient_reason

__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "DeliveryError",
    "InstanceFailure",
    "OutgoingInstance",
    "PlatformClient",
    "PlatformError",
    "PlatformUnreachable",
    "RateLimiter",
    "Rejected",
    "StowClient",
    "StowOutcome",
    "StudyDelivery",
    "TlsFailed",
    "UploadWindow",
    "deliver_study",
    "failure_text",
    "is_transient_reason",
    "parse_retry_after",
    "quiet_http_loggers",
]
