"""Deliver one study: batches, a refused batch narrowed down to the instance refused, per-instance results."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent import log as agent_log
from agent.forward.errors import DeliveryError
from agent.forward.stow import InstanceFailure, OutgoingInstance, StowOutcome, failure_text

_log = agent_log.get(__name__)

# FailureReasons too generic to pin on one instance of a request of several: 0110 Processing
# failure (see agent.forward.stow). Such an instance is sent once more on its own.
CONFIRM_ALONE = frozenset({0x0110})


class StowClient(Protocol):
    """What deliver_study needs: PlatformClient, or anything else that speaks STOW-RS."""

    def store_instances(self, batch: Sequence[OutgoingInstance]) -> StowOutcome: ...


@dataclass(frozen=True)
class StudyDelivery:
    """Every instance of a study, in exactly one of stored, rejected (quarantine) or transient (retry).

    `error` is the failure of the whole platform that cut the delivery short (the instances not
    yet sent are transient); `retry_after_s` the longest Retry-After the platform gave.
    """

    stored: tuple[str, ...]
    rejected: tuple[InstanceFailure, ...]
    transient: tuple[InstanceFailure, ...]
    error: DeliveryError | None = None
    retry_after_s: float | None = None
    requests: int = 0

    @property
    def complete(self) -> bool:
        """True when the platform acknowledged every instance: the study is delivered."""
        return not self.rejected and not self.transient


def batches(instances: Sequence[OutgoingInstance], size: int) -> list[list[OutgoingInstance]]:
    return [list(instances[i:i + size]) for i in range(0, len(instances), size)]


def deliver_study(client: StowClient, instances: Sequence[OutgoingInstance], batch_size: int, *,
                  reject_unacknowledged: bool = False, on_request: Callable[[], None] | None = None,
                  proceed: Callable[[], bool] | None = None) -> StudyDelivery:
    """Send `instances` in batches of `batch_size`; return what became of each.

    When a request does not get every instance stored, the ones the platform did not name are
    sent again in smaller requests, within this call, so that one instance the platform will not
    take does not hold back the others:
    - refused as a whole (HTTP 400, 409, 413, 422, no FailedSOPSequence entry): split in halves
      until the refused instance is alone; alone and refused, it is rejected with the HTTP status.
    - left unacknowledged by a 2xx answer: the first of them alone, the rest together (Orthanc's
      DICOMweb 1.7 drops the refused part and all after it). Alone and still unacknowledged,
      it is transient, since the platform gave no reason; with `reject_unacknowledged` it is
      rejected instead. The pipeline passes True once a study has come back this way several
      times, so a platform that silently drops an instance cannot hold a study back forever.
    - refused with 0110 Processing failure among others: sent again alone (CONFIRM_ALONE).
    A failure of the platform as a whole (DeliveryError) stops the delivery: the rest would fail
    the same way. Safe to call again for the same study: the platform keys instances on their
    SOP Instance UIDs, so a resent instance is not duplicated. `proceed` is asked before each
    request: False (the patient was found on the opt-out list) leaves the rest unsent.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if len({i.sop_instance_uid for i in instances}) != len(instances):
        raise ValueError("deliver_study: the same SOP Instance UID twice in one study")
    pending = deque(batches(instances, batch_size))
    stored: list[str] = []
    rejected: list[InstanceFailure] = []
    transient: list[InstanceFailure] = []
    error: DeliveryError | None = None
    retry_after: list[float] = []
    requests = 0
    while pending:
        batch = pending.popleft()
        if proceed is not None and not proceed():
            not_sent = [instance for waiting in (batch, *pending) for instance in waiting]
            transient += [InstanceFailure(i.sop_instance_uid, None, "not sent: stopped") for i in not_sent]
            break
        requests += 1
        if on_request is not None:
            on_request()  # a sign of life per request: a study of many GB is turning, not stuck
        try:
            outcome = client.store_instances(batch)
        except DeliveryError as exc:
            error = exc
            if exc.retry_after_s is not None:
                retry_after.append(exc.retry_after_s)
            not_sent = [instance for waiting in (batch, *pending) for instance in waiting]
            transient += [InstanceFailure(i.sop_instance_uid, None, f"not sent: {exc.kind}") for i in not_sent]
            break
        if outcome.retry_after_s is not None:
            retry_after.append(outcome.retry_after_s)
        stored += outcome.stored
        transient += outcome.transient
        again, final = _narrow(batch, outcome, reject_unacknowledged)
        for failure, is_rejected in final:
            (rejected if is_rejected else transient).append(failure)
        pending.extendleft(reversed(again))
    delivery = StudyDelivery(tuple(stored), tuple(rejected), tuple(transient), error,
                             max(retry_after) if retry_after else None, requests)
    _log.info("study_delivery_done", instances=len(instances), stored=len(stored), rejected=len(rejected),
              transient=len(transient), requests=requests, error=error.kind if error else None)
    return delivery


def _narrow(batch: list[OutgoingInstance], outcome: StowOutcome, reject_unacknowledged: bool,
            ) -> tuple[list[list[OutgoingInstance]], list[tuple[InstanceFailure, bool]]]:
    """(smaller requests to send next, final (failure, rejected?) verdicts) for one request's outcome."""
    by_uid = {instance.sop_instance_uid: instance for instance in batch}
    again: list[list[OutgoingInstance]] = []
    final: list[tuple[InstanceFailure, bool]] = []
    alone = len(batch) == 1
    for failure in outcome.rejected:
        if not alone and failure.reason in CONFIRM_ALONE:
            again.append([by_uid[failure.sop_instance_uid]])
        else:
            final.append((failure, True))
    refused = [by_uid[uid] for uid in outcome.refused]
    if refused and alone:
        final.append((InstanceFailure(refused[0].sop_instance_uid, None,
                                      f"HTTP {outcome.status_code}, {failure_text(None)}"), True))
    elif refused:
        half = (len(refused) + 1) // 2
        again += [part for part in (refused[:half], refused[half:]) if part]
    unacknowledged = [by_uid[uid] for uid in outcome.unacknowledged]
    if unacknowledged and alone:
        detail = f"not acknowledged when sent alone (HTTP {outcome.status_code}, {failure_text(None)})"
        final.append((InstanceFailure(unacknowledged[0].sop_instance_uid, None, detail), reject_unacknowledged))
    elif unacknowledged:
        again += [part for part in (unacknowledged[:1], unacknowledged[1:]) if part]
    return again, final
