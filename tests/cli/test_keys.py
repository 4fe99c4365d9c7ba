"""`nmip-agent keys`: the site's secret key is created once, private, and never overwritten."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest

from tests.cli.helpers import Run, nmip, sample


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_a_private_key_file(key_file: Path, key_id: str) -> None:
    """`keys init` writes a mode 0600 file and names its key id, which `keys id` prints back."""
    assert key_file.is_file()
    assert _mode(key_file) == 0o600
    assert re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert key_id not in key_file.read_text(), "the key id is a fingerprint, not the secret"


def test_init_reports_the_key_id(tmp_path: Path) -> None:
    """`keys init` tells the user the new key's id and that the key must be kept secret."""
    run = nmip("keys", "init", "--key-file", tmp_path / "k", cwd=tmp_path)
    assert run.returncode == 0, run.output
    shown = nmip("keys", "id", "--key-file", tmp_path / "k", cwd=tmp_path).stdout.strip()
    assert shown in run.stdout
    assert "secret" in run.stdout


def test_second_init_on_the_same_path_refuses_and_keeps_the_key(key_file: Path) -> None:
    """A second `keys init` on an existing key exits 2 with a message and leaves the file as it was."""
    before = key_file.read_bytes()
    run = nmip("keys", "init", "--key-file", key_file, cwd=key_file.parent)
    assert run.returncode == 2
    assert "already exists" in run.stderr
    assert str(key_file) in run.stderr
    assert key_file.read_bytes() == before
    assert _mode(key_file) == 0o600


def test_each_init_makes_a_different_key(tmp_path: Path, key_id: str) -> None:
    """Two `keys init` runs give two keys with different key ids."""
    other = tmp_path / "other.key"
    assert nmip("keys", "init", "--key-file", other, cwd=tmp_path).returncode == 0
    assert nmip("keys", "id", "--key-file", other, cwd=tmp_path).stdout.strip() != key_id


def test_check_refuses_a_key_readable_by_others(tmp_path: Path, key_file: Path) -> None:
    """`check` with a mode 0644 key exits 2, tells the user to chmod it, and reports nothing."""
    loose = tmp_path / "loose.key"
    shutil.copyfile(key_file, loose)
    loose.chmod(0o644)
    run = nmip("check", sample("CT_small.dcm"), "--profile", "nccid", "--key-file", loose, cwd=tmp_path)
    assert run.returncode == 2
    assert "chmod" in run.stderr
    assert "PASS" not in run.stdout and "PatientName" not in run.stdout


def test_anonymise_refuses_a_key_readable_by_others(tmp_path: Path, key_file: Path) -> None:
    """`anonymise` with a mode 0640 key exits 2 and writes neither outputs nor quarantine."""
    loose = tmp_path / "loose.key"
    shutil.copyfile(key_file, loose)
    loose.chmod(0o640)
    source = tmp_path / "in"
    source.mkdir()
    shutil.copyfile(sample("CT_small.dcm"), source / "a.dcm")
    run = nmip("anonymise", source, tmp_path / "out", "--profile", "nccid", "--key-file", loose,
               "--quarantine", tmp_path / "q", "--workers", "1", cwd=tmp_path)
    assert run.returncode == 2
    assert "chmod" in run.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "q").exists()


def test_check_refuses_a_file_that_is_not_a_key(tmp_path: Path) -> None:
    """`check` with a private file that is not an nmip-agent key exits 2 and says so."""
    bogus = tmp_path / "bogus.key"
    bogus.write_text("hello\n")
    bogus.chmod(0o600)
    run = nmip("check", sample("CT_small.dcm"), "--profile", "nccid", "--key-file", bogus, cwd=tmp_path)
    assert run.returncode == 2
    assert "not an nmip-agent key file" in run.stderr


def test_check_with_a_missing_key_file_exits_2(tmp_path: Path) -> None:
    """`check` with a key file that does not exist exits 2 naming the path."""
    run = nmip("check", sample("CT_small.dcm"), "--profile", "nccid", "--key-file", tmp_path / "nope.key",
               cwd=tmp_path)
    assert run.returncode == 2
    assert "nope.key" in run.stderr


