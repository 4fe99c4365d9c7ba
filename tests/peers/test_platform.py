"""The loopback central platform (tests/peers/platform.py) behaves as the delivery tests assume.

Plain httpx against real nginx and Orthanc, no mocks: STOW-RS with the site's certificate and
token stores instances; a missing certificate, a wrong token and a server certificate from
another CA are refused; PUTs land on disk; the OAuth2 endpoint hands out the current token;
stop()/start() and a refused SOP instance look to a client the way the module docstring says.
"""

from __future__ import annotations

import io
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.peers.platform import (
    STOW_STATUS_WHEN_REFUSED,
    Platform,
    central_platform,  # noqa: F401 - fixture used through clean_platform
    clean_platform,  # noqa: F401 - fixture
    platform_available,
)

pytestmark = pytest.mark.skipif(
    not platform_available(), reason="nginx, Orthanc or orthanc-dicomweb not installed: run scripts/install-debian-packages.sh"
)

BOUNDARY = "nmip-test-boundary-7d3f"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"


# --- helpers


def instance(name: str) -> Dataset:
    """A pydicom test file with a fresh SOP Instance UID (so tests never collide in Orthanc)."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    ds = dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stow_body(*parts: bytes) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow(client: httpx.Client, central: Platform, *parts: bytes, auth: dict[str, str] | None = None) -> httpx.Response:
    """POST {dicomweb_url}/studies; auth: the Authorization header(s) to send (default: the current token)."""
    headers = {
        **(central.auth_headers() if auth is None else auth),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    return client.post(f"{central.dicomweb_url}/studies", content=stow_body(*parts), headers=headers)


def sequence(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = answer[tag].get("Value", [])
    return items


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception httpx's ConnectError wraps (through httpcore's)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def referenced_uids(answer: dict[str, Any]) -> list[str]:
    return [item[REFERENCED_SOP_INSTANCE_UID]["Value"][0] for item in sequence(answer, REFERENCED_SOP_SEQUENCE)]


@pytest.fixture
def central(clean_platform: Platform) -> Platform:  # noqa: F811 - the fixture, not the import
    return clean_platform


@pytest.fixture
def client(central: Platform) -> Iterator[httpx.Client]:
    """The site's client: trusts the test CA, presents the site certificate, no proxy from the environment."""
    with httpx.Client(verify=central.ssl_context(), trust_env=False, timeout=30) as c:
        yield c


# --- tests


def test_stow_rs_with_certificate_and_token_stores_both_instances(central: Platform, client: httpx.Client) -> None:
    ct, mr = instance("CT_small.dcm"), instance("MR_small.dcm")
    response = stow(client, central, encode(ct), encode(mr))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    assert sorted(referenced_uids(answer)) == sorted([ct.SOPInstanceUID, mr.SOPInstanceUID])
    assert sequence(answer, FAILED_SOP_SEQUENCE) == []
    # RetrieveURLs name the public (nginx) address, not Orthanc's own port.
    assert all(
        item["00081190"]["Value"][0].startswith(central.dicomweb_url + "/studies/")
        for item in sequence(answer, REFERENCED_SOP_SEQUENCE)
    )
    stored = central.stored_instances()
    assert set(stored) == {ct.SOPInstanceUID, mr.SOPInstanceUID}
    assert stored[ct.SOPInstanceUID].tags["Modality"] == "CT"
    assert stored[mr.SOPInstanceUID].tags["PatientName"] == str(mr.PatientName)
    assert central.instance_bytes(ct.SOPInstanceUID) == encode(ct)  # stored as sent


def test_without_client_certificate_nginx_answers_400_and_stores_nothing(central: Platform) -> None:
    with httpx.Client(verify=central.ssl_context(client_certificate=False), trust_env=False, timeout=30) as anonymous:
        response = stow(anonymous, central, encode(instance("CT_small.dcm")))
    assert response.status_code == 400
    assert "No required SSL certificate was sent" in response.text
    assert central.stored_sop_instance_uids() == set()


def test_client_certificate_from_another_ca_gets_400(central: Platform) -> None:
    context = central.ssl_context(client_certificate=(central.other_client_certificate, central.other_client_key))
    with httpx.Client(verify=context, trust_env=False, timeout=30) as stranger:
        response = stow(stranger, central, encode(instance("CT_small.dcm")))
    assert response.status_code == 400
    assert "The SSL certificate error" in response.text
    assert central.stored_sop_instance_uids() == set()


