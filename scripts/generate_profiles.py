#!/usr/bin/env python3
"""Generate the DICOM PS3.15 Annex E recipes in profiles/ps3.15/ from the standard's tables.

The Basic Application Level Confidentiality Profile and each of its options are written as
`deid` recipes (the contract is profiles/README.md), so that the profiles nmip-agent applies are
a mechanical, reviewable translation of the standard rather than hand-typed lists.

Inputs are read only from data/dicom-standard/ (DICOM PS3.15 2026d, © NEMA), and are verified
before use: the PyMedPhys transcriptions must reproduce their pinned content digests, and the
normalised tables the recipes are built from must agree with them cell by cell.

    .venv/bin/python scripts/generate_profiles.py           # (re)write profiles/ps3.15/
    .venv/bin/python scripts/generate_profiles.py --check   # exit 1 if the committed files differ
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data" / "dicom-standard"
OUT_DIR = ROOT / "profiles" / "ps3.15"
SCRIPT = "scripts/generate_profiles.py"

EDITION = "2026d"
ACKNOWLEDGEMENT = f"DICOM PS3.15 {EDITION}, © NEMA"

PROFILE_TABLE = "confidentiality_profile.json"
CODES_TABLE = "action_codes.json"
SAFE_PRIVATE_TABLE = "safe_private_attributes.json"

# PyMedPhys transcriptions: table name and the SHA-256 of their `rows` as canonical JSON, as
# declared in data/dicom-standard/README.md. Pinned here so a silently edited table is caught.
SOURCES: dict[str, tuple[str, str]] = {
    "source/pymedphys/e1_1.json": (
        "PS3.15 Table E.1-1",
        "e257bc5e1cfecb3156ad3b871c43e6d73581cba6e80df460f4a4a87694e89442",
    ),
    "source/pymedphys/e1_1a.json": (
        "PS3.15 Table E.1-1a",
        "f88f2439552d2d17a3f476e602819020091619dac9ee94545855fd569d03305c",
    ),
    "source/pymedphys/e3_10_1.json": (
        "PS3.15 Table E.3.10-1",
        "7acb26dbab0e3124c02d075cbf8c5510354a20ded9f89ee4765976a905d92f63",
    ),
}
PROFILE_SOURCE = "source/pymedphys/e1_1.json"
CODES_SOURCE = "source/pymedphys/e1_1a.json"
SAFE_PRIVATE_SOURCE = "source/pymedphys/e3_10_1.json"

# Option key (the table column, as in the JSON) -> the option's name in PS3.15 E.3.
OPTIONS: dict[str, str] = {
    "retain_safe_private": "Retain Safe Private Option",
    "retain_uids": "Retain UIDs Option",
    "retain_device_identity": "Retain Device Identity Option",
    "retain_institution_identity": "Retain Institution Identity Option",
    "retain_patient_characteristics": "Retain Patient Characteristics Option",
    "retain_longitudinal_full_dates": "Retain Longitudinal Temporal Information with Full Dates Option",
    "retain_longitudinal_modified_dates": "Retain Longitudinal Temporal Information with Modified Dates Option",
    "clean_descriptors": "Clean Descriptors Option",
    "clean_structured_content": "Clean Structured Content Option",
    "clean_graphics": "Clean Graphics Option",
}

# Basic Profile code -> (action, value). The choice codes take the branch that is valid whatever
# the attribute's type in the IOD (profiles/README.md, "Codes with a choice").
BASIC_ACTIONS: dict[str, tuple[str, str | None]] = {
    "X": ("REMOVE", None),
    "Z": ("BLANK", None),
    "D": ("REPLACE", "func:dummy"),
    "U": ("REPLACE", "func:uid"),
    "X/Z": ("BLANK", None),
    "Z/D": ("REPLACE", "func:dummy"),
    "X/D": ("REPLACE", "func:dummy"),
    "X/Z/D": ("REPLACE", "func:dummy"),
    "X/Z/U*": ("REPLACE", "func:uid"),
}
OPTION_CODES = ("K", "C")
MODIFIED_DATES = "retain_longitudinal_modified_dates"
SAFE_PRIVATE = "retain_safe_private"

PRIVATE_ROW_TAG = "(gggg,eeee) where gggg is odd"
MASKED_TAGS = {
    "(50xx,xxxx)": "(50XX,XXXX)",
    "(60xx,3000)": "(60XX,3000)",
    "(60xx,4000)": "(60XX,4000)",
}
TAG_RE = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")
PRIVATE_TAG_RE = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)")
COMMENT_WIDTH = 100


class TableError(ValueError):
    """An input table is not what the generator knows how to translate."""


@dataclass(frozen=True)
class Entry:
    """One recipe action, with the comment written on the line above it."""

    sort_key: tuple[Any, ...]
    action: str
    field: str
    value: str | None
    comment: str

    def lines(self) -> list[str]:
        """Comment on its own line: deid keeps text after REMOVE/REPLACE fields as the value."""
        action = f"{self.action} {self.field}" + (f" {self.value}" if self.value else "")
        return [f"# {self.comment}"[:COMMENT_WIDTH].rstrip(), action]


@dataclass(frozen=True)
class Inputs:
    """The verified tables, and the digests recorded in every generated header."""

    profile: list[dict[str, Any]]
    safe_private: list[dict[str, Any]]
    provenance: dict[str, str]  # relative path -> "file <sha256>" or "rows <content_sha256>"


# ---------------------------------------------------------------------------- verification


def file_sha256(path: Path) -> str:
    """Digest of the bytes, recorded so a header names the exact input it was built from."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_sha256(rows: Any) -> str:
    """PyMedPhys' content digest: SHA-256 of the rows as canonical UTF-8 JSON."""
    text = json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_json(path: Path) -> Any:
    """Read a table; UTF-8 explicitly, so the result does not depend on the locale."""
    return json.loads(path.read_text(encoding="utf-8"))


