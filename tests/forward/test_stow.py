"""STOW-RS in PS3.18's words: the multipart body, the answer instance by instance, and how
deliver_study narrows a refused request down to the instance refused.

The answers parsed here are shaped as PS3.18 F.2 (DICOM JSON) and PS3.19 (Native DICOM Model)
say, and as Orthanc's DICOMweb plugin writes them. deliver_study's search is exercised through
its StowClient seam with a scripted platform, for the answers Debian's Orthanc cannot give (a
0110 FailedSOPSequence item, a 400 naming nobody); test_client.py runs it against the real one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import pytest

from agent.forward import (
    InstanceFailure,
    OutgoingInstance,
    PlatformError,
    StowOutcome,
    deliver_study,
    failure_text,
    is_transient_reason,
)
from agent.forward.stow import MultipartBody, classify, parse_stow_response


def uid(n: int) -> str:
    return f"2.25.{1000 + n}"


def instances(count: int) -> list[OutgoingInstance]:
    return [OutgoingInstance(uid(n), "1.2.840.10008.5.1.4.1.1.2", data=f"DICM-{n}".encode() * 10) for n in range(count)]


def _item(sop_uid: str, tag: str | None = None, code: object = None) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [sop_uid]},
    }
    if tag is not None:
        item[tag] = {"vr": "US", "Value": [code]}
    return item


def dicom_json(stored: Sequence[str] = (), failed: dict[str, object] | None = None) -> bytes:
    return json.dumps({
        "00081190": {"vr": "UR", "Value": ["https://platform/dicom-web/studies/2.25.1"]},
        "00081198": {"vr": "SQ", "Value": [_item(u, "00081197", c) for u, c in (failed or {}).items()]},
        "00081199": {"vr": "SQ", "Value": [_item(u) for u in stored]},
    }).encode()


# -- failure reasons -------------------------------------------------------------------------


@pytest.mark.parametrize(("reason", "transient"), [
    (0xA700, True), (0xA7FF, True), (0x0213, True),
    (0xA900, False), (0xC000, False), (0xC122, False), (0x0122, False), (0x0110, False), (0x0124, False),
    (0x1234, False), (None, False),
])
def test_only_out_of_resources_is_transient(reason: int | None, transient: bool) -> None:
    """A7xx and 0213 say "later"; every other FailureReason, named or not, is a refusal of the instance."""
    assert is_transient_reason(reason) is transient


def test_failure_text_names_the_code_as_ps3_18_does() -> None:
    """The quarantine reason shows the code in hex and its PS3.18 Table I.2-2 meaning."""
    assert failure_text(0xA700) == "0xA700 Refused: out of resources"
    assert failure_text(0xA912) == "0xA912 Error: data set does not match SOP class"
    assert failure_text(0xC122) == "0xC122 Referenced Transfer Syntax not supported"
    assert failure_text(0xC005) == "0xC005 Error: cannot understand"
    assert failure_text(0x0110) == "0x0110 Processing failure"
    assert failure_text(None) == "no failure reason given"


# -- the answer ------------------------------------------------------------------------------


def test_dicom_json_answer_is_read_instance_by_instance() -> None:
    """ReferencedSOPSequence gives the stored, FailedSOPSequence the failed with their FailureReason."""
    answer = parse_stow_response("application/dicom+json; charset=utf-8",
                                 dicom_json([uid(0)], {uid(1): 0xA700, uid(2): 49442}))
    assert answer is not None
    assert answer.referenced == {uid(0): None}
    assert answer.failed == {uid(1): 0xA700, uid(2): 0xC122}


def test_failure_reason_as_a_string_is_read_too() -> None:
    """A FailureReason written as a decimal or hex string (seen from lenient servers) still counts."""
    answer = parse_stow_response("application/dicom+json", dicom_json(failed={uid(0): "272", uid(1): "A700"}))
    assert answer is not None and answer.failed == {uid(0): 0x0110, uid(1): 0xA700}


def test_empty_sequences_and_a_wrapping_list() -> None:
    """An SQ without Value, and a dataset wrapped in a one-item list, parse as empty sequences."""
    body = json.dumps([{"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ", "Value": []}}]).encode()
    answer = parse_stow_response("application/dicom+json", body)
    assert answer is not None and not answer.names_anything


def test_native_dicom_model_xml_answer() -> None:
    """The XML form (PS3.19 Native DICOM Model, with or without namespace) is read like the JSON one."""
    xml = b"""<?xml version="1.0" encoding="utf-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">2.25.1001</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">43264</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">2.25.1000</Value></DicomAttribute>
      <DicomAttribute tag="00081196" vr="US"><Value number="1">45056</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>"""
    answer = parse_stow_response("application/dicom+xml", xml)
    assert answer is not None
    assert answer.referenced == {uid(0): 0xB000} and answer.failed == {uid(1): 0xA900}


def test_an_answer_that_is_not_dicomweb_is_none() -> None:
    """An HTML error page or broken JSON is no STOW-RS answer."""
    assert parse_stow_response("text/html", b"<html>400 Bad Request</html>") is None
    assert parse_stow_response("application/dicom+json", b"{not json") is None


def test_classify_sorts_each_instance_once() -> None:
    """Stored, transient (A700), rejected (C000), and a 2xx that names nobody else: unacknowledged."""
    batch = instances(4)
    answer = parse_stow_response("application/dicom+json", dicom_json([uid(0)], {uid(1): 0xA700, uid(2): 0xC000}))
    outcome = classify(batch, 202, answer, refused=False)
    assert outcome.stored == (uid(0),)
    assert [f.sop_instance_uid for f in outcome.transient] == [uid(1)]
    assert [(f.sop_instance_uid, f.reason) for f in outcome.rejected] == [(uid(2), 0xC000)]
    assert outcome.unacknowledged == (uid(3),) and outcome.refused == ()
    refused = classify(batch, 400, None, refused=True)
    assert refused.refused == tuple(uid(n) for n in range(4)) and not refused.stored


# -- the request body ------------------------------------------------------------------------


def test_multipart_body_carries_each_file_as_a_dicom_part(tmp_path: Path) -> None:
    """The body is multipart/related with type application/dicom, one part per file (bytes or
    path), byte for byte, and its announced length is its real length."""
    on_disk = tmp_path / "instance.dcm"
    on_disk.write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 40)
    batch = [*instances(2), OutgoingInstance(uid(9), "1.2.840.10008.5.1.4.1.1.2", path=on_disk)]
    body = MultipartBody(batch)
    raw = b"".join(body.chunks())
    assert len(raw) == body.length
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {body.content_type}\r\n\r\n".encode() + raw)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/dicom"] * 3
    assert [p.get_payload(decode=True) for p in parts] == [batch[0].data, batch[1].data, on_disk.read_bytes()]
    assert b"".join(body.chunks()) == raw, "a second stream (a resend after a 401) is the same body"


def test_an_instance_is_bytes_or_a_path() -> None:
    """An OutgoingInstance with both, or neither, is a programming error; its repr shows no bytes."""
    with pytest.raises(ValueError):
        OutgoingInstance(uid(0), "1.2", path=Path("x"), data=b"x")
    with pytest.raises(ValueError):
        OutgoingInstance(uid(0), "1.2")
    assert "DICM" not in repr(instances(1)[0])


# -- deliver_study's search ------------------------------------------------------------------


class ScriptedPlatform:
    """A StowClient answering by a rule per request: what a given server does with a batch."""

    def __init__(self, answer: Callable[[list[str]], StowOutcome]) -> None:
        self.answer = answer
        self.requests: list[list[str]] = []

    def store_instances(self, batch: Sequence[OutgoingInstance]) -> StowOutcome:
        uids = [i.sop_instance_uid for i in batch]
        self.requests.append(uids)
        return self.answer(uids)


def refusing_with_400(bad: set[str]) -> ScriptedPlatform:
    """A server that refuses a whole request containing a bad instance, with a 400 naming nobody."""
    def answer(uids: list[str]) -> StowOutcome:
        if bad & set(uids):
            return StowOutcome(400, refused=tuple(uids))
        return StowOutcome(200, stored=tuple(uids))
    return ScriptedPlatform(answer)


def test_a_400_naming_nobody_is_narrowed_down_to_the_instance() -> None:
    """One instance of 8 makes every request holding it fail with 400: it alone is rejected with
    the HTTP status, the 7 others are stored."""
    platform = refusing_with_400({uid(5)})
    delivery = deliver_study(platform, instances(8), 8)
    assert sorted(delivery.stored) == sorted(uid(n) for n in range(8) if n != 5)
    assert [(f.sop_instance_uid, f.detail) for f in delivery.rejected] == [(uid(5), "HTTP 400, no failure reason given")]
    assert not delivery.transient and not delivery.complete
    assert max(len(r) for r in platform.requests[1:]) <= 4, "halves, not the whole batch again"
    assert delivery.requests == len(platform.requests) <= 1 + 2 * 3


def test_two_refused_instances_in_different_batches() -> None:
    """Batching and narrowing together: 2 bad of 10 in batches of 4 are both found, 8 stored."""
    delivery = deliver_study(refusing_with_400({uid(1), uid(8)}), instances(10), 4)
    assert sorted(f.sop_instance_uid for f in delivery.rejected) == [uid(1), uid(8)]
    assert len(delivery.stored) == 8


def test_processing_failure_among_others_is_confirmed_alone() -> None:
    """0110 for an instance in a request of several is asked again with the instance alone; the
    second 0110 rejects it with the platform's reason (what later DICOMweb plugins answer)."""
    def answer(uids: list[str]) -> StowOutcome:
        failed = [u for u in uids if u == uid(2)]
        stored = tuple(u for u in uids if u != uid(2))
        return StowOutcome(202 if stored else 400, stored=stored,
                           rejected=tuple(InstanceFailure(u, 0x0110, failure_text(0x0110)) for u in failed))
    platform = ScriptedPlatform(answer)
    delivery = deliver_study(platform, instances(4), 4)
    assert platform.requests == [[uid(n) for n in range(4)], [uid(2)]]
    assert [(f.sop_instance_uid, f.reason, f.detail) for f in delivery.rejected] == \
        [(uid(2), 0x0110, "0x0110 Processing failure")]
    assert len(delivery.stored) == 3


