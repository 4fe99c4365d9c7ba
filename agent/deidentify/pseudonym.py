"""Keyed pseudonyms: one HMAC-SHA256 domain per use of the site key.

Separate domains mean a patient pseudonym can never be compared with a UID or an accession number
derived from the same string, and each output is stable: the same source value under the same key
always gives the same result, at this site and in every later run.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

from agent.keys import SiteKey

# Crockford's base32: no I, L, O or U, so a pseudonym read aloud or retyped is not misread.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class PseudonymSettings:
    """The programme's choices for pseudonyms and date shifts (a profile's `pseudonym` section)."""

    prefix: str = ""
    length: int = 12
    date_shift_min_days: int = -730
    date_shift_max_days: int = -30

    def problems(self) -> list[str]:
        """What is wrong with these settings, as `key: expected` strings (empty when fine)."""
        out = []
        if not 8 <= self.length <= 40:
            out.append("pseudonym.length: an integer from 8 to 40")
        if len(self.prefix) + self.length > 64 or any(c in self.prefix for c in "\\^="):
            out.append("pseudonym.prefix: at most 64 - length characters, without \\ ^ =")
        lo, hi = self.date_shift_min_days, self.date_shift_max_days
        # The shift adds a time of day in [0, 24 h), so a negative range must stop at -2 days
        # for every date to move by at least one day.
        if lo > hi or not (hi <= -2 or lo >= 1):
            out.append(
                "pseudonym.date_shift_days: min <= max, either both <= -2 or both >= 1"
                " (a shift under one day would keep real dates)"
            )
        return out


def _base32(digest: bytes, length: int) -> str:
    number = int.from_bytes(digest, "big")
    return "".join(_ALPHABET[(number >> (5 * i)) & 31] for i in range(length))


class Pseudonymiser:
    """Derives every replacement value from the site key; built once per process."""

    def __init__(self, key: SiteKey, settings: PseudonymSettings) -> None:
        self.key_id = key.key_id
        self.settings = settings
        self._domains = {
            name: hmac.new(key.secret, b"nmip-agent/" + name.encode() + b"\x00", hashlib.sha256)
            for name in ("patient", "accession", "uid", "date-offset", "file-name")
        }

    def _mac(self, domain: str, value: str) -> bytes:
        mac = self._domains[domain].copy()
        mac.update(value.encode("utf-8", "surrogateescape"))
        return mac.digest()

    def patient_pseudonym(self, source_patient_id: str) -> str:
        """The patient's pseudonym: the same hospital patient always gets the same one."""
        digest = self._mac("patient", source_patient_id.strip())
        return self.settings.prefix + _base32(digest, self.settings.length)

    def accession_pseudonym(self, source_accession: str) -> str:
        """A 16-character accession number (the SH limit), stable per source accession."""
        return _base32(self._mac("accession", source_accession.strip()), 16)

    def uid(self, source_uid: str) -> str:
        """`2.25.` + the decimal of 128 bits of the MAC: at most 44 characters, valid per PS3.5 9.1."""
        digest = self._mac("uid", source_uid.strip().rstrip("\x00"))
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def opaque_name(self, source_value: str) -> str:
        """A file name for something identifiable (quarantine, spool): 32 hex digits, keyed."""
        return self._mac("file-name", source_value.strip()).hex()[:32]

    def date_offset(self, source_patient_id: str) -> timedelta:
        """The patient's time shift: whole days in the configured range plus a time of day.

        A function of the patient, not of the file, so images and clinical tables move together
        and the intervals between a patient's events survive. The time-of-day part makes a
        late-evening study cross midnight, so dates and times must be shifted together.
        """
        number = int.from_bytes(self._mac("date-offset", source_patient_id.strip()), "big")
        lo, hi = self.settings.date_shift_min_days, self.settings.date_shift_max_days
        days = lo + number % (hi - lo + 1)
        seconds = (number >> 128) % _SECONDS_PER_DAY
        return timedelta(days=days, seconds=seconds)