def load_source(data_dir: Path, rel: str) -> list[dict[str, Any]]:
    """Load a PyMedPhys table after checking edition, table and the pinned content digest."""
    table, expected = SOURCES[rel]
    doc = load_json(data_dir / rel)
    if doc.get("edition") != EDITION or doc.get("acknowledgement") != ACKNOWLEDGEMENT:
        raise TableError(f"{rel}: edition/acknowledgement is not {ACKNOWLEDGEMENT!r}")
    if doc.get("table") != table:
        raise TableError(f"{rel}: table is {doc.get('table')!r}, expected {table!r}")
    actual = rows_sha256(doc["rows"])
    if actual != doc.get("content_sha256") or actual != expected:
        raise TableError(f"{rel}: rows digest {actual} does not match the declared {expected}")
    return doc["rows"]


def check_profile(profile: list[dict[str, Any]], source: list[dict[str, Any]]) -> None:
    """The normalised E.1-1 must carry the same cells as the digest-verified transcription."""
    if len(profile) != len(source):
        raise TableError(f"{PROFILE_TABLE}: {len(profile)} rows, source has {len(source)}")
    for row, src in zip(profile, source):
        options = {key: row[key] for key in OPTIONS if row.get(key) is not None}
        expected = (src["tag"], src["name"], src["retired"], src["in_standard_iod"],
                    src["basic_profile"], src["options"])
        actual = (row["tag"], row["name"], row["retired"], row["in_std_comp_iod"],
                  row["basic_profile"], options)
        if actual != expected:
            raise TableError(f"{PROFILE_TABLE}: row {row['tag']} differs from {PROFILE_SOURCE}")
    unknown = {key for src in source for key in src["options"]} - set(OPTIONS)
    if unknown:
        raise TableError(f"{PROFILE_SOURCE}: unknown option columns {sorted(unknown)}")


def check_codes(codes: list[dict[str, Any]], source: list[dict[str, Any]]) -> None:
    """Every code the standard defines must be one this generator maps, and no more."""
    if codes != source:
        raise TableError(f"{CODES_TABLE} differs from {CODES_SOURCE}")
    defined = {row["code"] for row in codes}
    mapped = set(BASIC_ACTIONS) | set(OPTION_CODES)
    if defined != mapped:
        raise TableError(f"action codes {sorted(defined ^ mapped)} are defined or mapped, not both")


def check_safe_private(rows: list[dict[str, Any]], source: list[dict[str, Any]]) -> None:
    """The normalised E.3.10-1 must match the transcription and its own derived columns."""
    if len(rows) != len(source):
        raise TableError(f"{SAFE_PRIVATE_TABLE}: {len(rows)} rows, source has {len(source)}")
    for row, src in zip(rows, source):
        match = PRIVATE_TAG_RE.fullmatch(row["tag"])
        if (match is None
                or {key: row[key] for key in src} != src
                or row["group"].upper() != match[1].upper()
                or row["element_offset"].upper() != match[2].upper()
                or not row["private_creator"]
                or '"' in row["private_creator"]):
            raise TableError(f"{SAFE_PRIVATE_TABLE}: row {row['tag']} {row['private_creator']!r}")


