"""pseudonymise_table: what leaves, what is left out and why, and what refuses a whole file."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from agent.clinical import ClinicalSchema, RefusedReason, RowProblem, pseudonymise_table
from agent.deidentify.pseudonym import Pseudonymiser
from agent.keys import SiteKey
from tests.clinical.conftest import rows, schema_from, table

HEADER = "hospital_number,admission_date,age,sex,crp_mg_l,outcome,gp_notes,surname"


def test_valid_rows_become_pseudonymous_rows(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """The identifier becomes the patient's pseudonym, first, then the kept columns in schema order."""
    result = table(f"{HEADER}\nHOSP123456,15/03/2020,47,M,12.5,died,seen by Dr Planted,Plantedsurname\n",
                   schema, pseudonyms)
    assert result.refused is None and result.rejects == []
    assert (result.rows_in, result.rows_out) == (1, 1)
    pseudonym = pseudonyms.patient_pseudonym("HOSP123456")
    assert rows(result) == [{"patient_pseudonym": pseudonym, "admission_date": rows(result)[0]["admission_date"],
                             "age": "45-49", "sex": "M", "crp_mg_l": "12.5", "outcome": "died"}]
    assert result.csv.startswith(b"patient_pseudonym,admission_date,age,sex,crp_mg_l,outcome\r\n")
    assert result.pseudonyms == {pseudonym}


