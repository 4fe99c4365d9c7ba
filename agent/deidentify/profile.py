"""Profiles: a YAML manifest naming deid recipes in order, compiled once into a `Plan`.

The manifest is where a programme states what it accepts and how its pseudonyms look; the
recipes say what happens to each attribute. See profiles/README.md.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydicom._uid_dict import UID_dictionary

from agent.deidentify.plan import Plan, RecipeLineError, compile_plan
from agent.deidentify.pseudonym import PseudonymSettings
from agent.deidentify.regions import RegionRule, load as load_region_rules
from agent.deidentify.scope import ExclusionRule, parse_rules
from agent.errors import ProfileError

#: Where `--profile NAME` looks; NMIP_AGENT_PROFILES points elsewhere (a site's own folder).
PROFILES_DIR = Path(os.environ.get("NMIP_AGENT_PROFILES", Path(__file__).resolve().parents[2] / "profiles"))

STANDARD_DIR = "ps3.15"
BASIC = "basic"
EDITION = "2026d"

#: PS3.16 CID 7050 "De-identification Method": the code for the Basic Profile and each option.
METHOD_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_longitudinal_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

_MANIFEST_KEYS = {"name", "version", "description", "recipes", "pseudonym", "sop_classes", "vocabulary", "exclude",
                  "pixels", "optout"}
_PIXEL_KEYS = {"rules", "ocr"}
_OCR_KEYS = {"frames", "timeout_s"}
#: A storage SOP class's name: "... Storage", or "... Storage - For Presentation" (DX, MG, IO).
_STORAGE_CLASS = re.compile(r"Storage( - For (Presentation|Processing))?$")
_PSEUDONYM_KEYS = {"prefix", "length", "date_shift_days"}
#: SOP class name -> its UIDs: a name can have two (a retired and a current Ultrasound, Nuclear
#: Medicine or Ultrasound Multi-frame Image Storage), and a profile that names it takes both.
_STORAGE_NAMES: dict[str, set[str]] = {}
for _uid, _info in UID_dictionary.items():
    if _info[1] == "SOP Class":
        _STORAGE_NAMES.setdefault(_info[0], set()).add(_uid)


@dataclass(frozen=True)
class PixelSettings:
    """What a profile does about burned-in text: region rules, and OCR for at-risk images."""

    rules: tuple[RegionRule, ...] = ()
    files: tuple[Path, ...] = ()  # the rule files, for the fingerprint
    ocr: bool = False
    ocr_frames: int = 8  # frames read per instance: the first, the last and evenly between
    ocr_timeout_s: float = 60.0  # per frame; a frame OCR cannot read in time refuses the instance

    @property
    def active(self) -> bool:
        return bool(self.rules) or self.ocr


@dataclass(frozen=True)
class Profile:
    """A loaded profile: its identity, its compiled plan and the programme's settings."""

    name: str
    version: str
    description: str
    manifest: Path
    recipes: tuple[Path, ...]
    options: tuple[str, ...]
    plan: Plan
    pseudonym: PseudonymSettings
    sop_classes: frozenset[str]
    vocabulary: frozenset[str] = frozenset()  # the site's words, added to the shipped imaging vocabulary
    exclude: tuple[ExclusionRule, ...] = ()  # header matches that put an accepted instance out of scope
    fingerprint: str = ""  # SHA-256 of the manifest and recipe files as loaded: workers check they load the same
    pixels: PixelSettings = PixelSettings()
    optout_required: bool = False  # `optout: required`: nothing is delivered without a current opt-out list

    @property
    def method_codes(self) -> list[tuple[str, str]]:
        """The CID 7050 codes of the Basic Profile and the options applied, in that order."""
        return [METHOD_CODES[BASIC]] + [METHOD_CODES[o] for o in self.options]

    @property
    def dates_kept(self) -> bool:
        return "retain_longitudinal_full_dates" in self.options

    @property
    def dates_shifted(self) -> bool:
        return "retain_longitudinal_modified_dates" in self.options

    @property
    def uids_kept(self) -> bool:
        return "retain_uids" in self.options

    @property
    def institution_kept(self) -> bool:
        return "retain_institution_identity" in self.options