def load_inputs(data_dir: Path) -> Inputs:
    """Read and verify every table before a single recipe line is produced."""
    profile = load_json(data_dir / PROFILE_TABLE)
    codes = load_json(data_dir / CODES_TABLE)
    safe_private = load_json(data_dir / SAFE_PRIVATE_TABLE)
    check_profile(profile, load_source(data_dir, PROFILE_SOURCE))
    check_codes(codes, load_source(data_dir, CODES_SOURCE))
    check_safe_private(safe_private, load_source(data_dir, SAFE_PRIVATE_SOURCE))
    provenance = {rel: f"file {file_sha256(data_dir / rel)}"
                  for rel in (PROFILE_TABLE, CODES_TABLE, SAFE_PRIVATE_TABLE)}
    provenance |= {rel: f"rows {digest}" for rel, (_, digest) in SOURCES.items()}
    return Inputs(profile, safe_private, provenance)


# ---------------------------------------------------------------------------- translation


def field_for(tag: str) -> tuple[str, tuple[Any, ...]]:
    """Recipe field and sort key of a table tag: tags by number, then masks, then `private`."""
    if tag == PRIVATE_ROW_TAG:
        return "private", (3,)
    if tag in MASKED_TAGS:
        return MASKED_TAGS[tag], (2, MASKED_TAGS[tag])
    match = TAG_RE.fullmatch(tag)
    if match is None:
        raise TableError(f"unrecognised tag {tag!r}")
    group, element = match[1].upper(), match[2].upper()
    return f"({group},{element})", (0, int(group, 16), int(element, 16))


def label(row: dict[str, Any]) -> str:
    """Human name for comments: the keyword, or the table's name where there is none."""
    return row["keyword"] or row["name"]


def basic_entry(row: dict[str, Any]) -> Entry:
    """Basic Profile action of one row; an unknown code stops generation."""
    code = row["basic_profile"]
    if code not in BASIC_ACTIONS:
        raise TableError(f"{row['tag']}: unknown Basic Profile code {code!r}")
    action, value = BASIC_ACTIONS[code]
    field, key = field_for(row["tag"])
    return Entry(key, action, field, value, f"{label(row)} ({code})")


def option_action(option: str, code: str, tag: str) -> tuple[str, str | None]:
    """K keeps; C cleans, which for modified dates means the keyed date shift."""
    if code == "K":
        return "KEEP", None
    if code == "C":
        return "REPLACE", "func:shift_date" if option == MODIFIED_DATES else "func:clean"
    raise TableError(f"{tag}: unknown code {code!r} for option {option}")


def safe_private_entries(rows: list[dict[str, Any]]) -> list[Entry]:
    """Retain Safe Private = C on the private row: keep exactly the Table E.3.10-1 elements."""
    entries: dict[str, Entry] = {}
    for row in rows:
        group, offset = row["group"].upper(), row["element_offset"].upper()
        creator = row["private_creator"]
        field = f'({group},"{creator}",{offset})'
        comment = f"{creator} {row['tag']} {row['vr'] or '-'}: {row['meaning'] or '-'}"
        key = (1, int(group, 16), creator, int(offset, 16))
        entries.setdefault(field, Entry(key, "KEEP", field, None, comment))
    return list(entries.values())


def option_entries(option: str, inputs: Inputs) -> list[Entry]:
    """Only the rows whose cell for this option is set; the Basic Profile covers the rest."""
    entries: list[Entry] = []
    for row in inputs.profile:
        code = row[option]
        if code is None:
            continue
        if row["tag"] == PRIVATE_ROW_TAG:
            if option != SAFE_PRIVATE or code != "C":
                raise TableError(f"private row: unexpected {option} = {code!r}")
            entries.extend(safe_private_entries(inputs.safe_private))
            continue
        action, value = option_action(option, code, row["tag"])
        field, key = field_for(row["tag"])
        entries.append(Entry(key, action, field, value,
                             f"{label(row)} ({row['basic_profile']} -> {code})"))
    return entries


# ---------------------------------------------------------------------------- rendering


def header(title: str, tables: Sequence[str], inputs: Inputs, note: Sequence[str]) -> list[str]:
    """Provenance block: what was generated, from which exact inputs, under whose copyright."""
    lines = [
        f"# GENERATED by {SCRIPT} -- do not edit; regenerate instead.",
        f"# {title}",
        f"# From DICOM PS3.15 Annex E, edition {EDITION}. Tables: {ACKNOWLEDGEMENT}.",
        "# Inputs in data/dicom-standard/, SHA-256 of the file, or of the rows (content_sha256,",
        "# checked against the digest pinned in the script and the file's own):",
    ]
    lines += [f"#   {rel:<29} {inputs.provenance[rel]}" for rel in tables]
    lines += [f"# {line}" for line in note]
    return lines


def render(head: list[str], entries: list[Entry]) -> str:
    """A deid recipe: header comments, FORMAT, %header, actions in a stable order."""
    ordered = sorted(entries, key=lambda entry: entry.sort_key)
    fields = [entry.field for entry in ordered]
    if len(fields) != len(set(fields)):
        raise TableError(f"duplicate fields in {head[1]}")
    lines = head + ["", "FORMAT dicom", "", "%header", ""]
    for entry in ordered:
        lines += entry.lines()
    return "\n".join(lines) + "\n"


