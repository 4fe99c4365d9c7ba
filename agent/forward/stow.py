"""DICOMweb STOW-RS in PS3.18's words: the multipart request, and the answer instance by instance.

Request (PS3.18 10.5.1): `POST {base}/studies` with `multipart/related; type="application/dicom"`,
one Part 10 file per part. Answer (PS3.18 10.5.3, Table 10.5.3-3): ReferencedSOPSequence
(0008,1199) lists what was stored (perhaps with a WarningReason (0008,1196)), FailedSOPSequence
(0008,1198) what was not, each with its FailureReason (0008,1197) from PS3.18 Table I.2-2.

Transient or rejected, by FailureReason:
- A7xx Refused: out of resources, and 0213 Resource limitation: transient, the same bytes may
  be stored later.
- Everything else is the platform refusing this instance: A9xx (data set does not match SOP
  class), Cxxx (cannot understand), C122 (transfer syntax not supported), 0122 (SOP class not
  supported), 0119, 0124, and codes no table names. Resending the same bytes gets the same answer,
  so the instance is quarantined with the platform's reason, where a person can look at it.
- 0110 Processing failure is generic. Orthanc's DICOMweb plugin answers it for every refusal but
  a full disk (A700), including its own filters; dcm4chee for rejections too. So it is a
  rejection, but `deliver_study` asks twice: an instance refused with 0110 in a request of
  several is sent again on its own, and only a 0110 for it alone is final.
An instance named in neither sequence of a 2xx answer is not acknowledged: transient, sent again
(sending is idempotent: the platform keys instances on their SOP Instance UID). Orthanc's
DICOMweb plugin 1.7 (Debian bookworm) answers that way when it refuses an instance: 200, the
refused part and every part after it left out of both sequences, no FailureReason; deliver_study
therefore sends the unacknowledged ones again, the first alone, so the rest get stored.
"""

from __future__ import annotations

import json
import os
import secrets
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.forward.schedule import RateLimiter

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"

DICOM_JSON = "application/dicom+json"
_XML_TYPES = ("application/dicom+xml", "application/xml", "text/xml")

# PS3.18 Table I.2-2 Store Instances Response Failure Reason Values, plus the PS3.4 C.14.1.1
# codes that STOW-RS servers reuse.
_EXACT_REASONS = {
    0x0110: "Processing failure",
    0x0119: "Class / instance conflict",
    0x0122: "Referenced SOP Class not supported",
    0x0124: "Refused: not authorised",
    0x0213: "Resource limitation",
    0xC122: "Referenced Transfer Syntax not supported",
}
_TRANSIENT_EXACT = frozenset({0x0213})


def failure_text(reason: int | None) -> str:
    """'0xA700 Refused: out of resources', as a person reading `quarantine show` wants it."""
    if reason is None:
        return "no failure reason given"
    if reason in _EXACT_REASONS:
        meaning = _EXACT_REASONS[reason]
    elif reason >> 8 == 0xA7:
        meaning = "Refused: out of resources"
    elif reason >> 8 == 0xA9:
        meaning = "Error: data set does not match SOP class"
    elif reason >> 12 == 0xC:
        meaning = "Error: cannot understand"
    else:
        meaning = "failure reason not in PS3.18"
    return f"0x{reason:04X} {meaning}"


def is_transient_reason(reason: int | None) -> bool:
    """True for the FailureReasons that say "later" (A7xx, 0213); see the module docstring."""
    return reason is not None and (reason >> 8 == 0xA7 or reason in _TRANSIENT_EXACT)