def resolve(name_or_path: str) -> Path:
    """`nccid` -> profiles/nccid.yaml; a path to a .yaml file is taken as it is."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return PROFILES_DIR / f"{name_or_path}.yaml"


def available() -> list[str]:
    """Names of the profiles shipped in the profiles folder."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load(name_or_path: str) -> Profile:
    """Load and compile a profile; every problem is a ProfileError naming the file and key."""
    manifest = resolve(name_or_path)
    if not manifest.is_file():
        known = ", ".join(available()) or "none"
        raise ProfileError(f"profile {name_or_path!r}: no such profile ({manifest}); shipped profiles: {known}")
    try:
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(f"{manifest}: not valid YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{manifest}: expected a mapping with keys {sorted(_MANIFEST_KEYS)}")
    unknown = set(data) - _MANIFEST_KEYS
    if unknown:
        raise ProfileError(f"{manifest}: unknown key(s) {sorted(unknown)}; expected {sorted(_MANIFEST_KEYS)}")
    name = _string(data, "name", manifest)
    recipe_names = data.get("recipes")
    if not isinstance(recipe_names, list) or not recipe_names or not all(isinstance(r, str) for r in recipe_names):
        raise ProfileError(f"{manifest}: recipes: a list of recipe files, relative to {manifest.parent}")
    recipes = tuple(manifest.parent / r for r in recipe_names)
    options = _options(recipe_names, manifest)
    plan = _compile(recipes, manifest)
    pixels = _pixels(data.get("pixels"), manifest)
    return Profile(
        name=name,
        version=str(data.get("version", "0")),
        description=str(data.get("description", "")).strip(),
        manifest=manifest,
        recipes=recipes,
        options=options,
        plan=plan,
        pseudonym=_pseudonym(data.get("pseudonym") or {}, manifest),
        sop_classes=_sop_classes(data.get("sop_classes", "all-storage"), manifest),
        vocabulary=_vocabulary(data.get("vocabulary", []), manifest),
        exclude=parse_rules(data.get("exclude"), manifest),
        fingerprint=_fingerprint(manifest, recipes + pixels.files, data.get("vocabulary", [])),
        pixels=pixels,
        optout_required=_optout(data.get("optout"), manifest),
    )


def optout_required(name_or_path: str) -> bool:
    """The profile's `optout:` alone, without compiling it (for `status` and /readyz); a profile
    that does not load says required, so a broken one never lifts the rule."""
    try:
        data = yaml.safe_load(resolve(name_or_path).read_text(encoding="utf-8"))
        return _optout(data.get("optout") if isinstance(data, dict) else None, resolve(name_or_path))
    except (OSError, yaml.YAMLError, ProfileError):
        return True


def _optout(value: Any, manifest: Path) -> bool:
    """`optout: required` (or `optional`, the default when the key is absent)."""
    if value is None or value == "optional":
        return False
    if value == "required":
        return True
    raise ProfileError(f"{manifest}: optout: `required` or `optional` expected")


