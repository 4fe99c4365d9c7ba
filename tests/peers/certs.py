"""A throwaway PKI for TLS tests: the platform's CA, its server and the hospital site's client.

    pki = make_pki(tmp_path / "pki")
    pki.ca_certificate, pki.server_certificate, pki.server_key     # what nginx presents / trusts
    pki.client_certificate, pki.client_key                         # what the agent presents
    pki.other_ca_certificate, pki.other_server_certificate, ...    # a CA the client must NOT trust
    pki.other_client_certificate, pki.other_client_key             # a site cert nginx must NOT accept

Made with the `cryptography` library (no openssl CLI), EC P-256 keys so generation takes a few
milliseconds. The extensions follow RFC 5280 closely enough for OpenSSL's strict verification
(X509_V_FLAG_X509_STRICT, the default of Python >= 3.13's ssl.create_default_context): CAs
carry a critical basicConstraints, keyUsage and a subject key identifier; leaves carry an
authority key identifier, keyUsage and the matching extendedKeyUsage. The server certificate
names 127.0.0.1 (SAN IP) and localhost (SAN DNS). Files are PEM; private keys are mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki", "SITE_CLIENT_CN"]

SITE_CLIENT_CN = "nmip-agent test hospital site"
_VALIDITY = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(hours=1)  # tolerate a slightly slow clock on either side


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files make_pki() wrote."""

    ca_certificate: Path  # the platform's test CA: signed the server and the client certificates
    ca_key: Path
    server_certificate: Path  # CN/SAN 127.0.0.1 and localhost, signed by the test CA
    server_key: Path
    client_certificate: Path  # the hospital site's certificate, signed by the test CA
    client_key: Path
    other_ca_certificate: Path  # an unrelated CA: a client trusting only ca_certificate refuses it
    other_server_certificate: Path  # same names as server_certificate, signed by the other CA
    other_server_key: Path
    other_client_certificate: Path  # a client certificate signed by the other CA
    other_client_key: Path


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nmip-agent tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: _Issuer, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signing,
        crl_sign=signing,
        encipher_only=False,
        decipher_only=False,
    )


def _ca(common_name: str) -> tuple[_Issuer, x509.Certificate]:
    key = _key()
    issuer = _Issuer(_name(common_name), key)
    certificate = (
        _builder(issuer.name, issuer, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(signing=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return issuer, certificate


def _leaf(
    common_name: str, issuer: _Issuer, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    builder = (
        _builder(_name(common_name), issuer, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signing=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(issuer.key, hashes.SHA256())


def _write_certificate(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    """PKCS#8 PEM, unencrypted (nginx and httpx read it without a passphrase), created 0600."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)  # in case the file already existed with wider permissions
    return path


def make_pki(directory: Path) -> Pki:
    """Write a fresh test CA, server and client certificates, and an unrelated CA, under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_certificate = _ca("nmip-agent test platform CA")
    server_key, server_certificate = _leaf("127.0.0.1", ca, server=True)
    client_key, client_certificate = _leaf(SITE_CLIENT_CN, ca, server=False)
    other, other_ca_certificate = _ca("nmip-agent test OTHER CA (not trusted)")
    other_server_key, other_server_certificate = _leaf("127.0.0.1", other, server=True)
    other_client_key, other_client_certificate = _leaf(SITE_CLIENT_CN, other, server=False)
    d = directory
    return Pki(
        ca_certificate=_write_certificate(d / "ca.pem", ca_certificate),
        ca_key=_write_key(d / "ca.key", ca.key),
        server_certificate=_write_certificate(d / "server.pem", server_certificate),
        server_key=_write_key(d / "server.key", server_key),
        client_certificate=_write_certificate(d / "client.pem", client_certificate),
        client_key=_write_key(d / "client.key", client_key),
        other_ca_certificate=_write_certificate(d / "other-ca.pem", other_ca_certificate),
        other_server_certificate=_write_certificate(d / "other-server.pem", other_server_certificate),
        other_server_key=_write_key(d / "other-server.key", other_server_key),
        other_client_certificate=_write_certificate(d / "other-client.pem", other_client_certificate),
        other_client_key=_write_key(d / "other-client.key", other_client_key),
    )
