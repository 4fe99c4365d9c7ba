"""Keyed pseudonyms: stable per key, different across keys and domains, valid where they land."""

from __future__ import annotations

import os
import re
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from agent.deidentify.pseudonym import PseudonymSettings, Pseudonymiser
from agent.errors import KeyFileError
from agent.keys import SiteKey, init_key_file, load_key_file


def make(key: SiteKey, **settings: object) -> Pseudonymiser:
    return Pseudonymiser(key, PseudonymSettings(**settings))  # type: ignore[arg-type]


def test_same_patient_same_pseudonym_across_instances(site_key: SiteKey) -> None:
    """The same hospital patient always gets the same pseudonym, even with stray whitespace."""
    a, b = make(site_key), make(site_key)
    assert a.patient_pseudonym("HOSP123456") == b.patient_pseudonym("HOSP123456 ")


def test_pseudonym_depends_on_key(site_key: SiteKey, other_key: SiteKey) -> None:
    """Another key gives unrelated pseudonyms, UIDs and offsets: nothing is an unkeyed hash."""
    a, b = make(site_key), make(other_key)
    assert a.patient_pseudonym("P1") != b.patient_pseudonym("P1")
    assert a.uid("1.2.3") != b.uid("1.2.3")
    assert a.date_offset("P1") != b.date_offset("P1")


def test_domains_are_separate(site_key: SiteKey) -> None:
    """A patient ID and an accession number with the same text get unrelated pseudonyms."""
    p = make(site_key, length=16)
    assert p.patient_pseudonym("12345678") != p.accession_pseudonym("12345678")


def test_pseudonym_prefix_and_length(site_key: SiteKey) -> None:
    """The programme's prefix and length shape the pseudonym; the alphabet avoids I, L, O, U."""
    value = make(site_key, prefix="NCCID-", length=10).patient_pseudonym("HOSP1")
    assert re.fullmatch(r"NCCID-[0-9A-HJKMNP-TV-Z]{10}", value)


def test_uid_is_2_25_and_valid(site_key: SiteKey) -> None:
    """UIDs become 2.25. + a decimal integer: at most 64 characters, no leading zero."""
    p = make(site_key)
    for source in ("1.2.840.113619.2.55.3.604688119.969.1268071029.320", "1.2.3", "9" * 64):
        uid = p.uid(source)
        assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
        assert p.uid(source) == uid


def test_date_offset_range_and_time_of_day(site_key: SiteKey) -> None:
    """Offsets stay within the configured days and carry a time of day, per patient."""
    p = make(site_key, date_shift_min_days=-100, date_shift_max_days=-10)
    offsets = {p.date_offset(f"P{i}") for i in range(200)}
    assert all(timedelta(days=-100) <= o < timedelta(days=-9) for o in offsets)
    assert len({o.seconds for o in offsets}) > 100  # times of day vary, so dates cross midnight
    assert p.date_offset("P1") == p.date_offset(" P1")


@pytest.mark.parametrize(
    ("settings", "key"),
    [({"length": 4}, "length"), ({"date_shift_min_days": -10, "date_shift_max_days": 10}, "date_shift_days"),
     ({"date_shift_min_days": -5, "date_shift_max_days": -1}, "date_shift_days"), ({"prefix": "A^B"}, "prefix")],
)
def test_bad_settings_are_named(settings: dict[str, object], key: str) -> None:
    """Settings that would weaken pseudonyms are refused, naming the key."""
    problems = PseudonymSettings(**settings).problems()  # type: ignore[arg-type]
    assert problems and key in problems[0]


def test_key_file_round_trip(tmp_path: Path) -> None:
    """keys init writes a 0600 file that loads to the same key and key id."""
    path = tmp_path / "site.key"
    key = init_key_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key_file(path).key_id == key.key_id and len(key.key_id) == 16
    assert key.secret.hex() not in repr(key)


def test_key_file_never_overwritten(tmp_path: Path) -> None:
    """An existing key is never replaced: losing it would break every pseudonym."""
    path = tmp_path / "site.key"
    init_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        init_key_file(path)
    assert path.read_bytes() == before


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    """A key others can read is refused with the fix in the message."""
    path = tmp_path / "site.key"
    init_key_file(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(path)


def test_malformed_key_file_is_refused(tmp_path: Path) -> None:
    """A file that is not a key says so, without echoing its content."""
    path = tmp_path / "site.key"
    path.write_text("SECRETWORD\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        load_key_file(path)
    assert "SECRETWORD" not in str(info.value)
