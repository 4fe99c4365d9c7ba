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
