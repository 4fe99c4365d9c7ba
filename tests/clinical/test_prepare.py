"""prepare_file: batch ids, the rejects report on site, one log line; no identifier in any of them."""

from __future__ import annotations

import csv
import io
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.clinical import ClinicalSchema, RowProblem, batch_id, prepare_file, write_rejects_report
from agent.clinical.table import TableResult
from agent.deidentify.pseudonym import Pseudonymiser
from agent.keys import SiteKey
from tests.clinical.test_table import BAD_ROWS, HEADER
from tests.conftest import shipped

# Everything identifying that BAD_ROWS and the misspelt file below hold.
PLANTED = ("HOSP0000", "Planted", "Plantedsurname", "212", "fifteenth", "possibly", "or so")


def drop(folder: Path, text: str, name: str = "Plantedsurname_HOSP000001.csv") -> Path:
    """A dropped export, named as careless exports are: after a patient."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def report_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def test_batch_id_is_stable_keyed_and_opaque(pseudonyms: Pseudonymiser, other_key: SiteKey) -> None:
    """Same bytes, same id (a re-upload overwrites); other bytes or another key, another id."""
    data = b"hospital_number\nHOSP123456\n"
    first = batch_id(data, pseudonyms)
    assert first == batch_id(data, pseudonyms)
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != batch_id(data + b"HOSP654321\n", pseudonyms)
    assert first != batch_id(data, Pseudonymiser(other_key, shipped("nccid").pseudonym))


def test_rejects_report_lists_rows_without_values(tmp_path: Path, schema: ClinicalSchema,
                                                  pseudonyms: Pseudonymiser) -> None:
    """The report gives row, column and problem for each left-out row, 0600 in a 0700 folder, no value."""
    prepared = prepare_file(drop(tmp_path / "drop", BAD_ROWS), schema, pseudonyms, tmp_path / "rejects")
    assert prepared.report == tmp_path / "rejects" / f"{prepared.batch}.rejects.csv"
    lines = report_rows(prepared.report)
    assert lines[0] == ["row", "column", "problem"]
    assert lines[1] == ["3", "sex", "not one of the allowed values (M, F, U)"]
    assert [line[:2] for line in lines[1:]] == [["3", "sex"], ["4", "age"], ["5", "admission_date"],
                                                ["6", "admission_date"], ["7", "hospital_number"],
                                                ["8", "crp_mg_l"], ["8", "outcome"], ["9", ""]]
    text = prepared.report.read_text(encoding="utf-8")
    for value in PLANTED:
        assert value not in text
    assert stat.S_IMODE(prepared.report.stat().st_mode) == 0o600
    assert stat.S_IMODE(prepared.report.parent.stat().st_mode) == 0o700
    assert [p.name for p in prepared.report.parent.iterdir()] == [prepared.report.name]  # no temp file left


def test_refused_file_report_says_why(tmp_path: Path, schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """A refused file's report is one line with empty row and column, and the reason."""
    text = HEADER.replace("admission_date", "admision_date") + "\nHOSP000001,15/03/2020,47,M,1,died,,Plantedsurname\n"
    prepared = prepare_file(drop(tmp_path / "drop", text), schema, pseudonyms, tmp_path / "rejects")
    assert prepared.result.csv == b""
    assert prepared.report is not None
    assert report_rows(prepared.report) == [
        ["row", "column", "problem"],
        ["", "", "file refused: the header does not match the schema: missing column 'admission_date'"
                 " (closest header in the file: 'admision_date')"],
    ]


def test_clean_file_has_no_report_and_removes_a_stale_one(tmp_path: Path, schema: ClinicalSchema,
                                                          pseudonyms: Pseudonymiser) -> None:
    """No report for a clean file; one left from an earlier run of the same file is removed."""
    folder = tmp_path / "rejects"
    stale = write_rejects_report(folder, "0" * 32, TableResult(refused="earlier schema"))
    assert stale is not None and stale.exists()
    assert write_rejects_report(folder, "0" * 32, TableResult(rows_in=1, rows_out=1)) is None
    assert not stale.exists()


def test_report_cells_cannot_become_spreadsheet_formulas(tmp_path: Path) -> None:
    """A cell starting with = is written so Excel shows it as text (the refusal line is prefixed already)."""
    path = write_rejects_report(tmp_path / "r", "1" * 32, TableResult(refused="=HYPERLINK(x)"))
    assert path is not None
    assert report_rows(path)[1] == ["", "", "file refused: =HYPERLINK(x)"]
    path = write_rejects_report(tmp_path / "r", "2" * 32, TableResult(rejects=[RowProblem(2, "=A1", "x")]))
    assert path is not None and report_rows(path)[1] == ["2", "'=A1", "x"]


def test_identifiers_never_reach_output_report_or_log(tmp_path: Path, schema: ClinicalSchema,
                                                      pseudonyms: Pseudonymiser,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Output bytes, rejects report, log events and stdout hold no identifier, nor the file's name."""
    with capture_logs() as events:
        prepared = prepare_file(drop(tmp_path / "drop", BAD_ROWS), schema, pseudonyms, tmp_path / "rejects")
    assert events == [{
        "event": "clinical_file_checked", "log_level": "warning", "batch": prepared.batch,
        "rows_in": 8, "rows_out": 1, "rows_rejected": 7, "rows_opted_out": 0, "problems": 8, "refused": None,
    }]
    assert prepared.report is not None
    seen = [prepared.result.csv.decode("utf-8"), prepared.report.read_text(encoding="utf-8"), repr(events),
            prepared.report.name, *capsys.readouterr()]
    for value in PLANTED:
        for text in seen:
            assert value not in text


def test_refused_file_logs_its_reason_code(tmp_path: Path, schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """The log line of a refused file carries the reason code, not the message."""
    with capture_logs() as events:
        prepare_file(drop(tmp_path / "drop", "x\n"), schema, pseudonyms, tmp_path / "rejects")
    assert events[0]["refused"] == "header_mismatch" and events[0]["rows_out"] == 0
