"""PlatformClient's construction: secrets from private files only, TLS material that fits together,
and every problem a ConfigError naming the config file, the key and the file, never the secret.

No request is sent here (the client connects on its first request); the certificates are real,
from the test PKI of tests/peers/certs.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, PlatformConfig
from agent.forward import PlatformClient
from tests.peers.certs import Pki, make_pki

SOURCE = Path("/etc/nmip-agent/config.yaml")
TOKEN = "site-token-" + "k" * 24


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def config(pki: Pki, tmp_path: Path, **changes: Any) -> PlatformConfig:
    base = PlatformConfig(
        dicomweb_url="https://platform.example/dicom-web", manifest_url="https://platform.example/manifests",
        ca_bundle=pki.ca_certificate, client_certificate=pki.client_certificate, client_key=pki.client_key,
        token_file=private(tmp_path / "token", TOKEN + "\n"),
    )
    return dataclasses.replace(base, **changes)


def refused(settings: PlatformConfig) -> str:
    with pytest.raises(ConfigError) as raised:
        PlatformClient(settings, SOURCE).close()
    message = str(raised.value)
    assert TOKEN not in message
    return message


def test_a_complete_configuration_builds_a_client(pki: Pki, tmp_path: Path) -> None:
    """CA, client certificate and key, private token file: the client is built, and shows no secret."""
    with PlatformClient(config(pki, tmp_path), SOURCE) as client:
        assert TOKEN not in repr(client)
        assert client.window.always and client.backoff.max_s == 600.0


def test_a_token_file_readable_by_others_is_refused(pki: Pki, tmp_path: Path) -> None:
    """A mode 0644 token file: the message names the config file, key, path and mode, and says chmod 600."""
    path = private(tmp_path / "loose-token", TOKEN, 0o644)
    assert refused(config(pki, tmp_path, token_file=path)) == \
        f"{SOURCE}: platform.token_file: {path} is readable by others (mode 0644); chmod 600 it"


def test_a_token_file_open_to_its_group_is_refused(pki: Pki, tmp_path: Path) -> None:
    """Group access (0640) is refused too."""
    path = private(tmp_path / "group-token", TOKEN, 0o640)
    assert "platform.token_file" in (message := refused(config(pki, tmp_path, token_file=path)))
    assert "open to its group (mode 0640)" in message


def test_a_missing_token_file_is_named(pki: Pki, tmp_path: Path) -> None:
    """A token file that does not exist: the key and path, and the system's reason."""
    path = tmp_path / "nope"
    assert refused(config(pki, tmp_path, token_file=path)) == \
        f"{SOURCE}: platform.token_file: {path}: cannot read (No such file or directory)"


def test_a_token_file_that_holds_more_than_a_token(pki: Pki, tmp_path: Path) -> None:
    """Two words or two lines are no token; the message does not quote the file's content."""
    path = private(tmp_path / "token2", f"{TOKEN} {TOKEN}\n")
    message = refused(config(pki, tmp_path, token_file=path))
    assert "platform.token_file" in message and "one line" in message


def test_a_client_key_readable_by_others_is_refused(pki: Pki, tmp_path: Path) -> None:
    """The TLS client key obeys the same rule as every secret."""
    key = tmp_path / "client.key"
    shutil.copyfile(pki.client_key, key)
    key.chmod(0o644)
    assert refused(config(pki, tmp_path, client_key=key)) == \
        f"{SOURCE}: platform.client_key: {key} is readable by others (mode 0644); chmod 600 it"


def test_a_key_that_does_not_match_the_certificate(pki: Pki, tmp_path: Path) -> None:
    """The server's key with the client's certificate does not fit: both keys are named."""
    key = tmp_path / "other.key"
    shutil.copyfile(pki.server_key, key)
    key.chmod(0o600)
    message = refused(config(pki, tmp_path, client_key=key))
    assert "platform.client_key" in message and "platform.client_certificate" in message


def test_a_ca_bundle_that_is_not_pem(pki: Pki, tmp_path: Path) -> None:
    """A CA bundle without a certificate in it is refused, not silently replaced by the system store."""
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    assert refused(config(pki, tmp_path, ca_bundle=bogus)) == \
        f"{SOURCE}: platform.ca_bundle: {bogus}: no PEM CA certificate in it"


def test_an_oauth2_secret_file_readable_by_others(pki: Pki, tmp_path: Path) -> None:
    """The OAuth2 client secret file is checked at start, before any request."""
    secret = private(tmp_path / "secret", "s3cret-value", 0o604)
    message = refused(config(pki, tmp_path, token_file=None, oauth2_token_url="https://platform.example/token",
                             oauth2_client_id="site", oauth2_client_secret_file=secret))
    assert "platform.oauth2_client_secret_file" in message and "chmod 600" in message
    assert "s3cret-value" not in message


@pytest.mark.skipif(importlib.util.find_spec("h2") is not None, reason="h2 is installed")
def test_http2_without_h2_says_what_to_install(pki: Pki, tmp_path: Path) -> None:
    """platform.http2: true without the h2 package is a ConfigError saying so."""
    message = refused(config(pki, tmp_path, http2=True))
    assert "platform.http2" in message and "h2" in message


def test_no_dicomweb_url_is_refused(pki: Pki, tmp_path: Path) -> None:
    """A client without a platform to deliver to is a ConfigError, not a client that fails later."""
    assert "platform.dicomweb_url" in refused(config(pki, tmp_path, dicomweb_url=""))


def test_a_key_file_mode_is_not_widened_by_reading(pki: Pki, tmp_path: Path) -> None:
    """Building a client reads secrets; it never changes their modes."""
    settings = config(pki, tmp_path)
    assert settings.token_file is not None
    PlatformClient(settings, SOURCE).close()
    assert os.stat(settings.token_file).st_mode & 0o777 == 0o600
