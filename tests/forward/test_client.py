"""PlatformClient against a real platform: nginx (mutual TLS, bearer token, WebDAV, OAuth2) in
front of Orthanc's DICOMweb plugin (tests/peers/platform.py), one per module, reset per test.

What a user of the agent relies on: a study lands on the platform once, however often it is
sent; an instance the platform will not take does not hold back the others; a wrong token, a
refused certificate or an untrusted platform certificate is a loud, retryable error; a platform
that is down is "unreachable" until it is back; the bandwidth cap holds; and no identifier or
secret reaches a log line.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from structlog.testing import capture_logs

from agent.config import PlatformConfig
from agent.forward.client import OAuth2ClientCredentials
from agent.forward import (
    AuthenticationFailed,
    OutgoingInstance,
    PlatformClient,
    PlatformError,
    PlatformUnreachable,
    TlsFailed,
    deliver_study,
)
from tests.peers.platform import (
    OAUTH2_EXPIRES_IN_S,
    Platform,
    central_platform,  # noqa: F401 - fixture used through clean_platform
    clean_platform,  # noqa: F401 - fixture
    platform_available,
)
from tests.synthetic import Patient, make_study, planted_values

pytestmark = pytest.mark.skipif(
    not platform_available(), reason="nginx, Orthanc or orthanc-dicomweb not installed: run scripts/install-debian-packages.sh"
)

SOURCE = Path("/etc/nmip-agent/config.yaml")


# -- helpers ---------------------------------------------------------------------------------


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def outgoing(study: list[Dataset]) -> list[OutgoingInstance]:
    return [OutgoingInstance(ds.SOPInstanceUID, ds.SOPClassUID, data=encode(ds)) for ds in study]


def settings(central: Platform, **changes: Any) -> PlatformConfig:
    """The platform section a site would write for this platform: mutual TLS and the token file."""
    base = PlatformConfig(
        dicomweb_url=central.dicomweb_url, manifest_url=central.manifest_url, clinical_url=central.clinical_url,
        ca_bundle=central.ca_bundle, client_certificate=central.client_certificate, client_key=central.client_key,
        token_file=central.token_file, timeout_s=10.0, retry_initial_s=0.1, retry_max_s=1.0,
    )
    return dataclasses.replace(base, **changes)


def oauth2_settings(central: Platform, **changes: Any) -> PlatformConfig:
    oauth2: dict[str, Any] = {"token_file": None, "oauth2_token_url": central.oauth2_token_url,
                              "oauth2_client_id": central.oauth2_client_id,
                              "oauth2_client_secret_file": central.oauth2_client_secret_file}
    return settings(central, **{**oauth2, **changes})


def private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    return path


def instance_count(central: Platform) -> int:
    return len(central.orthanc.get("/instances"))


@pytest.fixture
def central(clean_platform: Platform) -> Platform:  # noqa: F811 - the fixture, not the import
    return clean_platform


@pytest.fixture
def client(central: Platform) -> Iterator[PlatformClient]:
    with PlatformClient(settings(central), SOURCE) as c:
        yield c


@pytest.fixture(scope="module")
def study() -> list[Dataset]:
    """Six CT instances in two series, with identifiers planted everywhere they can hide."""
    return make_study(n_series=2, n_per_series=3)


# -- delivery --------------------------------------------------------------------------------


def test_a_study_is_stored_once_even_when_sent_twice(central: Platform, client: PlatformClient,
                                                     study: list[Dataset]) -> None:
    """Every instance is stored and acknowledged; sending the study again (as after a crash
    mid-upload) is acknowledged again and leaves exactly one copy of each on the platform."""
    batch = outgoing(study)
    first = deliver_study(client, batch, 50)
    assert first.complete and sorted(first.stored) == sorted(i.sop_instance_uid for i in batch)
    assert first.requests == 1
    again = deliver_study(client, batch, 50)
    assert again.complete and sorted(again.stored) == sorted(first.stored)
    assert central.stored_sop_instance_uids() == {ds.SOPInstanceUID for ds in study}
    assert instance_count(central) == len(study)
    stored = central.instance_bytes(study[0].SOPInstanceUID)
    assert stored == batch[0].data, "the platform holds the very bytes sent"


def test_five_instances_from_files_in_batches_of_two(central: Platform, client: PlatformClient,
                                                     tmp_path: Path) -> None:
    """Five instances read from the outbox go in three requests of at most two, all stored."""
    five = make_study(n_series=1, n_per_series=5)
    batch = []
    for n, ds in enumerate(five):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(encode(ds))
        batch.append(OutgoingInstance(ds.SOPInstanceUID, ds.SOPClassUID, path=path))
    delivery = deliver_study(client, batch, 2)
    assert delivery.complete and delivery.requests == 3
    assert central.stored_sop_instance_uids() == {ds.SOPInstanceUID for ds in five}


def test_an_instance_the_platform_refuses_does_not_hold_back_the_others(central: Platform, client: PlatformClient,
                                                                         study: list[Dataset]) -> None:
    """The platform refuses the second of six instances. Debian's Orthanc DICOMweb 1.7 says so
    only by leaving it (and every part after it) out of a 200 answer, with no FailureReason: the
    five others are stored anyway, and the refused one is reported as not acknowledged when sent
    alone; transient by default, rejected when the pipeline asks for it."""
    batch = outgoing(study)
    refused = batch[1].sop_instance_uid
    central.reject_sop_instances({refused})
    delivery = deliver_study(client, batch, 50)
    assert not delivery.complete
    assert sorted(delivery.stored) == sorted(i.sop_instance_uid for i in batch if i.sop_instance_uid != refused)
    assert [(f.sop_instance_uid, f.reason) for f in delivery.transient] == [(refused, None)]
    assert delivery.transient[0].detail == "not acknowledged when sent alone (HTTP 200, no failure reason given)"
    assert central.stored_sop_instance_uids() == set(delivery.stored)
    final = deliver_study(client, batch, 50, reject_unacknowledged=True)
    assert [f.sop_instance_uid for f in final.rejected] == [refused] and not final.transient
    assert instance_count(central) == len(study) - 1, "the others were not duplicated by the resend"


def test_store_instances_reports_each_instance(central: Platform, client: PlatformClient,
                                               study: list[Dataset]) -> None:
    """One request: the stored instances, and those the answer leaves out, by SOP Instance UID."""
    batch = outgoing(study[:3])
    central.reject_sop_instances({batch[2].sop_instance_uid})
    outcome = client.store_instances(batch)
    assert outcome.status_code == 200
    assert outcome.stored == (batch[0].sop_instance_uid, batch[1].sop_instance_uid)
    assert outcome.unacknowledged == (batch[2].sop_instance_uid,)
    assert not outcome.rejected and not outcome.refused and not outcome.all_stored


def test_failure_reasons_the_platform_gives_are_read_per_instance(central: Platform, client: PlatformClient,
                                                                  study: list[Dataset]) -> None:
    """A real FailedSOPSequence from the platform: with STOW-RS pinned to one study (nginx
    forwards to /studies/{uid}), DICOMweb 1.7 refuses each part of another study with
    FailureReason 0x0110 under HTTP 409 and no Content-Type, and stores the rest. The refused
    instances are rejected with the server's reason, after one more try alone (0x0110 is too
    generic to pin on one part of a request of several)."""
    other = make_study(Patient(patient_id="OTHER0001"), n_series=1, n_per_series=2, plant=False)
    batch = outgoing(study[:3]) + outgoing(other)
    central.refuse_stow_except_study(str(study[0].StudyInstanceUID))
    try:
        outcome = client.store_instances(batch)
        delivery = deliver_study(client, batch, 50)
    finally:
        central.refuse_stow_except_study(None)
    assert outcome.status_code == 409
    assert sorted(outcome.stored) == sorted(i.sop_instance_uid for i in batch[:3])
    assert sorted(f.sop_instance_uid for f in outcome.rejected) == sorted(i.sop_instance_uid for i in batch[3:])
    assert {f.reason for f in outcome.rejected} == {0x0110}
    assert sorted(f.sop_instance_uid for f in delivery.rejected) == sorted(i.sop_instance_uid for i in batch[3:])
    assert all(f.reason == 0x0110 and "0x0110" in f.detail for f in delivery.rejected)
    assert not delivery.transient and central.stored_sop_instance_uids() == {i.sop_instance_uid for i in batch[:3]}


# -- manifests and clinical tables -----------------------------------------------------------


def test_manifest_and_clinical_puts_land_on_the_platform(central: Platform, client: PlatformClient) -> None:
    """A manifest is PUT as {pseudonymous study UID}.json and a CSV as {batch id}.csv; a second
    PUT of a manifest replaces it."""
    study_uid = "2.25.123456789012345678901234567890"
    client.put_manifest(study_uid, b'{"instances": 6}')
    client.put_manifest(study_uid, b'{"instances": 7}')
    client.put_clinical("batch-2026-03-10.1", b"pseudonym,age\nABC,54\n")
    assert central.put_files("manifests") == {f"{study_uid}.json": b'{"instances": 7}'}
    assert central.put_files("clinical") == {"batch-2026-03-10.1.csv": b"pseudonym,age\nABC,54\n"}


def test_put_refuses_a_url_outside_the_platform(client: PlatformClient) -> None:
    """The token goes only to the configured platform, and a name cannot climb out of its folder."""
    with pytest.raises(ValueError):
        client.put("https://elsewhere.example/manifests/x.json", b"{}", "application/json")
    with pytest.raises(ValueError):
        client.put_manifest("../../etc/passwd", b"{}")


# -- authentication and TLS ------------------------------------------------------------------


def test_a_wrong_token_is_a_loud_authentication_failure(central: Platform, study: list[Dataset],
                                                        tmp_path: Path) -> None:
    """A token the platform refuses gives AuthenticationFailed (kind "authentication", transient,
    loud) naming platform.token_file, never the token; nothing is stored, and deliver_study
    hands the error back with every instance transient."""
    wrong = "wrong-" + "x" * 30
    with PlatformClient(settings(central, token_file=private_file(tmp_path / "token", wrong)), SOURCE) as client:
        with pytest.raises(AuthenticationFailed) as raised:
            client.store_instances(outgoing(study[:1]))
        delivery = deliver_study(client, outgoing(study), 4)
    error = raised.value
    assert (error.kind, error.transient, error.loud, error.status_code) == ("authentication", True, True, 401)
    assert "platform.token_file" in str(error) and wrong not in str(error)
    assert isinstance(delivery.error, AuthenticationFailed) and not delivery.stored
    assert len(delivery.transient) == len(study) and not delivery.rejected
    assert central.stored_sop_instance_uids() == set()


def test_a_token_rotated_on_disk_is_read_again_after_a_401(central: Platform, client: PlatformClient,
                                                             study: list[Dataset]) -> None:
    """The operator writes a new token to token_file and the platform switches to it: the
    running client reads the file again on the 401 and goes on, without a restart."""
    assert client.store_instances(outgoing(study[:1])).all_stored
    central.set_token("rotated-" + "y" * 30, update_token_file=True)
    assert client.store_instances(outgoing(study[1:2])).all_stored


def test_oauth2_token_is_obtained_and_renewed_after_a_401(central: Platform, study: list[Dataset]) -> None:
    """With OAuth2 client credentials the client fetches a token, and when the platform stops
    accepting it (set_token), fetches a new one on the 401 and the request goes through."""
    with PlatformClient(oauth2_settings(central), SOURCE) as client:
        assert client.store_instances(outgoing(study[:1])).all_stored
        central.set_token("renewed-" + "z" * 30)
        assert client.store_instances(outgoing(study[1:2])).all_stored
    token_requests = [line for line in central.access_log.read_text().splitlines() if "/oauth2/token" in line]
    assert len(token_requests) == 2


def test_oauth2_token_is_renewed_before_it_expires(central: Platform) -> None:
    """A token is reused while valid and fetched anew a minute before expires_in runs out (the
    clock is the test's; the token endpoint is the platform's)."""
    now = [0.0]
    with httpx.Client(verify=central.ssl_context(), trust_env=False) as http:
        credentials = OAuth2ClientCredentials(http, SOURCE, oauth2_settings(central),
                                              lambda exc, url: PlatformUnreachable(url), clock=lambda: now[0])
        first = credentials.header()
        now[0] = OAUTH2_EXPIRES_IN_S - 61
        assert credentials.header() is first
        central.set_token("later-" + "w" * 30)
        now[0] = OAUTH2_EXPIRES_IN_S - 59
        assert credentials.header() == {"Authorization": f"Bearer {central.token}"}


def test_a_wrong_oauth2_secret_is_an_authentication_failure(central: Platform, study: list[Dataset],
                                                            tmp_path: Path) -> None:
    """The token endpoint refusing the client secret is AuthenticationFailed naming the config keys,
    logged once at error level."""
    secret = private_file(tmp_path / "secret", "not-the-secret")
    with PlatformClient(oauth2_settings(central, oauth2_client_secret_file=secret), SOURCE) as client:
        with capture_logs() as events, pytest.raises(AuthenticationFailed) as raised:
            client.store_instances(outgoing(study[:1]))
    assert "oauth2_client_secret_file" in str(raised.value) and "invalid_client" in str(raised.value)
    assert "not-the-secret" not in str(raised.value)
    assert [(e["event"], e["log_level"]) for e in events] == [("platform_authentication_failed", "error")]


def test_without_client_certificate_it_is_authentication_not_a_rejection(central: Platform,
                                                                         study: list[Dataset]) -> None:
    """nginx answers a missing client certificate with HTTP 400: that is AuthenticationFailed for
    every request, never a refusal that would quarantine the instances."""
    no_certificate = settings(central, client_certificate=None, client_key=None)
    with PlatformClient(no_certificate, SOURCE) as client:
        with pytest.raises(AuthenticationFailed) as raised:
            client.store_instances(outgoing(study[:2]))
        delivery = deliver_study(client, outgoing(study), 50)
    assert "client certificate" in str(raised.value) and raised.value.status_code == 400
    assert isinstance(delivery.error, AuthenticationFailed) and not delivery.rejected


def test_a_platform_certificate_from_another_ca_is_a_tls_failure(central: Platform, study: list[Dataset]) -> None:
    """Trusting another CA than the one that signed the platform's certificate: TlsFailed (kind
    "tls", transient, loud) naming platform.ca_bundle; the system store is never consulted."""
    with PlatformClient(settings(central, ca_bundle=central.other_ca_bundle), SOURCE) as client:
        with pytest.raises(TlsFailed) as raised:
            client.store_instances(outgoing(study[:1]))
    assert (raised.value.kind, raised.value.transient, raised.value.loud) == ("tls", True, True)
    assert "platform.ca_bundle" in str(raised.value) and str(central.other_ca_bundle) in str(raised.value)


def test_a_port_that_speaks_plain_http_is_a_tls_failure(central: Platform, study: list[Dataset]) -> None:
    """An https URL pointing at a plain-HTTP port (Orthanc's own) fails the handshake: TlsFailed, loud."""
    plain = settings(central, dicomweb_url=f"https://127.0.0.1:{central.orthanc.http_port}/dicom-web")
    with PlatformClient(plain, SOURCE) as client:
        with pytest.raises(TlsFailed) as raised:
            client.store_instances(outgoing(study[:1]))
    assert raised.value.loud and "HTTPS" in str(raised.value)
    assert central.stored_sop_instance_uids() == set()


def test_a_platform_presenting_a_foreign_certificate_is_refused(central: Platform, client: PlatformClient,
                                                                study: list[Dataset]) -> None:
    """When the platform end presents a certificate our CA did not sign (a man in the middle),
    the same client that just delivered refuses it, and delivers again once it is back."""
    assert client.store_instances(outgoing(study[:1])).all_stored
    with central.other_ca_server_certificate():
        with pytest.raises(TlsFailed):
            client.store_instances(outgoing(study[1:2]))
    assert client.store_instances(outgoing(study[1:2])).all_stored


def test_a_wrong_dicomweb_url_is_a_loud_server_error(central: Platform, study: list[Dataset]) -> None:
    """A 404 for STOW-RS means the URL is wrong: a loud, retried PlatformError naming
    platform.dicomweb_url, never a rejection of the instances."""
    with PlatformClient(settings(central, dicomweb_url=central.dicomweb_url + "-nope"), SOURCE) as client:
        delivery = deliver_study(client, outgoing(study), 50)
    assert isinstance(delivery.error, PlatformError) and delivery.error.status_code == 404
    assert delivery.error.loud and delivery.error.kind == "server" and "platform.dicomweb_url" in str(delivery.error)
    assert not delivery.rejected and len(delivery.transient) == len(study)


# -- the platform down -----------------------------------------------------------------------


def test_a_stopped_platform_is_unreachable_then_delivery_resumes(central: Platform, client: PlatformClient,
                                                                 study: list[Dataset]) -> None:
    """With the platform stopped, a request fails with PlatformUnreachable (transient, not loud);
    after start() the same client (its pooled connection gone stale) delivers again."""
    assert client.store_instances(outgoing(study[:1])).all_stored
    central.stop()
    with pytest.raises(PlatformUnreachable) as raised:
        client.store_instances(outgoing(study[1:2]))
    assert (raised.value.kind, raised.value.transient, raised.value.loud) == ("unreachable", True, False)
    central.start()
    delivery = deliver_study(client, outgoing(study), 50)
    assert delivery.complete
    assert instance_count(central) == len(study)


# -- the bandwidth cap -----------------------------------------------------------------------


def test_the_bandwidth_cap_slows_a_2_mb_upload_to_the_rate(central: Platform) -> None:
    """At 8 Mbit/s (1 MB/s), a 2 MB instance takes about 2 s; without a cap it takes a fraction."""
    big = make_study(n_series=1, n_per_series=1, rows=1024, columns=1024)
    batch = outgoing(big)
    size = len(batch[0].data or b"")
    assert size > 2_000_000
    with PlatformClient(settings(central, bandwidth_mbit_s=8.0), SOURCE) as capped:
        started = time.monotonic()
        assert capped.store_instances(batch).all_stored
        slow = time.monotonic() - started
    with PlatformClient(settings(central), SOURCE) as free:
        started = time.monotonic()
        assert free.store_instances(batch).all_stored
        fast = time.monotonic() - started
    expected = size / 1_000_000
    assert 0.9 * expected <= slow <= 2.0 * expected + 0.5, (slow, expected)
    assert fast < slow / 2, (fast, slow)


# -- logs ------------------------------------------------------------------------------------


def test_no_identifier_secret_or_url_in_the_logs(central: Platform, study: list[Dataset], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Through deliveries, a refusal, a 401 and a PUT at DEBUG level, no log record (the agent's
    structlog events, httpx's and httpcore's stdlib records) carries the token, a planted
    identifier, a UID or a URL path."""
    caplog.set_level(logging.DEBUG)
    batch = outgoing(study)
    central.reject_sop_instances({batch[3].sop_instance_uid})
    with capture_logs() as events:
        with PlatformClient(settings(central), SOURCE) as client:
            deliver_study(client, batch, 2)
            client.put_manifest(study[0].StudyInstanceUID, b"{}")
        wrong = private_file(tmp_path / "token", "wrong-token-" + "q" * 20)
        with PlatformClient(settings(central, token_file=wrong), SOURCE) as client:
            deliver_study(client, batch, 2)
    assert events, "the client logs what it does"
    text = caplog.text + "\n".join(json.dumps(event, default=str) for event in events)
    secrets = [central.token, "wrong-token-", "Bearer", "Authorization"]
    identifiers = list(planted_values(Patient(), study[0]).values())
    uids = [ds.SOPInstanceUID for ds in study] + [study[0].StudyInstanceUID]
    for value in secrets + identifiers + uids + ["/dicom-web", "/manifests"]:
        assert value not in text, f"{value!r} reached a log line"
    assert any(event["log_level"] == "error" and event["event"] == "platform_authentication_failed" for event in events)
