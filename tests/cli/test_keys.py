"""`nmip-agent keys`: the site's secret key is created once, private, and never overwritten."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

from tests.cli.helpers import nmip, sample


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
