"""Fixtures for the clinical stage: the schema of docs/clinical.md and the engine's pseudonymiser."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from agent.clinical import ClinicalSchema, TableResult, parse_schema, pseudonymise_table
from agent.deidentify.pseudonym import Pseudonymiser
from agent.keys import SiteKey
from tests.conftest import shipped

# The schema most tests use: the suggested one of the issue, with an identifying column.
SCHEMA = """
patient_id: {column: hospital_number, issuer: RXX01}
missing_values: [NULL, N/A]
columns:
  admission_date: {type: date, formats: ["%d/%m/%Y", "%Y-%m-%d"], required: true}
  age:            {type: integer, range: [0, 120], generalise: {band: 5, top: 90}}
  sex:            {type: code, allowed: [M, F, U], aliases: {male: M, female: F}}
  crp_mg_l:       {type: number, range: [0, 1000]}
  outcome:        {type: code, allowed: [discharged, died, transferred]}
  gp_notes:       {drop: true}
  surname:        {drop: true, identifying: true}
"""


def schema_from(text: str, source: Path = Path("config.yaml")) -> ClinicalSchema:
    return parse_schema(yaml.safe_load(text), source)


@pytest.fixture
def schema() -> ClinicalSchema:
    return schema_from(SCHEMA)


@pytest.fixture(scope="session")
def pseudonyms(site_key: SiteKey) -> Pseudonymiser:
    """Built as the DICOM engine builds its own: the site key and the nccid profile's settings."""
    return Pseudonymiser(site_key, shipped("nccid").pseudonym)


def table(text: str | bytes, schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> TableResult:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return pseudonymise_table(data, schema, pseudonyms)


def rows(result: TableResult) -> list[dict[str, str]]:
    """The uploaded CSV read back, as a platform would read it."""
    return list(csv.DictReader(io.StringIO(result.csv.decode("utf-8"), newline="")))
