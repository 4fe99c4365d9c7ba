"""The site's pseudonymisation key: a 256-bit secret kept in a file only the agent can read.

Every pseudonym, UID and date offset derives from this key through HMAC-SHA256, so the same
source value always maps to the same output, and nobody without the key can reverse or
recompute the mapping (an unkeyed hash of a hospital number can be brute-forced in seconds).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.errors import KeyFileError

KEY_BYTES = 32
_HEADER = "nmip-agent-key v1"


@dataclass(frozen=True, repr=False)
class SiteKey:
    """The secret and its public fingerprint. `repr` never shows the secret."""

    secret: bytes

    @property
    def key_id(self) -> str:
        """A non-secret fingerprint recorded in every output, so a platform can tell keys apart."""
        return hmac.new(self.secret, b"nmip-agent/key-id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SiteKey(key_id={self.key_id})"


def init_key_file(path: Path) -> SiteKey:
    """Write a new random key to `path` with mode 0600; never overwrite an existing file."""
    key = SiteKey(secrets.token_bytes(KEY_BYTES))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create ({exc.strerror})") from None
    try:
        os.write(fd, f"{_HEADER}\n{key.secret.hex()}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_key_file(path: Path) -> SiteKey:
    """Read a key written by `init_key_file`, refusing one that others can read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: key file is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o});"
            " run chmod 600 on it"
        )
    lines = path.read_text(encoding="ascii", errors="replace").split()
    if len(lines) < 3 or " ".join(lines[:2]) != _HEADER:
        raise KeyFileError(f"{path}: not an nmip-agent key file (expected a '{_HEADER}' header)")
    try:
        secret = bytes.fromhex(lines[2])
    except ValueError:
        raise KeyFileError(f"{path}: key is not hexadecimal") from None
    if len(secret) != KEY_BYTES:
        raise KeyFileError(f"{path}: key must be {KEY_BYTES * 8} bits, found {len(secret) * 8}")
    return SiteKey(secret)


# -- the site's TLS client key and certificate signing request (`nmip-agent keys csr`) -----------

KEY_TYPES = ("ec-p256", "rsa-3072")


@dataclass(frozen=True)
class SigningRequest:
    """What `make_csr` wrote: the CSR in PEM and the SHA-256 of its public key (to read out to the CA)."""

    csr_pem: bytes
    public_key_sha256: str


def make_csr(
    key_out: Path,
    csr_out: Path,
    *,
    common_name: str,
    organisation: str | None = None,
    organisational_unit: str | None = None,
    country: str | None = None,
    key_type: str = "ec-p256",
) -> SigningRequest:
    """Write a new TLS private key (mode 0600) and a PEM certificate signing request for it.

    The key is what the agent presents to the platform for mutual TLS (`platform.client_key`);
    the CSR goes to the programme's CA, which returns `platform.client_certificate`.

    EC P-256 by default: the same 128-bit security as RSA 3072 (NIST SP 800-57 Part 1, Table 2)
    with a 32-byte key, faster handshakes and a key generated in milliseconds, and every TLS 1.2
    and 1.3 stack (OpenSSL, nginx, Java, cloud load balancers) accepts it. `rsa-3072` is there for
    a CA that signs RSA keys only. The key is unencrypted PKCS#8: the agent starts unattended, so
    the file's mode, not a passphrase kept next to it, is what protects it.

    The CSR asks for a client-authentication certificate (key usage digitalSignature, extended
    key usage clientAuth); a CA may override what it asks. Neither file is ever overwritten, and
    both are checked before anything is written, so a refused run leaves nothing behind.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if key_type not in KEY_TYPES:
        raise KeyFileError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")
    # (attribute, label for messages, value, upper bound from RFC 5280 Appendix A)
    attributes = [(NameOID.COUNTRY_NAME, "country", country, 2),
                  (NameOID.ORGANIZATION_NAME, "organisation", organisation, 64),
                  (NameOID.ORGANIZATIONAL_UNIT_NAME, "organisational unit", organisational_unit, 64),
                  (NameOID.COMMON_NAME, "common name", common_name, 64)]
    names = []
    for oid, label, value, limit in attributes:
        if value is None:
            continue
        value = value.strip()
        if oid == NameOID.COUNTRY_NAME:
            if not (len(value) == 2 and value.isascii() and value.isalpha()):
                raise KeyFileError(f"{label}: a two-letter ISO 3166 code such as GB, got {value!r}")
            value = value.upper()
        if not value or len(value) > limit or not value.isprintable():
            raise KeyFileError(f"{label}: 1 to {limit} printable characters, got {value!r}")
        names.append(x509.NameAttribute(oid, value))
    for path in (key_out, csr_out):
        if os.path.lexists(path):
            raise KeyFileError(f"{path}: already exists; refusing to overwrite it")

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if key_type == "ec-p256"
        else rsa.generate_private_key(public_exponent=65537, key_size=3072)
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(names))
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=key_type != "ec-p256", data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    _write_new(key_out, key_pem, 0o600)
    try:
        _write_new(csr_out, csr_pem, 0o644)
    except BaseException:
        key_out.unlink()  # a key without its CSR is of no use, and would block the next attempt
        raise
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningRequest(csr_pem, hashlib.sha256(spki).hexdigest())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` (never replacing a file), write and fsync it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written key or CSR left behind
        raise