def test_chunked_stow_rs_is_stored(central: Platform, client: httpx.Client) -> None:
    """A client streaming its body (Transfer-Encoding: chunked, no Content-Length) is served too:
    nginx buffers the body and hands Orthanc a Content-Length."""
    ct, mr = instance("CT_small.dcm"), instance("MR_small.dcm")
    body = stow_body(encode(ct), encode(mr))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {
        **central.auth_headers(),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    request = client.build_request("POST", f"{central.dicomweb_url}/studies", content=chunks(), headers=headers)
    assert request.headers["transfer-encoding"] == "chunked" and "content-length" not in request.headers
    response = client.send(request)
    assert response.status_code == 200, response.text
    assert central.stored_sop_instance_uids() == {ct.SOPInstanceUID, mr.SOPInstanceUID}


def test_http2_is_offered_by_alpn(central: Platform) -> None:
    context = central.ssl_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", central.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "h2"


@pytest.mark.parametrize("token", ["wrong-token", ""])
def test_wrong_or_missing_token_gets_401_everywhere(central: Platform, client: httpx.Client, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stowed = stow(client, central, encode(instance("CT_small.dcm")), auth=headers)
    assert stowed.status_code == 401
    assert stowed.headers["www-authenticate"].startswith("Bearer")
    assert client.get(f"{central.dicomweb_url}/studies", headers=headers).status_code == 401
    assert client.put(f"{central.manifest_url}/m.json", content=b"{}", headers=headers).status_code == 401
    assert client.put(f"{central.clinical_url}/c.csv", content=b"a\n", headers=headers).status_code == 401
    assert central.stored_sop_instance_uids() == set()
    assert central.put_files("manifests") == {} and central.put_files("clinical") == {}


def test_put_of_manifest_and_clinical_file_lands_on_disk(central: Platform, client: httpx.Client) -> None:
    headers = {**central.auth_headers(), "Content-Type": "application/json"}
    first = client.put(f"{central.manifest_url}/study-1/manifest.json", content=b'{"v": 1}', headers=headers)
    assert first.status_code == 201  # created, with the missing folder
    again = client.put(f"{central.manifest_url}/study-1/manifest.json", content=b'{"v": 2}', headers=headers)
    assert again.status_code == 204  # replaced
    assert central.put_files("manifests") == {"study-1/manifest.json": b'{"v": 2}'}
    assert central.put_path("manifests", "study-1/manifest.json").read_bytes() == b'{"v": 2}'
    clinical = client.put(f"{central.clinical_url}/batch.csv", content=b"id,value\n1,2\n", headers=central.auth_headers())
    assert clinical.status_code == 201
    assert central.put_files("clinical") == {"batch.csv": b"id,value\n1,2\n"}


def test_server_certificate_from_another_ca_fails_verification(central: Platform, client: httpx.Client) -> None:
    url = f"{central.dicomweb_url}/studies"
    with central.other_ca_server_certificate():
        with pytest.raises(httpx.ConnectError) as refused:
            client.get(url, headers=central.auth_headers())
        assert isinstance(root_cause(refused.value), ssl.SSLCertVerificationError)
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        # It is a valid certificate, only from the other CA: a client trusting that CA gets through.
        other = central.ssl_context(ca=central.other_ca_bundle)
        with httpx.Client(verify=other, trust_env=False, timeout=30) as trusting_other:
            assert trusting_other.get(url, headers=central.auth_headers()).status_code == 200
    assert client.get(url, headers=central.auth_headers()).status_code == 200


def test_refused_instance_is_left_out_under_200_with_the_earlier_instance_stored(
    central: Platform, client: httpx.Client
) -> None:
    kept, refused = instance("CT_small.dcm"), instance("MR_small.dcm")
    central.reject_sop_instances({refused.SOPInstanceUID})
    response = stow(client, central, encode(kept), encode(refused))
    assert response.status_code == STOW_STATUS_WHEN_REFUSED == 200
    answer = response.json()
    assert referenced_uids(answer) == [kept.SOPInstanceUID]
    assert FAILED_SOP_SEQUENCE in answer and sequence(answer, FAILED_SOP_SEQUENCE) == []
    assert central.stored_sop_instance_uids() == {kept.SOPInstanceUID}


def test_refused_instance_first_means_nothing_after_it_is_stored(central: Platform, client: httpx.Client) -> None:
    refused, after = instance("MR_small.dcm"), instance("CT_small.dcm")
    central.reject_sop_instances({refused.SOPInstanceUID})
    response = stow(client, central, encode(refused), encode(after))
    assert response.status_code == 200
    answer = response.json()
    assert referenced_uids(answer) == [] and sequence(answer, FAILED_SOP_SEQUENCE) == []
    assert central.stored_sop_instance_uids() == set()
    central.reject_sop_instances(())  # resending once the platform accepts again stores both
    assert sorted(referenced_uids(stow(client, central, encode(refused), encode(after)).json())) == sorted(
        [refused.SOPInstanceUID, after.SOPInstanceUID]
    )


def test_part_of_another_study_posted_to_a_study_url_is_a_failed_sop_with_409(
    central: Platform, client: httpx.Client
) -> None:
    """DICOMweb 1.7's one per-instance failure item: the study in the URL is not the part's."""
    ct, mr = instance("CT_small.dcm"), instance("MR_small.dcm")
    assert ct.StudyInstanceUID != mr.StudyInstanceUID
    headers = {
        **central.auth_headers(),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    url = f"{central.dicomweb_url}/studies/{ct.StudyInstanceUID}"
    response = client.post(url, content=stow_body(encode(ct), encode(mr)), headers=headers)
    assert response.status_code == 409
    assert "content-type" not in response.headers
    answer = response.json()
    assert referenced_uids(answer) == [ct.SOPInstanceUID]
    [failed] = sequence(answer, FAILED_SOP_SEQUENCE)
    assert failed[REFERENCED_SOP_INSTANCE_UID]["Value"] == [mr.SOPInstanceUID]
    assert failed["00081197"] == {"vr": "US", "Value": [0x0110]}
    assert central.stored_sop_instance_uids() == {ct.SOPInstanceUID}


def test_refuse_stow_except_study_gives_failed_sop_items_to_a_post_on_studies(
    central: Platform, client: httpx.Client
) -> None:
    ct, mr = instance("CT_small.dcm"), instance("MR_small.dcm")
    central.refuse_stow_except_study("1.2.3.4.5.6.7.8.9")  # no such study: every part refused
    response = stow(client, central, encode(ct), encode(mr))
    assert response.status_code == 409
    answer = response.json()
    assert referenced_uids(answer) == []
    failed = sequence(answer, FAILED_SOP_SEQUENCE)
    assert [item[REFERENCED_SOP_INSTANCE_UID]["Value"][0] for item in failed] == [ct.SOPInstanceUID, mr.SOPInstanceUID]
    assert {item["00081197"]["Value"][0] for item in failed} == {0x0110}
    assert central.stored_sop_instance_uids() == set()
    # QIDO-RS on the same path is untouched; the pinned study itself is stored.
    assert client.get(f"{central.dicomweb_url}/studies", headers=central.auth_headers()).status_code == 200
    central.refuse_stow_except_study(ct.StudyInstanceUID)
    response = stow(client, central, encode(ct), encode(mr))
    assert response.status_code == 409 and referenced_uids(response.json()) == [ct.SOPInstanceUID]
    central.refuse_stow_except_study(None)
    assert stow(client, central, encode(mr)).status_code == 200
    assert central.stored_sop_instance_uids() == {ct.SOPInstanceUID, mr.SOPInstanceUID}


def test_stop_refuses_connections_and_start_brings_it_back_with_the_data(
    central: Platform, client: httpx.Client
) -> None:
    ct = instance("CT_small.dcm")
    assert stow(client, central, encode(ct)).status_code == 200
    central.stop()
    assert not central.running
    with pytest.raises(httpx.ConnectError) as refused:
        client.get(f"{central.dicomweb_url}/studies", headers=central.auth_headers())
    assert isinstance(root_cause(refused.value), ConnectionRefusedError)
    central.start()
    response = client.get(f"{central.dicomweb_url}/studies/{ct.StudyInstanceUID}/series", headers=central.auth_headers())
    assert response.status_code == 200
    assert central.stored_sop_instance_uids() == {ct.SOPInstanceUID}


def test_oauth2_client_credentials_and_token_change(central: Platform, client: httpx.Client) -> None:
    secret = central.oauth2_client_secret_file.read_text().strip()
    grant = {"grant_type": "client_credentials"}
    issued = client.post(central.oauth2_token_url, data=grant, auth=(central.oauth2_client_id, secret))
    assert issued.status_code == 200
    assert issued.headers["content-type"] == "application/json"
    body = issued.json()
    assert body == {"access_token": central.token, "token_type": "Bearer", "expires_in": 3600}
    assert central.token_file.read_text().strip() == central.token
    assert client.post(central.oauth2_token_url, data=grant, auth=(central.oauth2_client_id, "nope")).status_code == 401
    assert client.post(central.oauth2_token_url, data=grant).json() == {"error": "invalid_client"}
    assert client.get(central.oauth2_token_url, auth=(central.oauth2_client_id, secret)).status_code == 405

    old = body["access_token"]
    central.set_token("rotated-token-1")
    studies = f"{central.dicomweb_url}/studies"
    assert client.get(studies, headers=central.auth_headers(old)).status_code == 401
    renewed = client.post(central.oauth2_token_url, data=grant, auth=(central.oauth2_client_id, secret)).json()
    assert renewed["access_token"] == "rotated-token-1"
    assert client.get(studies, headers=central.auth_headers(renewed["access_token"])).status_code == 200
    central.set_token("rotated-token-2", expires_in=5)
    short = client.post(central.oauth2_token_url, data=grant, auth=(central.oauth2_client_id, secret)).json()
    assert (short["access_token"], short["expires_in"]) == ("rotated-token-2", 5)
    central.reset()
    assert client.get(studies, headers=central.auth_headers(old)).status_code == 200
    assert client.post(central.oauth2_token_url, data=grant, auth=(central.oauth2_client_id, secret)).json() == body


def test_secrets_and_keys_are_private_and_server_certificate_names_loopback(central: Platform) -> None:
    for path in (central.token_file, central.oauth2_client_secret_file, central.client_key, central.pki.server_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    certificate = x509.load_pem_x509_certificate(central.pki.server_certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert str(central.dicomweb_url).startswith("https://127.0.0.1:")
    assert Path(central.error_log).is_relative_to(central.workdir)
