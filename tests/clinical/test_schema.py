"""parse_schema: every wrong key or value stops start-up with the file, the key path and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config
from agent.clinical import ColumnType, parse_schema
from agent.config import ConfigError
from tests.clinical.conftest import SCHEMA, schema_from

ID = "patient_id: {column: mrn, issuer: RXX01}\n"


def test_suggested_schema_parses(tmp_path: Path) -> None:
    """The issue's schema gives typed columns in order, and the dropped ones apart."""
    schema = schema_from(SCHEMA)
    assert schema.output_header == ("patient_pseudonym", "admission_date", "age", "sex", "crp_mg_l", "outcome")
    assert [c.type for c in schema.columns] == [ColumnType.DATE, ColumnType.INTEGER, ColumnType.CODE,
                                                ColumnType.NUMBER, ColumnType.CODE]
    assert [(c.name, c.identifying) for c in schema.dropped] == [("gp_notes", False), ("surname", True)]


def test_error_names_the_config_file_and_key(tmp_path: Path) -> None:
    """Loaded from a real config file, a wrong range names that file and clinical.schema.columns.age.range."""
    path = tmp_path / "config.yaml"
    path.write_text("clinical:\n  schema:\n    patient_id: {column: mrn, issuer: RXX01}\n"
                    "    columns:\n      age: {type: integer, range: old}\n")
    loaded = config.load(path)
    with pytest.raises(ConfigError) as caught:
        parse_schema(loaded.clinical.schema, loaded.source)
    assert str(caught.value) == f"{path}: clinical.schema.columns.age.range: two numbers [low, high], got 'old'"


@pytest.mark.parametrize(("text", "message"), [
    ("[]", "clinical.schema: a mapping with patient_id and columns (see docs/clinical.md), got []"),
    ("columns: {}", "clinical.schema.patient_id: required"),
    ("patient_id: {column: mrn}", "clinical.schema.patient_id.issuer: required"),
    (ID + "colums: {}", "clinical.schema.colums: unknown key; expected one of patient_id, columns, encoding,"
     " missing_values"),
    ("patient_id: {column: mrn, issuer: RXX01, pattern: '[a-'}",
     "clinical.schema.patient_id.pattern: a regular expression (unterminated character set), got '[a-'"),
    (ID + "encoding: latin-9", "clinical.schema.encoding: one of auto, utf-8, windows-1252, got 'latin-9'"),
    (ID + "columns: {notes: {type: text}}",
     "clinical.schema.columns.notes.type: free text cannot be kept (it can carry names): declare the column"
     " drop: true, or type: code with its allowed values, got 'text'"),
    (ID + "columns: {notes: {}}", "clinical.schema.columns.notes.type: one of date, datetime, integer, number,"
     " code (or drop: true), got None"),
    (ID + "columns: {Admission Date: {type: date, formats: ['%d/%m/%Y']}}",
     "clinical.schema.columns.Admission Date: an output column name: lower case letters, digits and _, starting"
     " with a letter, not patient_pseudonym (header: gives the column's name in the file)"),
    (ID + "columns: {age: {type: integer, range: [0, 120], band: 5}}",
     "clinical.schema.columns.age.band: unknown key; expected one of type, header, required, drop, range,"
     " generalise"),
    (ID + "columns: {age: {type: integer}}",
     "clinical.schema.columns.age.range: required for integer and number columns: two numbers [low, high]"),
    (ID + "columns: {age: {type: integer, range: [120, 0]}}",
     "clinical.schema.columns.age.range: two numbers [low, high], low <= high, got [120, 0]"),
    (ID + "columns: {age: {type: integer, range: [0, 1.5]}}",
     "clinical.schema.columns.age.range: two whole numbers [low, high] for an integer column, got [0, 1.5]"),
    (ID + "columns: {age: {type: integer, range: [0, 120], generalise: {band: 0}}}",
     "clinical.schema.columns.age.generalise.band: a whole number of at least 1 (the width of each band), got 0"),
    (ID + "columns: {seen: {type: date}}",
     "clinical.schema.columns.seen.formats: a list of strptime formats such as ['%d/%m/%Y', '%Y-%m-%d'], got None"),
    (ID + "columns: {seen: {type: date, formats: ['%d/%m/%y']}}",
     "clinical.schema.columns.seen.formats[0]: a four-digit year (%Y): a two-digit year makes the agent guess"
     " the century, got '%d/%m/%y'"),
    (ID + "columns: {seen: {type: date, formats: ['%x']}}",
     "clinical.schema.columns.seen.formats[0]: only %Y %m %d %b %B for dates and %H %M %S %f %I %p for times,"
     " got '%x'"),
    (ID + "columns: {seen: {type: date, formats: ['%d/%m/%Y %H:%M']}}",
     "clinical.schema.columns.seen.formats[0]: a date without a time (use type: datetime for dates with times),"
     " got '%d/%m/%Y %H:%M'"),
    (ID + "columns: {seen: {type: datetime, formats: ['%d/%m/%Y']}}",
     "clinical.schema.columns.seen.formats[0]: a date with hours and minutes (%H:%M, or %I:%M %p),"
     " got '%d/%m/%Y'"),
    (ID + "columns: {seen: {type: date, formats: ['%d/%m/%Y'], range: [2020-01-01, soon]}}",
     "clinical.schema.columns.seen.range: two dates [low, high] as YYYY-MM-DD, got"
     " [datetime.date(2020, 1, 1), 'soon']"),
    (ID + "columns: {sex: {type: code}}",
     "clinical.schema.columns.sex.allowed: a list of the values the column may hold, got None"),
    (ID + "columns: {smoker: {type: code, allowed: [yes, no]}}",
     "clinical.schema.columns.smoker.allowed[0]: a code (text or a whole number); quote it, as YAML reads"
     " unquoted yes, no, on, off, true, false, null and ~ as something else, got True"),
    (ID + "columns: {sex: {type: code, allowed: [M, F], aliases: {Male: X}}}",
     "clinical.schema.columns.sex.aliases.Male: one of the allowed codes (M, F), got 'X'"),
    (ID + "columns: {mrn_again: {type: code, allowed: [a], header: MRN}}",
     "clinical.schema.columns.mrn_again.header: a file column not already declared by patient_id.column,"
     " got 'MRN'"),
    (ID + "missing_values: [F]\ncolumns: {sex: {type: code, allowed: [M, F]}}",
     "clinical.schema.missing_values: markers that are not also codes of columns.sex, got ['f']"),
    (ID + "columns: {notes: {drop: true, identifying: yes please}}",
     "clinical.schema.columns.notes.identifying: true or false, got 'yes please'"),
])
def test_schema_errors(text: str, message: str) -> None:
    """Each mistake an IG officer can make is named with its key path and what is expected."""
    with pytest.raises(ConfigError) as caught:
        schema_from(text, Path("/etc/nmip-agent/config.yaml"))
    assert str(caught.value) == f"/etc/nmip-agent/config.yaml: {message}"