def test_mixed_date_formats_in_one_column(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """15/03/2020 and 2020-03-20 in one column are both read, shifted alike, written ISO 8601."""
    result = table(f"{HEADER}\nP0001,15/03/2020,,,,,,\nP0001,2020-03-20,,,,,,\n", schema, pseudonyms)
    first, second = (date.fromisoformat(row["admission_date"]) for row in rows(result))
    assert (second - first).days == 5
    assert first != date(2020, 3, 15)  # moved, by at least a day


def test_ambiguous_date_is_not_guessed(pseudonyms: Pseudonymiser) -> None:
    """03/04/2020 under both %d/%m/%Y and %m/%d/%Y is refused; 13/04/2020 reads one way only."""
    schema = schema_from("""
patient_id: {column: id, issuer: RXX01}
columns:
  seen: {type: date, formats: ["%d/%m/%Y", "%m/%d/%Y"]}
""")
    result = table("id,seen\nP0001,03/04/2020\nP0001,13/04/2020\n", schema, pseudonyms)
    assert result.rows_out == 1
    assert [(p.row, p.column) for p in result.rejects] == [(2, "seen")]
    assert result.rejects[0].problem.startswith("ambiguous")


def test_datetime_column_keeps_the_time(pseudonyms: Pseudonymiser) -> None:
    """A date with a time moves as one instant and is written YYYY-MM-DDTHH:MM:SS."""
    schema = schema_from("""
patient_id: {column: id, issuer: RXX01}
columns:
  swab_taken: {type: datetime, formats: ["%d/%m/%Y %H:%M"]}
""")
    result = table("id,swab_taken\nP0001,15/03/2020 08:00\nP0001,15/03/2020 09:30\n", schema, pseudonyms)
    first, second = (row["swab_taken"] for row in rows(result))
    assert len(first) == 19 and first[10] == "T"
    assert (first[11:], second[11:]) != ("08:00:00", "09:30:00")  # the time of day moved too
    from datetime import datetime

    assert datetime.fromisoformat(second) - datetime.fromisoformat(first) == datetime(1, 1, 1, 1, 30) - datetime(1, 1, 1)


def test_misspelt_header_refuses_the_whole_file(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """A misspelt header names the expected column and the close one found; nothing is uploaded."""
    text = HEADER.replace("admission_date", "admision_date") + "\nHOSP123456,15/03/2020,47,M,12.5,died,,\n"
    result = table(text, schema, pseudonyms)
    assert result.refused_reason == RefusedReason.HEADER_MISMATCH
    assert result.refused == ("the header does not match the schema: missing column 'admission_date'"
                              " (closest header in the file: 'admision_date')")
    assert (result.csv, result.rows_out, result.pseudonyms) == (b"", 0, set())


def test_header_case_spacing_and_underscores_are_forgiven(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """` Hospital Number `, `ADMISSION  DATE` and `Age` match hospital_number, admission_date, age."""
    result = table(" Hospital Number ,ADMISSION  DATE,Age,SEX,CRP_mg_L,Outcome\nP0001,15/03/2020,30,f,1,DIED\n",
                   schema, pseudonyms)
    assert result.refused is None
    assert rows(result)[0]["sex"] == "F" and rows(result)[0]["outcome"] == "died"


def test_headerless_file_is_refused_without_quoting_it(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """When the first row is data, the refusal lists the expected columns and quotes nothing of it."""
    result = table("HOSP123456,15/03/2020,47,M,12.5,died,,Plantedsurname\n", schema, pseudonyms)
    assert result.refused_reason == RefusedReason.HEADER_MISMATCH
    assert result.refused is not None and "first row does not look like the schema's header" in result.refused
    assert "HOSP123456" not in result.refused and "Plantedsurname" not in result.refused


def test_a_column_twice_in_the_header_is_refused(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """Two `age` columns: which one is meant is not clear, so the file is refused."""
    result = table(HEADER + ",Age\n", schema, pseudonyms)
    assert result.refused == "the header has column 'age' twice: which one is meant is not clear"


BAD_ROWS = f"""{HEADER}
HOSP000001,15/03/2020,47,M,12.5,died,,
HOSP000002,15/03/2020,47,Mr Planted Surname,12.5,died,,
HOSP000003,15/03/2020,212,M,12.5,died,,
HOSP000004,the fifteenth,47,M,12.5,died,,
HOSP000005,,47,M,12.5,died,,
,15/03/2020,47,M,12.5,died,,Plantedsurname
HOSP000007,15/03/2020,47,M,1.2.3,possibly died,,
HOSP000008,15/03/2020,47, or so,M,12.5,died,,
"""


def test_bad_rows_are_listed_by_row_and_column(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """Free text in a code, out of range, not a date, missing required value or identifier: row, column, problem."""
    result = table(BAD_ROWS, schema, pseudonyms)
    assert result.refused is None
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (8, 1, 7)
    assert result.rejects == [
        RowProblem(3, "sex", "not one of the allowed values (M, F, U)"),
        RowProblem(4, "age", "outside the range [0, 120]"),
        RowProblem(5, "admission_date", "not a date in a declared format (%d/%m/%Y, %Y-%m-%d)"),
        RowProblem(6, "admission_date", "required value missing"),
        RowProblem(7, "hospital_number", "patient identifier missing"),
        RowProblem(8, "crp_mg_l", "not a number"),
        RowProblem(8, "outcome", "not one of the allowed values (discharged, died, transferred)"),
        RowProblem(9, "", "9 fields where the header has 8 (a value holding the delimiter without quotes?)"),
    ]
    assert [row["patient_pseudonym"] for row in rows(result)] == [pseudonyms.patient_pseudonym("HOSP000001")]


def test_row_without_identifier_still_has_its_dates_checked(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """Every problem of a row is listed at once, the date's too when the identifier is missing."""
    result = table(f"{HEADER}\n,32/13/2020,47,M,1,died,,\n", schema, pseudonyms)
    assert [(p.row, p.column) for p in result.rejects] == [(2, "hospital_number"), (2, "admission_date")]


def test_problems_never_hold_the_value(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """No problem text quotes what the cell held, and no rejected row reaches the output."""
    result = table(BAD_ROWS, schema, pseudonyms)
    text = " ".join(p.problem + p.column for p in result.rejects)
    for value in ("Planted", "212", "fifteenth", "1.2.3", "possibly", "or so", "HOSP"):
        assert value not in text
    assert b"HOSP" not in result.csv and b"Planted" not in result.csv


def test_undeclared_and_dropped_columns_never_leave(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """A column the schema does not declare, or declares drop: true, is not in the output."""
    result = table(f"{HEADER},postcode,ward\nP0001,15/03/2020,47,M,1,died,Lives with PLANTEDNAME,Plantedsurname,"
                   "LS1 3EX,Ward 7\n", schema, pseudonyms)
    assert list(rows(result)[0]) == ["patient_pseudonym", "admission_date", "age", "sex", "crp_mg_l", "outcome"]
    for value in (b"PLANTEDNAME", b"Plantedsurname", b"LS1 3EX", b"Ward 7", b"postcode", b"gp_notes"):
        assert value not in result.csv


@pytest.mark.parametrize(("age", "band"), [("0", "0-4"), ("4", "0-4"), ("47", "45-49"), ("89", "85-89"),
                                           ("90", "90+"), ("104", "90+"), ("47.0", "45-49")])
def test_age_is_generalised_into_bands(schema: ClinicalSchema, pseudonyms: Pseudonymiser, age: str, band: str) -> None:
    """Ages leave as 5-year bands, and 90 and over as 90+."""
    result = table(f"{HEADER}\nP0001,15/03/2020,{age},,,,,\n", schema, pseudonyms)
    assert rows(result)[0]["age"] == band


def test_codes_forgive_case_and_map_aliases(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """` f `, `Female` and `F` all leave as F, the schema's spelling; NULL and N/A are empty."""
    result = table(f"{HEADER}\nP0001,15/03/2020,, f ,NULL,,,\nP0001,15/03/2020,,Female,n/a,,,\n", schema, pseudonyms)
    assert [(row["sex"], row["crp_mg_l"]) for row in rows(result)] == [("F", ""), ("F", "")]


def test_bom_semicolons_and_decimal_commas(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """Excel's UTF-8 with BOM, `;` between cells and `12,5` for 12.5 read as a comma file would."""
    text = "\ufeff" + HEADER.replace(",", ";") + "\r\nP0001;15/03/2020;47;M;12,5;died;;\r\n"
    result = table(text.encode("utf-8"), schema, pseudonyms)
    assert result.refused is None
    assert rows(result)[0]["crp_mg_l"] == "12.5" and rows(result)[0]["patient_pseudonym"] == \
        pseudonyms.patient_pseudonym("P0001")


def test_windows_1252_export_is_read(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """An Excel export in Windows-1252 (é as one byte) is read when the schema's encoding is auto."""
    data = f"{HEADER}\nP0001,15/03/2020,47,M,1,died,Vu par le Dr Léa,\n".encode("cp1252")
    assert table(data, schema, pseudonyms).rows_out == 1
    strict = schema_from("encoding: utf-8\npatient_id: {column: hospital_number, issuer: RXX01}\n")
    result = table(data, strict, pseudonyms)
    assert result.refused_reason == RefusedReason.NOT_TEXT
    assert result.refused == "not UTF-8 text (schema encoding: utf-8)"


def test_utf16_export_with_tabs_is_read(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """Excel's "Unicode text" (UTF-16 with BOM, tab-delimited) reads like any other file."""
    text = HEADER.replace(",", "\t") + "\nP0001\t15/03/2020\t47\tM\t1\tdied\t\t\n"
    assert table(text.encode("utf-16"), schema, pseudonyms).rows_out == 1


def test_blank_lines_are_skipped_and_counted_in_row_numbers(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """Blank lines are not rows, but row numbers stay those a spreadsheet shows."""
    result = table(f"{HEADER}\n\nP0001,15/03/2020,47,M,1,died,,\n,,,,,,,\n\nP0002,15/03/2020,47,X,1,died,,\n",
                   schema, pseudonyms)
    assert (result.rows_in, result.rows_out) == (2, 1)
    assert [(p.row, p.column) for p in result.rejects] == [(6, "sex")]


def test_identifier_in_the_output_refuses_the_file(pseudonyms: Pseudonymiser) -> None:
    """Fail closed: if a row's source identifier appears anywhere in the output, nothing leaves."""
    schema = schema_from("""
patient_id: {column: mrn, issuer: RXX01}
columns:
  weight_g: {type: number, range: [0, 10000000]}
""")
    result = table("mrn,weight_g\n3456789,3400\n1234567,3456789\n", schema, pseudonyms)
    assert result.refused_reason == RefusedReason.IDENTIFIER_IN_OUTPUT
    assert result.refused is not None and result.refused.startswith("an identifying value of row 2 (its patient")
    assert "3456789" not in result.refused
    assert (result.csv, result.rows_out, result.pseudonyms) == (b"", 0, set())


def test_identifying_column_value_in_the_output_refuses_the_file(pseudonyms: Pseudonymiser) -> None:
    """A value of a column declared identifying (an NHS number) found in the output refuses the file."""
    schema = schema_from("""
patient_id: {column: mrn, issuer: RXX01}
columns:
  nhs_number: {drop: true, identifying: true}
  result_code: {type: integer, range: [0, 99999999999]}
""")
    result = table("mrn,nhs_number,result_code\nRXX1,9434765919,9434765919\n", schema, pseudonyms)
    assert result.refused_reason == RefusedReason.IDENTIFIER_IN_OUTPUT


def test_issuer_and_pattern_checks(pseudonyms: Pseudonymiser) -> None:
    """Rows from another issuer, or whose identifier does not look like the PACS's, are left out."""
    schema = schema_from(r"""
patient_id: {column: mrn, issuer: RXX01, issuer_column: mrn_issuer, pattern: 'RXX\d{6}'}
""")
    result = table("mrn,mrn_issuer\nRXX000001,rxx01\nRXX000002,RYY02\n1.23E+08,RXX01\nRXX000004,\n",
                   schema, pseudonyms)
    assert result.rows_out == 1
    assert result.rejects == [
        RowProblem(3, "mrn_issuer", "identifier issued by another authority than RXX01"),
        RowProblem(4, "mrn", "patient identifier does not match patient_id.pattern"),
        RowProblem(5, "mrn_issuer", "issuer missing"),
    ]
    assert b"RYY02" not in result.csv and b"rxx01" not in result.csv


@pytest.mark.parametrize(("data", "reason", "message"), [
    (b"", RefusedReason.NO_HEADER, "empty file: no header row"),
    (b"\n \n", RefusedReason.NO_HEADER, "empty file: no header row"),
    (b"PK\x03\x04\x14\x00\x06\x00", RefusedReason.NOT_TEXT,
     "an Excel workbook or zip archive, not CSV: export the sheet as CSV"),
    (b"hospital_number\x00,x\n", RefusedReason.NOT_TEXT, "holds NUL characters: not a CSV text file"),
])
def test_files_that_are_not_csv_are_refused(schema: ClinicalSchema, pseudonyms: Pseudonymiser, data: bytes,
                                            reason: RefusedReason, message: str) -> None:
    """Empty files, workbooks and binary files are refused with what they look like."""
    result = table(data, schema, pseudonyms)
    assert (result.refused_reason, result.refused) == (reason, message)


def test_header_only_file_gives_an_empty_table(schema: ClinicalSchema, pseudonyms: Pseudonymiser) -> None:
    """A file with a header and no rows is not an error: zero rows in, zero out."""
    result = table(HEADER + "\n", schema, pseudonyms)
    assert result.refused is None and (result.rows_in, result.rows_out) == (0, 0)
    assert result.csv == b"patient_pseudonym,admission_date,age,sex,crp_mg_l,outcome\r\n"


def test_rows_of_patients_on_the_opt_out_list_are_left_out(pseudonyms: Pseudonymiser, site_key: SiteKey,
                                                            tmp_path: Path) -> None:
    """By the patient ID (written otherwise on the list) or by an identifying NHS-number column:
    the row is left out, counted, reported by row number only, and nothing of it is in the output."""
    from agent import optout
    from agent.clinical import write_rejects_report

    key = site_key
    schema = schema_from("""
patient_id: {column: mrn, issuer: RXX01}
columns:
  nhs_number: {drop: true, identifying: true}
  crp_mg_l: {type: number, range: [0, 1000]}
""")
    text = ("mrn,nhs_number,crp_mg_l\nRXX100001,9434765919,12\nRXX100002,5550001111,13\n"
            "RXX100003,4010232137,14\nRXX100004,,15\n")
    assert table(text, schema, pseudonyms).rows_out == 4  # without a list, every row goes
    listed = optout.matcher(key, optout.tokens(key, ["rxx-100002", "401 023 2137"]))
    result = pseudonymise_table(text.encode(), schema, pseudonyms, listed)
    assert result.refused is None
    assert (result.rows_in, result.rows_out, result.rows_opted_out, result.rows_rejected) == (4, 2, 2, 2)
    assert [(p.row, p.problem) for p in result.rejects] == [(3, "the patient is on the opt-out list"),
                                                            (4, "the patient is on the opt-out list")]
    kept = {pseudonyms.patient_pseudonym("RXX100001"), pseudonyms.patient_pseudonym("RXX100004")}
    assert {row["patient_pseudonym"] for row in rows(result)} == kept == result.pseudonyms
    assert set(result.patients) == {"RXX100001", "RXX100004"}  # the crosswalk never gets the others
    output = result.csv.decode()
    assert sorted(row["crp_mg_l"] for row in rows(result)) == ["12", "15"]
    for gone in ("RXX100002", "RXX100003", "5550001111", "4010232137",
                 pseudonyms.patient_pseudonym("RXX100002"), pseudonyms.patient_pseudonym("RXX100003")):
        assert gone not in output
    report = write_rejects_report(tmp_path, "batch", result)
    assert report is not None
    written = report.read_text(encoding="utf-8")
    assert written.count("the patient is on the opt-out list") == 2
    assert not any(value in written for value in ("RXX10000", "5550001111", "4010232137"))