def test_a_passing_processing_failure_is_not_a_rejection() -> None:
    """An 0110 that does not recur when the instance is sent alone ends with the instance stored."""
    first = [True]

    def answer(uids: list[str]) -> StowOutcome:
        if first[0]:
            first[0] = False
            return StowOutcome(202, stored=tuple(uids[1:]), rejected=(InstanceFailure(uids[0], 0x0110, "x"),))
        return StowOutcome(200, stored=tuple(uids))
    delivery = deliver_study(ScriptedPlatform(answer), instances(3), 3)
    assert delivery.complete and len(delivery.stored) == 3


def dropping_from(bad: str) -> ScriptedPlatform:
    """Orthanc DICOMweb 1.7: 200, the parts before the bad one stored, it and all after it left out."""
    def answer(uids: list[str]) -> StowOutcome:
        cut = uids.index(bad) if bad in uids else len(uids)
        return StowOutcome(200, stored=tuple(uids[:cut]), unacknowledged=tuple(uids[cut:]))
    return ScriptedPlatform(answer)


def test_unacknowledged_parts_are_sent_again_first_alone() -> None:
    """When a 2xx leaves the refused part and all after it out, the first is sent alone and the
    rest together: the rest is stored and the one left is transient, unless told to reject it."""
    platform = dropping_from(uid(1))
    delivery = deliver_study(platform, instances(5), 5)
    assert platform.requests == [[uid(n) for n in range(5)], [uid(1)], [uid(2), uid(3), uid(4)]]
    assert sorted(delivery.stored) == [uid(n) for n in (0, 2, 3, 4)]
    assert [(f.sop_instance_uid, f.reason) for f in delivery.transient] == [(uid(1), None)]
    assert "sent alone" in delivery.transient[0].detail and not delivery.rejected
    rejecting = deliver_study(dropping_from(uid(1)), instances(5), 5, reject_unacknowledged=True)
    assert [f.sop_instance_uid for f in rejecting.rejected] == [uid(1)] and not rejecting.transient


def test_a_platform_failure_stops_the_delivery_and_keeps_what_was_stored() -> None:
    """A 503 on the second batch: the first is stored, the rest transient, the error and its
    Retry-After handed back, and nothing more sent."""
    calls = [0]

    def answer(uids: list[str]) -> StowOutcome:
        calls[0] += 1
        if calls[0] == 2:
            raise PlatformError("platform: HTTP 503 to STOW-RS", status_code=503, retry_after_s=30.0)
        return StowOutcome(200, stored=tuple(uids))
    platform = ScriptedPlatform(answer)
    delivery = deliver_study(platform, instances(6), 2)
    assert len(platform.requests) == 2
    assert sorted(delivery.stored) == [uid(0), uid(1)]
    assert [f.sop_instance_uid for f in delivery.transient] == [uid(n) for n in range(2, 6)]
    assert delivery.error is not None and delivery.error.kind == "server" and delivery.retry_after_s == 30.0


def test_the_same_instance_twice_is_refused() -> None:
    """Two instances with one SOP Instance UID in a study are a caller's bug, said before sending."""
    with pytest.raises(ValueError):
        deliver_study(dropping_from(""), instances(2) * 2, 10)