def _fingerprint(manifest: Path, recipes: tuple[Path, ...], vocabulary: Any) -> str:
    digest = hashlib.sha256()
    words = [manifest.parent / v for v in vocabulary] if isinstance(vocabulary, list) else []
    for path in (manifest, *recipes, *words):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _string(data: dict[str, Any], key: str, manifest: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{manifest}: {key}: a non-empty string")
    return value.strip()


def _options(recipe_names: list[str], manifest: Path) -> tuple[str, ...]:
    """The PS3.15 options applied, read from the standard recipes the manifest lists."""
    standard = [Path(r).name.removeprefix("deid.") for r in recipe_names if Path(r).parent.name == STANDARD_DIR]
    if not standard or standard[0] != BASIC:
        raise ProfileError(f"{manifest}: recipes: must start with {STANDARD_DIR}/deid.{BASIC} (the Basic Profile)")
    options = tuple(s for s in standard[1:])
    for option in options:
        if option not in METHOD_CODES:
            raise ProfileError(f"{manifest}: recipes: {STANDARD_DIR}/deid.{option} is not a PS3.15 option")
    if {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"} <= set(options):
        raise ProfileError(f"{manifest}: recipes: the two Retain Longitudinal options exclude each other (PS3.15 E.3.6)")
    return options


def _parse_recipe(path: Path) -> list[Mapping[str, str]]:
    """The header actions of one recipe."""
    recipe = parse_deid(path)
    if recipe.deid is None:
        raise ProfileError(f"{path}: empty recipe (expected FORMAT dicom and a %header section)")
    return [dict(line) for line in recipe.get_actions()]


def parse_deid(path: Path) -> Any:
    """Parse one deid file (a DeidRecipe), turning its exits and chatter into a ProfileError."""
    from deid.config import DeidRecipe  # deferred: deid's import is slow and only needed here
    from deid.logger import bot

    # deid's logger binds sys.stdout/stderr when imported and prints every line it parses.
    sink = io.StringIO()
    streams = bot.outputStream, bot.errorStream
    bot.outputStream = bot.errorStream = sink
    try:
        with redirect_stdout(sink), redirect_stderr(sink):
            recipe = DeidRecipe(str(path), base=False)
    except SystemExit:
        detail = sink.getvalue().strip().splitlines()
        raise ProfileError(f"{path}: deid cannot parse this recipe: {detail[-1] if detail else 'no detail'}") from None
    finally:
        bot.outputStream, bot.errorStream = streams
    return recipe


def _pixels(section: Any, manifest: Path) -> PixelSettings:
    """`pixels: {rules: [FILE or {file: FILE, modality: [..]}], ocr: {frames: N} or false}`."""
    if section is None:
        return PixelSettings()
    where = f"{manifest}: pixels"
    if not isinstance(section, dict) or set(section) - _PIXEL_KEYS:
        raise ProfileError(f"{where}: a mapping with keys {sorted(_PIXEL_KEYS)}")
    rules: list[RegionRule] = []
    files: list[Path] = []
    for entry in section.get("rules") or []:
        if isinstance(entry, str):
            entry = {"file": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or set(entry) - {"file", "modality"}:
            raise ProfileError(f"{where}: rules: each a file name, or {{file: NAME, modality: [US, ...]}}")
        path = manifest.parent / entry["file"]
        if not path.is_file():
            raise ProfileError(f"{where}: rules: {path} does not exist")
        modality = entry.get("modality") or []
        modality = [modality] if isinstance(modality, str) else modality
        if not isinstance(modality, list) or not all(isinstance(m, str) and m.strip() for m in modality):
            raise ProfileError(f"{where}: rules: {entry['file']}: modality: a modality or a list of them")
        rules.extend(load_region_rules(path, frozenset(m.strip().upper() for m in modality)))
        files.append(path)
    ocr = section.get("ocr", False)
    if ocr in (False, None):
        return PixelSettings(tuple(rules), tuple(files))
    if ocr is True:
        ocr = {}
    if not isinstance(ocr, dict) or set(ocr) - _OCR_KEYS:
        raise ProfileError(f"{where}: ocr: false, true, or a mapping with keys {sorted(_OCR_KEYS)}")
    frames, timeout = ocr.get("frames", 8), ocr.get("timeout_s", 60)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise ProfileError(f"{where}: ocr: frames: a whole number of frames, 1 or more")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ProfileError(f"{where}: ocr: timeout_s: a number of seconds above 0")
    return PixelSettings(tuple(rules), tuple(files), True, frames, float(timeout))


def _compile(recipes: tuple[Path, ...], manifest: Path) -> Plan:
    parsed = []
    for path in recipes:
        if not path.is_file():
            raise ProfileError(f"{manifest}: recipes: {path} does not exist")
        parsed.append((path.name, _parse_recipe(path)))
    try:
        return compile_plan(parsed)
    except RecipeLineError as exc:
        raise ProfileError(f"{manifest}: {exc}") from None


def _pseudonym(section: Any, manifest: Path) -> PseudonymSettings:
    if not isinstance(section, dict) or set(section) - _PSEUDONYM_KEYS:
        raise ProfileError(f"{manifest}: pseudonym: a mapping with keys {sorted(_PSEUDONYM_KEYS)}")
    shift = section.get("date_shift_days", {})
    if not isinstance(shift, dict) or set(shift) - {"min", "max"}:
        raise ProfileError(f"{manifest}: pseudonym.date_shift_days: a mapping with keys min and max")
    defaults = PseudonymSettings()
    try:
        settings = PseudonymSettings(
            prefix=str(section.get("prefix", defaults.prefix)),
            length=int(section.get("length", defaults.length)),
            date_shift_min_days=int(shift.get("min", defaults.date_shift_min_days)),
            date_shift_max_days=int(shift.get("max", defaults.date_shift_max_days)),
        )
    except (TypeError, ValueError):
        raise ProfileError(f"{manifest}: pseudonym: length and date_shift_days must be integers") from None
    problems = settings.problems()
    if problems:
        raise ProfileError(f"{manifest}: {problems[0]}")
    return settings


def _vocabulary(value: Any, manifest: Path) -> frozenset[str]:
    """Words a site adds to the imaging vocabulary: files of one word a line, beside the manifest."""
    from agent.detectors.lexicon import load_words

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{manifest}: vocabulary: a list of word files, relative to {manifest.parent}")
    words: set[str] = set()
    for name in value:
        path = manifest.parent / name
        if not path.is_file():
            raise ProfileError(f"{manifest}: vocabulary: {path} does not exist")
        try:
            words |= load_words(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{manifest}: vocabulary: {path} cannot be read ({type(exc).__name__})") from None
    return frozenset(words)


def _sop_classes(value: Any, manifest: Path) -> frozenset[str]:
    """Accepted SOP classes: UIDs or pydicom names; `all-storage` is every storage class pydicom knows."""
    if value == "all-storage":  # every class but encapsulated documents: nothing can clean a PDF's text
        return frozenset(uid for name, uids in _STORAGE_NAMES.items()
                         if _STORAGE_CLASS.search(name) and not name.startswith("Encapsulated") for uid in uids)
    if not isinstance(value, list) or not value:
        raise ProfileError(f"{manifest}: sop_classes: 'all-storage' or a list of SOP Class UIDs or names")
    out = set()
    for item in value:
        text = str(item).strip()
        uids = _STORAGE_NAMES.get(text, {text})
        if any(uid not in UID_dictionary or UID_dictionary[uid][1] != "SOP Class" for uid in uids):
            raise ProfileError(f"{manifest}: sop_classes: {text!r} is not a SOP Class UID or name pydicom knows")
        out |= uids
    return frozenset(out)