# -- `keys csr`: the site's TLS client key and certificate signing request ----------------------


def _csr(tmp_path: Path, *extra: object) -> tuple[Path, Path, Run]:
    key, csr = tmp_path / "client.key", tmp_path / "client.csr"
    run = nmip("keys", "csr", "--key-out", key, "--csr-out", csr, *extra, cwd=tmp_path)
    return key, csr, run


def test_csr_writes_a_private_key_and_a_self_signed_request(tmp_path: Path) -> None:
    """`keys csr` writes a 0600 EC P-256 key and a CSR with the asked subject, signed by that key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key, csr, run = _csr(tmp_path, "--common-name", "agent.example-trust.nhs.uk", "--organisation", "Example Trust",
                         "--country", "gb")
    assert run.returncode == 0, run.output
    assert _mode(key) == 0o600
    request = x509.load_pem_x509_csr(csr.read_bytes())
    assert request.is_signature_valid
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    assert request.public_key() == private.public_key()
    subject = {a.oid: a.value for a in request.subject}
    assert subject == {NameOID.COMMON_NAME: "agent.example-trust.nhs.uk", NameOID.ORGANIZATION_NAME: "Example Trust",
                       NameOID.COUNTRY_NAME: "GB"}
    usages = request.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert "PRIVATE KEY" not in run.output


def test_csr_prints_the_public_key_fingerprint(tmp_path: Path) -> None:
    """`keys csr` prints the SHA-256 of the public key, so the CA can check the CSR it receives."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _, csr, run = _csr(tmp_path, "--common-name", "agent")
    assert run.returncode == 0, run.output
    spki = x509.load_pem_x509_csr(csr.read_bytes()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert hashlib.sha256(spki).hexdigest() in run.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_the_csr(tmp_path: Path) -> None:
    """`openssl req -verify` accepts the CSR `keys csr` writes."""
    import subprocess

    _, csr, run = _csr(tmp_path, "--common-name", "agent")
    assert run.returncode == 0, run.output
    check = subprocess.run(["openssl", "req", "-verify", "-noout", "-in", str(csr)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "verify OK" in check.stdout + check.stderr


def test_csr_with_rsa_makes_a_3072_bit_key(tmp_path: Path) -> None:
    """`--key-type rsa-3072` makes a 3072-bit RSA key, for a CA that signs RSA only."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, csr, run = _csr(tmp_path, "--common-name", "agent", "--key-type", "rsa-3072")
    assert run.returncode == 0, run.output
    public = x509.load_pem_x509_csr(csr.read_bytes()).public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072


def test_csr_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    """A second `keys csr` onto an existing key exits 2, names the file and leaves key and CSR as they were."""
    key, csr, first = _csr(tmp_path, "--common-name", "agent")
    assert first.returncode == 0, first.output
    before = key.read_bytes(), csr.read_bytes()
    other_csr = tmp_path / "other.csr"
    run = nmip("keys", "csr", "--key-out", key, "--csr-out", other_csr, "--common-name", "agent", cwd=tmp_path)
    assert run.returncode == 2
    assert "already exists" in run.stderr and str(key) in run.stderr
    assert (key.read_bytes(), csr.read_bytes()) == before
    assert not other_csr.exists()


def test_csr_refuses_an_existing_csr_and_writes_no_key(tmp_path: Path) -> None:
    """`keys csr` onto an existing CSR path exits 2 before making a key."""
    csr = tmp_path / "client.csr"
    csr.write_text("keep me\n")
    run = nmip("keys", "csr", "--key-out", tmp_path / "client.key", "--csr-out", csr, "--common-name", "agent",
               cwd=tmp_path)
    assert run.returncode == 2
    assert "already exists" in run.stderr
    assert not (tmp_path / "client.key").exists()
    assert csr.read_text() == "keep me\n"


def test_csr_refuses_a_bad_country(tmp_path: Path) -> None:
    """A country that is not two letters exits 2 with the expected form, and writes nothing."""
    key, csr, run = _csr(tmp_path, "--common-name", "agent", "--country", "England")
    assert run.returncode == 2
    assert "two-letter" in run.stderr
    assert not key.exists() and not csr.exists()
