"""docs/clinical.md says what the agent does: its example schema, file and output are checked here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agent.clinical import parse_schema
from agent.deidentify.pseudonym import Pseudonymiser
from tests.clinical.conftest import table

DOC = Path(__file__).resolve().parents[2] / "docs" / "clinical.md"


def blocks() -> list[str]:
    return [body for _, body in re.findall(r"```(\w*)\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)]


def test_documented_example_gives_the_documented_output(pseudonyms: Pseudonymiser) -> None:
    """The full example schema parses, and the example file gives exactly the example output."""
    config = yaml.safe_load(next(b for b in blocks() if b.startswith("clinical:")))
    schema = parse_schema(config["clinical"]["schema"], Path("config.yaml"))
    source = next(b for b in blocks() if b.startswith("Hospital Number,"))
    output = next(b for b in blocks() if b.startswith("patient_pseudonym,"))
    result = table(source, schema, pseudonyms)
    assert result.refused is None and result.rejects == []
    assert result.csv.decode("utf-8").replace("\r\n", "\n") == output


def test_documented_rejects_report_matches_the_table_tests() -> None:
    """The report example lists problems worded as the agent words them."""
    report = next(b for b in blocks() if b.startswith("row,column,problem\n3,"))
    assert "not one of the allowed values (M, F, U)" in report
    assert "9 fields where the header has 8" in report