@dataclass(frozen=True)
class OutgoingInstance:
    """One de-identified instance to send: its (pseudonymous) UIDs and its Part 10 bytes or file."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path | None = None
    data: bytes | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("an OutgoingInstance has a path or data, not both")

    def __repr__(self) -> str:  # never the bytes
        return f"OutgoingInstance({self.sop_instance_uid!r})"

    def size(self) -> int:
        """Bytes of the Part 10 file (a stat, not a read; OSError if the file is gone)."""
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return os.stat(self.path).st_size


@dataclass(frozen=True)
class InstanceFailure:
    """An instance the platform did not store, with its FailureReason when it gave one."""

    sop_instance_uid: str
    reason: int | None
    detail: str


@dataclass(frozen=True)
class StowOutcome:
    """One STOW-RS request's answer, instance by instance.

    - stored: in ReferencedSOPSequence (a WarningReason, such as B000 coercion, still counts).
    - transient / rejected: in FailedSOPSequence, sorted by FailureReason.
    - refused: the platform refused the request as a whole (HTTP 400, 409, 413, 422) without
      naming these; one or several of them is the cause, and deliver_study finds which by
      sending them in smaller requests.
    - unacknowledged: a 2xx answer names them in neither sequence: not stored, reason unknown.
    """

    status_code: int
    stored: tuple[str, ...] = ()
    transient: tuple[InstanceFailure, ...] = ()
    rejected: tuple[InstanceFailure, ...] = ()
    refused: tuple[str, ...] = ()
    unacknowledged: tuple[str, ...] = ()
    retry_after_s: float | None = None

    @property
    def all_stored(self) -> bool:
        return not (self.transient or self.rejected or self.refused or self.unacknowledged)


# -- the request body ------------------------------------------------------------------------


class MultipartBody:
    """A multipart/related body of Part 10 files, streamed without joining it into one buffer.

    The length is known before sending (files are stat'ed, not read), so the request carries a
    Content-Length rather than chunked encoding; each file is read when its turn comes, so a
    batch costs the memory of one instance. `stream()` may be called again to resend (after a
    token refresh). The boundary is 128 random bits: it cannot be found in the data by chance.
    """

    def __init__(self, instances: Sequence[OutgoingInstance]) -> None:
        self.boundary = secrets.token_hex(16)
        self.content_type = f'multipart/related; type="application/dicom"; boundary={self.boundary}'
        self._head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        self._between = f"\r\n--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        self._instances = list(instances)
        sizes = [instance.size() for instance in self._instances]
        self.length = len(self._head) + len(self._between) * (len(sizes) - 1) + len(self._tail) + sum(sizes)

    def chunks(self) -> Iterator[bytes]:
        """The body, as the parts' delimiters and each file's bytes, in order."""
        for index, instance in enumerate(self._instances):
            yield self._head if index == 0 else self._between
            if instance.data is not None:
                yield instance.data
            else:
                assert instance.path is not None
                with open(instance.path, "rb") as stream:
                    yield stream.read()
        yield self._tail

    def stream(self, limiter: RateLimiter | None = None) -> Iterator[bytes]:
        """The body, paced by `limiter` when there is one."""
        if limiter is None:
            return self.chunks()
        return (piece for chunk in self.chunks() for piece in limiter.paced(chunk))


# -- the answer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StowResponse:
    """What a STOW-RS answer body says: stored UIDs (-> WarningReason) and failed UIDs (-> FailureReason)."""

    referenced: dict[str, int | None]
    failed: dict[str, int | None]

    @property
    def names_anything(self) -> bool:
        return bool(self.referenced or self.failed)


def parse_stow_response(content_type: str, body: bytes) -> StowResponse | None:
    """Read a DICOM JSON (PS3.18 F.2) or Native DICOM Model XML (PS3.19 A.1) answer; None if neither."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media:  # Orthanc's DICOMweb 1.7 answers 409 without a Content-Type: go by the body
        start = body.lstrip()[:1]
        media = DICOM_JSON if start in (b"{", b"[") else "application/dicom+xml" if start == b"<" else ""
    try:
        if media in (DICOM_JSON, "application/json"):
            return _from_json(json.loads(body))
        if media in _XML_TYPES:
            return _from_xml(ElementTree.fromstring(body))
    except (ValueError, ElementTree.ParseError, AttributeError, TypeError):
        return None
    return None


def _code(value: Any) -> int | None:
    """A US value as DICOM JSON carries it: a number, or (leniently) a decimal or hex string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 10) if text.isdigit() else int(text.removeprefix("0x").removeprefix("0X"), 16)
        except ValueError:
            return None
    return None


def _json_items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return []
    return [item for item in element.get("Value") or [] if isinstance(item, dict)]


def _json_first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict) or not element.get("Value"):
        return None
    return element["Value"][0]


def _from_json(document: Any) -> StowResponse | None:
    if isinstance(document, list) and len(document) == 1:  # some servers wrap the dataset in a list
        document = document[0]
    if not isinstance(document, dict):
        return None
    found: list[dict[str, int | None]] = [{}, {}]
    for index, (tag, reason_tag) in enumerate(((REFERENCED_SOP_SEQUENCE, WARNING_REASON),
                                               (FAILED_SOP_SEQUENCE, FAILURE_REASON))):
        for item in _json_items(document, tag):
            uid = _json_first(item, REFERENCED_SOP_INSTANCE_UID)
            if isinstance(uid, str):
                found[index][uid.strip()] = _code(_json_first(item, reason_tag))
    return StowResponse(*found)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_value(item: ElementTree.Element, tag: str) -> str | None:
    for attribute in item:
        if _local(attribute.tag) == "DicomAttribute" and attribute.get("tag", "").upper() == tag:
            for value in attribute:
                if _local(value.tag) == "Value" and value.text:
                    return value.text.strip()
    return None


def _from_xml(root: ElementTree.Element) -> StowResponse:
    found: list[dict[str, int | None]] = [{}, {}]
    for index, (tag, reason_tag) in enumerate(((REFERENCED_SOP_SEQUENCE, WARNING_REASON),
                                               (FAILED_SOP_SEQUENCE, FAILURE_REASON))):
        for attribute in root:
            if _local(attribute.tag) != "DicomAttribute" or attribute.get("tag", "").upper() != tag:
                continue
            for item in attribute:
                uid = _xml_value(item, REFERENCED_SOP_INSTANCE_UID)
                if uid:
                    found[index][uid] = _code(_xml_value(item, reason_tag))
    return StowResponse(*found)


def classify(batch: Sequence[OutgoingInstance], status_code: int, answer: StowResponse | None, *,
             refused: bool, retry_after_s: float | None = None) -> StowOutcome:
    """Sort a batch by what the answer says of each instance.

    `refused`: the platform refused the request as a whole (4xx); an instance it does not name
    is then `refused` rather than merely not acknowledged.
    """
    stored: list[str] = []
    transient: list[InstanceFailure] = []
    rejected: list[InstanceFailure] = []
    unnamed: list[str] = []
    referenced = answer.referenced if answer is not None else {}
    failed = answer.failed if answer is not None else {}
    for instance in batch:
        uid = instance.sop_instance_uid
        if uid in failed:
            reason = failed[uid]
            failure = InstanceFailure(uid, reason, failure_text(reason))
            (transient if is_transient_reason(reason) else rejected).append(failure)
        elif uid in referenced:
            stored.append(uid)
        elif answer is None and not refused:  # a 2xx that is no STOW-RS answer: nothing to narrow down
            transient.append(InstanceFailure(uid, None, f"not acknowledged (HTTP {status_code}, no DICOMweb answer)"))
        else:
            unnamed.append(uid)
    return StowOutcome(status_code, tuple(stored), tuple(transient), tuple(rejected),
                       refused=tuple(unnamed) if refused else (), unacknowledged=() if refused else tuple(unnamed),
                       retry_after_s=retry_after_s)
