"""The PS3.15 Annex E recipes in profiles/ps3.15/ are current, parse with deid, and follow the standard."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from deid.config import DeidRecipe

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "generate_profiles.py"
DATA_DIR = ROOT / "data" / "dicom-standard"
OUT_DIR = ROOT / "profiles" / "ps3.15"
OPTIONS = [
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
]
RECIPES = ["deid.basic"] + [f"deid.{option}" for option in OPTIONS]
FUNCS = {"func:dummy", "func:uid", "func:clean", "func:shift_date"}

Actions = dict[str, dict[str, dict[str, Any]]]


def load_generator() -> ModuleType:
    """Import scripts/generate_profiles.py by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("generate_profiles", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def parsed() -> dict[str, list[dict[str, Any]]]:
    return {name: DeidRecipe([str(OUT_DIR / name)], base=False).get_actions() for name in RECIPES}


@pytest.fixture(scope="module")
def by_field(parsed: dict[str, list[dict[str, Any]]]) -> Actions:
    return {name: {action["field"]: action for action in actions} for name, actions in parsed.items()}


def readme_counts() -> dict[str, int]:
    """Expected action counts, read from the tables' own README (data/dicom-standard/README.md)."""
    text = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    counts = {"deid.basic": int(re.search(r"^(\d+) attributes;", text, re.M)[1])}
    for option in OPTIONS:
        counts[f"deid.{option}"] = int(re.search(rf"^\| {option} \| (\d+) ", text, re.M)[1])
    rows = json.loads((DATA_DIR / "safe_private_attributes.json").read_text(encoding="utf-8"))
    keys = {(r["group"].upper(), r["private_creator"], r["element_offset"].upper()) for r in rows}
    counts["deid.retain_safe_private"] = len(keys)
    return counts


def test_committed_recipes_equal_generator_output(generator: ModuleType) -> None:
    """Every file in profiles/ps3.15/ is byte-identical to what the generator produces now."""
    files = generator.generate(DATA_DIR)
    assert sorted(files) == sorted(["README.md", *RECIPES])
    for name, text in files.items():
        assert (OUT_DIR / name).read_bytes() == text.encode("utf-8"), f"{name}: regenerate"


def test_check_flag_passes_on_committed_and_fails_on_edited(tmp_path: Path) -> None:
    """--check exits 0 on the committed files and 1, naming the file, after a hand edit."""
    ok = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    out = tmp_path / "ps3.15"
    shutil.copytree(OUT_DIR, out)
    with (out / "deid.clean_graphics").open("a", encoding="utf-8") as recipe:
        recipe.write("KEEP (0010,0010)\n")
    bad = subprocess.run([sys.executable, str(SCRIPT), "--check", "--out-dir", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "deid.clean_graphics" in bad.stderr and "deid.basic" not in bad.stderr


def test_generator_refuses_a_table_edited_after_verification(generator: ModuleType,
                                                             tmp_path: Path) -> None:
    """A normalised table that no longer matches the digest-pinned source stops generation."""
    data = tmp_path / "dicom-standard"
    shutil.copytree(DATA_DIR, data)
    path = data / "confidentiality_profile.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    rows[0]["basic_profile"] = "K"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(generator.TableError):
        generator.generate(data)


def test_unknown_codes_fail_loudly(generator: ModuleType) -> None:
    """A code outside the documented mapping raises instead of producing a guess."""
    row = {"tag": "(0010,0010)", "keyword": "PatientName", "name": "Patient's Name",
           "basic_profile": "K"}
    with pytest.raises(generator.TableError):
        generator.basic_entry(row)
    with pytest.raises(generator.TableError):
        generator.option_action("retain_uids", "X", "(0008,0018)")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_to_plain_actions(name: str, parsed: dict[str, list[dict[str, Any]]]) -> None:
    """deid parses every action line to exactly {action, field[, value=func:...]}, none skipped."""
    lines = (OUT_DIR / name).read_text(encoding="utf-8").splitlines()
    action_lines = [line for line in lines
                    if line.strip() and not line.startswith(("#", "FORMAT", "%"))]
    assert len(parsed[name]) == len(action_lines)
    for action in parsed[name]:
        if action["action"] == "REPLACE":
            assert set(action) == {"action", "field", "value"}, action
            assert action["value"] in FUNCS, action
        else:
            assert action["action"] in {"REMOVE", "BLANK", "KEEP"}, action
            assert set(action) == {"action", "field"}, action


def test_action_counts_match_the_tables_readme(parsed: dict[str, list[dict[str, Any]]]) -> None:
    """Each recipe has one action per non-empty cell, as counted in data/dicom-standard/README.md."""
    assert {name: len(actions) for name, actions in parsed.items()} == readme_counts()


@pytest.mark.parametrize(("recipe", "field", "action", "value"), [
    ("deid.basic", "(0010,0010)", "BLANK", None),
    ("deid.basic", "(0010,0020)", "REPLACE", "func:dummy"),
    ("deid.basic", "(0008,0018)", "REPLACE", "func:uid"),
    ("deid.basic", "(0010,0030)", "BLANK", None),
    ("deid.basic", "private", "REMOVE", None),
    ("deid.basic", "(60XX,3000)", "REMOVE", None),
    ("deid.basic", "(50XX,XXXX)", "REMOVE", None),
    ("deid.basic", "(0008,0080)", "REPLACE", "func:dummy"),
    ("deid.basic", "(0008,2112)", "REPLACE", "func:uid"),
    ("deid.retain_patient_characteristics", "(0010,0040)", "KEEP", None),
    ("deid.retain_patient_characteristics", "(0038,0500)", "REPLACE", "func:clean"),
    ("deid.retain_longitudinal_modified_dates", "(0008,0020)", "REPLACE", "func:shift_date"),
    ("deid.retain_longitudinal_full_dates", "(0008,0020)", "KEEP", None),
    ("deid.retain_uids", "(0008,0018)", "KEEP", None),
    ("deid.retain_safe_private", '(0019,"GEMS_ACQU_01",23)', "KEEP", None),
    ("deid.retain_safe_private", '(7E01,"HOLOGIC, Inc.",01)', "KEEP", None),
    ("deid.retain_safe_private", '(2001,"Philips Imaging DD 001",0A)', "KEEP", None),
])
def test_spot_checks_against_the_standard(by_field: Actions, recipe: str, field: str,
                                          action: str, value: str | None) -> None:
    """Known Table E.1-1 / E.3.10-1 cells come out as the contract's action."""
    assert by_field[recipe][field].get("action") == action
    assert by_field[recipe][field].get("value") == value


def test_safe_private_recipe_keeps_only_listed_elements(by_field: Actions) -> None:
    """Retain Safe Private holds creator-specific KEEPs only, not a blanket rule on `private`."""
    fields = by_field["deid.retain_safe_private"]
    assert "private" not in fields
    assert all(a["action"] == "KEEP" and a["field"].count('"') == 2 for a in fields.values())


def test_cells_no_option_sets_stay_basic(by_field: Actions) -> None:
    """Digital Signature UID and Patient's Birth Date have no option cell, so no option lists them."""
    for name in RECIPES[1:]:
        assert "(0400,0100)" not in by_field[name]
        assert "(0010,0030)" not in by_field[name]
