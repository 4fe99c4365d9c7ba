"""Fixtures shared by the suite: a site key, profiles (shipped or composed), and a processor."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.deidentify import load_profile
from agent.deidentify.profile import PROFILES_DIR, Profile
from agent.keys import SiteKey
from agent.process import InstanceProcessor, Outcome

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def site_key() -> SiteKey:
    return SiteKey(bytes(range(32)))


@pytest.fixture(scope="session")
def other_key() -> SiteKey:
    return SiteKey(bytes(range(32, 64)))


_profiles: dict[str, Profile] = {}


def shipped(name: str) -> Profile:
    if name not in _profiles:
        _profiles[name] = load_profile(name)
    return _profiles[name]


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def compose(tmp_path: Path) -> Callable[..., Profile]:
    """A profile of the Basic Profile plus `options`, then an optional site recipe text."""

    def build(*options: str, site_recipe: str | None = None, sop_classes: str = "all-storage") -> Profile:
        recipes = [str(PROFILES_DIR / "ps3.15" / "deid.basic")]
        recipes += [str(PROFILES_DIR / "ps3.15" / f"deid.{option}") for option in options]
        if site_recipe is not None:
            (tmp_path / "deid.site").write_text("FORMAT dicom\n\n%header\n\n" + site_recipe + "\n")
            recipes.append("deid.site")
        manifest = tmp_path / "composed.yaml"
        lines = ["name: composed", "version: '1'", "recipes:"] + [f"  - {r}" for r in recipes]
        manifest.write_text("\n".join(lines) + f"\nsop_classes: {sop_classes}\n")
        return load_profile(str(manifest))

    return build


@pytest.fixture
def run(site_key: SiteKey) -> Callable[..., Outcome]:
    """De-identify a dataset (or a file, as it is) with a profile through every stage, gate included."""
    processors: dict[int, InstanceProcessor] = {}

    def process(ds: Dataset | Path, profile: str | Profile = "nccid", *, record: bool = False, key: SiteKey | None = None) -> Outcome:
        chosen = shipped(profile) if isinstance(profile, str) else profile
        k = key or site_key
        cache_key = hash((id(chosen), k.secret))
        if cache_key not in processors:
            processors[cache_key] = InstanceProcessor(chosen, k)
        data = ds.read_bytes() if isinstance(ds, Path) else encode(ds)
        return processors[cache_key].process(data, "test", record=record)

    return process


@pytest.fixture
def run_bytes(site_key: SiteKey) -> Callable[..., Outcome]:
    """Run a file's bytes as they are (damaged ones included) through every stage, gate included."""

    def process(data: bytes, profile: str | Profile = "nccid") -> Outcome:
        chosen = shipped(profile) if isinstance(profile, str) else profile
        return InstanceProcessor(chosen, site_key).process(data, "test")

    return process


def output_of(outcome: Outcome) -> Dataset:
    """The released dataset, parsed back from the bytes that would leave."""
    assert outcome.status == "passed", outcome.refusal
    assert outcome.encoded is not None
    return dcmread(io.BytesIO(outcome.encoded))
