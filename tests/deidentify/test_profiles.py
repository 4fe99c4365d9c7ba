"""Profiles: manifests that compose the standard's recipes, and every way one can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.deidentify import load_profile
from agent.deidentify.plan import Op, compile_plan
from agent.deidentify.profile import PROFILES_DIR
from agent.errors import ProfileError

BASIC = str(PROFILES_DIR / "ps3.15" / "deid.basic")


def manifest(tmp_path: Path, body: str, recipe: str | None = None) -> str:
    if recipe is not None:
        (tmp_path / "deid.site").write_text(recipe)
    path = tmp_path / "site.yaml"
    path.write_text(body)
    return str(path)


def test_shipped_profiles_load() -> None:
    """basic and nccid load, with the options the issue names, in the order they apply."""
    assert load_profile("basic").options == ()
    assert load_profile("nccid").options == (
        "retain_patient_characteristics", "retain_device_identity", "retain_safe_private", "clean_descriptors",
        "retain_longitudinal_modified_dates",
    )


def test_later_recipe_overrides_earlier() -> None:
    """For one attribute, a later line wins; an exact tag beats a mask, a creator beats `private`."""
    plan = compile_plan([
        ("a", [{"action": "REMOVE", "field": "(0010,0010)"}, {"action": "REMOVE", "field": "private"},
               {"action": "REMOVE", "field": "(60XX,XXXX)"}]),
        ("b", [{"action": "KEEP", "field": "(0010,0010)"}, {"action": "KEEP", "field": '(0019,"ACME 1",23)'},
               {"action": "KEEP", "field": "(6000,0010)"}]),
    ])  # fmt: skip
    assert plan.public_action(0x00100010).op is Op.KEEP
    assert plan.private_action(0x00191023, "ACME 1").op is Op.KEEP
    assert plan.private_action(0x00191024, "ACME 1").op is Op.REMOVE
    assert plan.private_action(0x00191023, "OTHER").op is Op.REMOVE
    assert plan.public_action(0x60000010).op is Op.KEEP and plan.public_action(0x60020010).op is Op.REMOVE
    assert plan.keeps_private_block(0x0019, "ACME 1") and not plan.keeps_private_block(0x0019, "OTHER")


@pytest.mark.parametrize(
    ("body", "recipe", "message"),
    [
        ("name: x\nrecipes: [" + BASIC + "]\ncolour: red\n", None, "unknown key(s) ['colour']"),
        ("name: x\nrecipes: [deid.site]\n", "FORMAT dicom\n%header\nKEEP (0010,0010)\n", "must start with ps3.15/deid.basic"),
        ("name: x\nrecipes: [" + BASIC + ", missing.deid]\n", None, "missing.deid does not exist"),
        ("name: x\nrecipes: [" + BASIC + "]\npseudonym: {length: 3}\n", None, "pseudonym.length"),
        ("name: x\nrecipes: [" + BASIC + "]\npseudonym: {date_shift_days: {min: -5, max: 5}}\n", None, "date_shift_days"),
        ("name: x\nrecipes: [" + BASIC + "]\nsop_classes: [Not A Class]\n", None, "sop_classes"),
        ("name: x\nrecipes: [" + BASIC + ", deid.site]\n", "FORMAT dicom\n%header\nREPLACE (0010,0010) func:nope\n", "unknown function func:nope"),
        ("name: x\nrecipes: [" + BASIC + ", deid.site]\n", "FORMAT dicom\n%header\nKEEP startswith:Patient\n", "is not a tag"),
        ("name: x\nrecipes: [" + BASIC + ", deid.site]\n", "FORMAT dicom\n%header\nJITTER (0008,0020) 3\n", "not supported"),
        ("name: x\nrecipes: [" + BASIC + ", " + str(PROFILES_DIR / "ps3.15" / "deid.retain_longitudinal_full_dates")
         + ", " + str(PROFILES_DIR / "ps3.15" / "deid.retain_longitudinal_modified_dates") + "]\n", None, "exclude each other"),
        ("- just\n- a list\n", None, "expected a mapping"),
        ("name: [unclosed\n", None, "not valid YAML"),
    ],
)  # fmt: skip
def test_bad_profiles_name_file_and_key(tmp_path: Path, body: str, recipe: str | None, message: str) -> None:
    """A wrong profile stops with the file and the key or line at fault."""
    path = manifest(tmp_path, body, recipe)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert message in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_unknown_profile_lists_shipped_ones() -> None:
    """An unknown profile name says which profiles exist."""
    with pytest.raises(ProfileError, match="basic, nccid"):
        load_profile("no-such-profile")


def test_keywords_are_accepted_as_a_convenience(tmp_path: Path) -> None:
    """A site recipe may name a dictionary attribute by keyword; it compiles to its tag."""
    path = manifest(tmp_path, f"name: x\nrecipes: [{BASIC}, deid.site]\n", "FORMAT dicom\n%header\nKEEP PatientSex\n")
    assert load_profile(path).plan.public_action(0x00100040).op is Op.KEEP


def test_add_sets_an_attribute_absent_from_the_source(compose, run) -> None:  # type: ignore[no-untyped-def]
    """ADD puts a programme's attribute in every output, present in the source or not."""
    from tests.conftest import output_of
    from tests.synthetic import Patient, make_ct_slice

    profile = compose(site_recipe="ADD (0012,0010) NCCID")
    out = output_of(run(make_ct_slice(Patient(), plant=False), profile))
    assert out.ClinicalTrialSponsorName == "NCCID"