def basic_recipe(inputs: Inputs) -> tuple[str, int]:
    """deid.basic: one action per row of Table E.1-1."""
    head = header(
        "Basic Application Level Confidentiality Profile (Table E.1-1, Basic Profile column)",
        (PROFILE_TABLE, CODES_TABLE, PROFILE_SOURCE, CODES_SOURCE),
        inputs,
        ["Codes: X REMOVE; Z, X/Z BLANK; D, Z/D, X/D, X/Z/D REPLACE func:dummy;",
         "U, X/Z/U* REPLACE func:uid. Comments give the keyword and the code as published."],
    )
    entries = [basic_entry(row) for row in inputs.profile]
    return render(head, entries), len(entries)


def option_recipe(option: str, inputs: Inputs) -> tuple[str, int]:
    """deid.<option>: the option's cells, applied over deid.basic."""
    clean = "func:shift_date" if option == MODIFIED_DATES else "func:clean"
    tables: tuple[str, ...] = (PROFILE_TABLE, CODES_TABLE, PROFILE_SOURCE, CODES_SOURCE)
    note = [f"Table E.1-1, only the rows whose {option} cell is set.",
            "Applies over deid.basic: list it after deid.basic in a manifest.",
            f"Codes: K KEEP; C REPLACE {clean}. Comments give: keyword (basic -> option code)."]
    if option == SAFE_PRIVATE:
        tables += (SAFE_PRIVATE_TABLE, SAFE_PRIVATE_SOURCE)
        note = [f"Table E.1-1, column {option}: the private-attributes row is C, that is,",
                "keep the Safe Private Attributes of Table E.3.10-1, by group, private creator",
                "and element low byte; deid.basic's REMOVE private still removes every other",
                "private attribute. Applies over deid.basic: list it after deid.basic."]
    head = header(OPTIONS[option], tables, inputs, note)
    entries = option_entries(option, inputs)
    return render(head, entries), len(entries)


def readme(counts: dict[str, int]) -> str:
    """profiles/ps3.15/README.md: what these files are, where from, and their sizes."""
    lines = [
        "# PS3.15 Annex E recipes (generated)",
        "",
        f"These `deid` recipes are generated by `{SCRIPT}` from the standard's tables in",
        "`data/dicom-standard/` (Table E.1-1 `confidentiality_profile.json`, Table E.1-1a",
        "`action_codes.json`, Table E.3.10-1 `safe_private_attributes.json`, each verified against",
        "the digest-pinned PyMedPhys transcriptions in `data/dicom-standard/source/`). Do not edit",
        "them: regenerate with `.venv/bin/python scripts/generate_profiles.py`; a test fails when",
        "they differ from what the script generates (`--check`). The recipe format is described in",
        f"`profiles/README.md`. Tables from {ACKNOWLEDGEMENT}.",
        "",
        "| file | actions |",
        "| --- | ---: |",
    ]
    lines += [f"| `{name}` | {count} |" for name, count in counts.items()]
    return "\n".join(lines) + "\n"


def generate(data_dir: Path = DATA_DIR) -> dict[str, str]:
    """Every output file name -> its content; nothing is written here."""
    inputs = load_inputs(data_dir)
    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    files["deid.basic"], counts["deid.basic"] = basic_recipe(inputs)
    for option in OPTIONS:
        name = f"deid.{option}"
        files[name], counts[name] = option_recipe(option, inputs)
    files["README.md"] = readme(counts)
    return files


# ---------------------------------------------------------------------------- command line


def differing(files: dict[str, str], out_dir: Path) -> list[str]:
    """Names of generated files that are missing or different on disk, and stale deid.* files."""
    names = [name for name, text in files.items()
             if not (out_dir / name).is_file()
             or (out_dir / name).read_bytes() != text.encode("utf-8")]
    stale = sorted(path.name for path in out_dir.glob("deid.*") if path.name not in files)
    return names + stale


def write(files: dict[str, str], out_dir: Path) -> None:
    """Write with LF line endings and UTF-8 whatever the platform, so --check is exact."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_bytes(text.encode("utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    """Write the recipes, or with --check report whether the committed ones are current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1, listing the files, if the output directory is not current")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,
                        help="tables to read (default: data/dicom-standard)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR,
                        help="recipes to write or check (default: profiles/ps3.15)")
    args = parser.parse_args(argv)
    try:
        files = generate(args.data_dir)
    except TableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        stale = differing(files, args.out_dir)
        for name in stale:
            print(f"out of date: {args.out_dir / name}", file=sys.stderr)
        return 1 if stale else 0
    write(files, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
