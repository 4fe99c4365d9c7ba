"""`nmip-agent config check`: what serve would refuse, found without starting it, changing nothing."""

from __future__ import annotations

import datetime
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli.helpers import make_key, nmip
from tests.peers.platform import Platform, central_platform, clean_platform  # noqa: F401


def _config(tmp_path: Path, **platform: str) -> Path:
    key = make_key(tmp_path / "keys")
    data = {"pipeline": {"key_file": str(key), "profile": "nmip"}}
    if platform:
        data["platform"] = platform
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_good_configuration_without_delivery_warns_and_creates_nothing(tmp_path: Path) -> None:
    path = _config(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    run = nmip("config", "check", "--config", path, cwd=tmp_path)
    assert run.returncode == 1, run.output  # a warning: nothing will be delivered
    assert "pipeline.profile: nmip" in run.stdout and "OCR on" in run.stdout
    assert "spool.directory" in run.stdout and "will be created" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_every_problem_is_named_in_one_run(tmp_path: Path) -> None:
    path = _config(tmp_path, dicomweb_url="https://127.0.0.1:1/dicom-web", manifest_url="https://127.0.0.1:1/m",
                   ca_bundle=str(tmp_path / "missing-ca.pem"), token_file=str(tmp_path / "token"))
    (tmp_path / "keys" / "site.key").chmod(0o644)
    run = nmip("config", "check", "--config", path, cwd=tmp_path)
    assert run.returncode == 2
    assert "error   pipeline.key_file" in run.stdout
    assert "error   platform" in run.stdout and "ca_bundle" in run.stdout


def _expiring_certificate(folder: Path, days: int) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-agent")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now - datetime.timedelta(days=300))
                   .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "client.pem", folder / "client.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_a_client_certificate_near_its_end_is_a_warning_and_a_dead_one_an_error(tmp_path: Path,
                                                                               clean_platform: Platform) -> None:
    for days, level, code in ((10, "warning", 1), (-1, "error", 2)):
        folder = tmp_path / str(days)
        folder.mkdir()
        cert, key = _expiring_certificate(folder, days)
        path = _config(folder, dicomweb_url=clean_platform.dicomweb_url, manifest_url=clean_platform.manifest_url,
                       ca_bundle=str(clean_platform.ca_bundle), client_certificate=str(cert), client_key=str(key))
        run = nmip("config", "check", "--config", path, cwd=folder)
        assert run.returncode == code, run.output
        assert f"{level:7} platform.client_certificate: CN=site-agent" in run.stdout


def test_platform_makes_one_tls_connection_with_the_sites_certificate(tmp_path: Path, clean_platform: Platform) -> None:
    path = _config(tmp_path, dicomweb_url=clean_platform.dicomweb_url, manifest_url=clean_platform.manifest_url,
                   ca_bundle=str(clean_platform.ca_bundle), client_certificate=str(clean_platform.client_certificate),
                   client_key=str(clean_platform.client_key), token_file=str(clean_platform.token_file))
    run = nmip("config", "check", "--config", path, "--platform", cwd=tmp_path)
    assert "TLS handshake done; the platform answered HTTP" in run.stdout, run.output
    assert run.returncode in (0, 1) and "error" not in run.stdout, run.output  # the test PKI lives a month: a warning


def _receive_tls_config(folder: Path, certificate: Path, key: Path, ca_bundle: Path) -> Path:
    path = _config(folder)
    data = yaml.safe_load(path.read_text())
    data["receive"] = {"tls": {"certificate": str(certificate), "key": str(key), "ca_bundle": str(ca_bundle)}}
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_receive_certificate_is_loaded_matched_and_its_expiry_shown(tmp_path: Path) -> None:
    """receive.tls: the context a receiver builds (key private and matching), each certificate's
    end date, a dead certificate an error, a key others can read an error naming it."""
    from tests.peers.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    path = _receive_tls_config(tmp_path, pki.server_certificate, pki.server_key, pki.ca_certificate)
    run = nmip("config", "check", "--config", path, cwd=tmp_path)
    assert "ok      receive.tls: certificate, key and CA bundle load" in run.stdout, run.output
    # The test PKI lives a month: a warning.
    assert "receive.tls.certificate: CN=127.0.0.1,O=nmip-agent tests expires on" in run.stdout
    assert "receive.tls.ca_bundle: " in run.stdout and "error" not in run.stdout, run.output

    dead = tmp_path / "dead"
    dead.mkdir()
    cert, key = _expiring_certificate(dead, -1)
    run = nmip("config", "check", "--config", _receive_tls_config(dead, cert, key, cert), cwd=dead)
    assert run.returncode == 2 and "error   receive.tls.certificate: CN=site-agent expired on" in run.stdout, run.output

    pki.server_key.chmod(0o644)
    run = nmip("config", "check", "--config", path, cwd=tmp_path)
    assert run.returncode == 2 and "error   receive.tls: " in run.stdout and "receive.tls.key" in run.stdout, run.output


def test_a_port_another_program_holds_and_a_database_of_a_newer_agent_are_errors(tmp_path: Path) -> None:
    import socket
    import sqlite3

    path = _config(tmp_path)
    data = yaml.safe_load(path.read_text())
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        data["receive"] = {"bind_address": "127.0.0.1", "port": holder.getsockname()[1]}
        data["pipeline"]["database"] = str(tmp_path / "state.sqlite")
        path.write_text(yaml.safe_dump(data))
        db = sqlite3.connect(tmp_path / "state.sqlite")
        db.execute("PRAGMA user_version = 999")
        db.close()
        (tmp_path / "state.sqlite").chmod(0o644)
        run = nmip("config", "check", "--config", path, cwd=tmp_path)
    assert run.returncode == 2, run.output
    assert "error   receive.port" in run.stdout and "cannot be listened on" in run.stdout
    assert "schema version 999 is newer than this agent's" in run.stdout
    assert "mode 0644" in run.stdout
    assert oct((tmp_path / "state.sqlite").stat().st_mode & 0o777) == "0o644"  # config check changes nothing


def test_delivery_without_an_opt_out_list_is_named_before_going_live(tmp_path: Path) -> None:
    path = _config(tmp_path, dicomweb_url="https://127.0.0.1:1/dicom-web", manifest_url="https://127.0.0.1:1/m",
                   ca_bundle=str(tmp_path / "missing-ca.pem"), token_file=str(tmp_path / "token"))
    run = nmip("config", "check", "--config", path, cwd=tmp_path)
    assert "warning optout" in run.stdout and "optout import" in run.stdout, run.stdout
