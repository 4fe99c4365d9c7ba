"""What a new operator meets in the first hour: folders to dry-run, plain help, empty answers."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cli.helpers import make_key, nmip, sample


def test_check_takes_a_folder_recursively_with_a_summary(tmp_path: Path) -> None:
    key = make_key(tmp_path / "key")
    folder = tmp_path / "export"
    (folder / "series2").mkdir(parents=True)
    shutil.copy(sample("CT_small.dcm"), folder / "a.dcm")
    shutil.copy(sample("MR_small.dcm"), folder / "series2" / "b.dcm")
    shown = nmip("check", folder, "--profile", "nccid", "--key-file", key, cwd=tmp_path)
    assert shown.returncode == 0, shown.output
    assert "Is a directory" not in shown.output
    assert "2 file(s): 2 pass" in shown.stdout
    as_json = nmip("check", folder, "--profile", "nccid", "--key-file", key, "--json", cwd=tmp_path)
    data = as_json.json()
    assert [Path(f["file"]).name for f in data["files"]] == ["a.dcm", "b.dcm"]
    assert data["summary"] == {"files": 2, "verdicts": {"pass": 2}, "reasons": {}}


def test_flags_show_no_bool_placeholder_in_help(tmp_path: Path) -> None:
    shown = nmip("check", "--help", cwd=tmp_path)
    assert shown.returncode == 0 and "--json" in shown.stdout
    assert "<bool>" not in shown.stdout
