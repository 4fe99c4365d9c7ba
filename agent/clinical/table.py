"""One clinical CSV through the schema: decode, match the header, validate, pseudonymise, check.

Pure: bytes in, a `TableResult` out, no file, no clock, no log. A row that fails any check is left
out and listed by row number, column and problem; the value itself never appears in a problem,
since the report may be sent to support. A file whose header does not match the schema is
refused whole: a misspelt header would otherwise silently drop a column for every row.

The identifier becomes `Pseudonymiser.patient_pseudonym`, exactly what the DICOM engine puts in
Patient ID, and dates move by `Pseudonymiser.date_offset` through `agent.deidentify.dates`, the
engine's own functions, so a patient's images and rows link and keep the same intervals.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import enum
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.clinical import values
from agent.clinical.schema import ClinicalSchema, ColumnType, KeptColumn, normalise_code, normalise_header
from agent.deidentify.pseudonym import Pseudonymiser

_DELIMITERS = (",", ";", "\t")
_DECODINGS = {"auto": ("utf-8", "cp1252"), "utf-8": ("utf-8",), "windows-1252": ("cp1252",)}
# Identifiers of rows left out, and values of identifying columns, are searched in the output
# from this length: shorter ones (initials, "M") occur in any output by chance.
_MIN_SEARCHED = 4
_SPANNING = re.compile(r'[,"\r\n]')  # characters that let a value span two cells of the output


class RefusedReason(str, enum.Enum):
    """Why a whole file was refused; the value is the stable code logs and scripts use."""

    NOT_TEXT = "not_text"
    NOT_CSV = "not_csv"
    NO_HEADER = "no_header"
    HEADER_MISMATCH = "header_mismatch"
    IDENTIFIER_IN_OUTPUT = "identifier_in_output"


@dataclass(frozen=True)
class RowProblem:
    """Why a row was left out: its number in the file (the header is row 1), the column, the problem.

    `column` is empty when the problem is the row's shape. Never holds the value.
    """

    row: int
    column: str
    problem: str


@dataclass
class TableResult:
    """What a file gives: the CSV to upload (valid rows only) and what was left out, and why."""

    refused: str | None = None
    refused_reason: RefusedReason | None = None
    csv: bytes = b""
    rows_in: int = 0
    rows_out: int = 0
    rejects: list[RowProblem] = field(default_factory=list)
    pseudonyms: set[str] = field(default_factory=set)
    rows_opted_out: int = 0  # left out because the patient is on the opt-out list (also in `rejects`)
    patients: dict[str, str] = field(default_factory=dict)  # source patient ID -> pseudonym: the crosswalk, on site

    @property
    def rows_rejected(self) -> int:
        return len({problem.row for problem in self.rejects})


def _refused(reason: RefusedReason, message: str, rows_in: int = 0) -> TableResult:
    return TableResult(refused=message, refused_reason=reason, rows_in=rows_in)


def pseudonymise_table(data: bytes, schema: ClinicalSchema, pseudonyms: Pseudonymiser,
                       opted_out: Callable[[str], bool] | None = None) -> TableResult:
    """Validate and pseudonymise one CSV export; `refused` is set when nothing of it may leave.
    A row whose patient ID, or a value of a column declared identifying (an NHS number), is on
    the opt-out list (`opted_out`) is left out and reported."""
    text = _decode(data, schema.encoding)
    if isinstance(text, TableResult):
        return text
    delimiter = _choose_delimiter(text, schema)
    try:
        records = list(_records(text, delimiter))
    except csv.Error as exc:
        # csv's message can quote the line; only its position is passed on.
        return _refused(RefusedReason.NOT_CSV, f"not a readable CSV file ({_csv_position(exc)})")
    header_at = next((i for i, record in enumerate(records) if not _blank(record)), None)
    if header_at is None:
        return _refused(RefusedReason.NO_HEADER, "empty file: no header row")
    positions = _match_header(records[header_at], schema)
    if isinstance(positions, TableResult):
        return positions
    table = _Table(schema, pseudonyms, positions, len(records[header_at]), decimal_comma=delimiter != ",",
                   opted_out=opted_out)
    for index in range(header_at + 1, len(records)):
        table.add(index + 1, records[index])
    return table.result()


# -- reading ------------------------------------------------------------------------------------


def _decode(data: bytes, encoding: str) -> str | TableResult:
    """UTF-8 with or without BOM; a UTF-16 BOM (Excel's "Unicode text"); else Windows-1252 when auto.

    Windows-1252 (a superset of Latin-1's printable characters) is what Excel writes by default
    on Windows; a wrong guess can only spoil codes and numbers, which then fail validation.
    """
    if data.startswith(b"PK\x03\x04"):
        return _refused(RefusedReason.NOT_TEXT, "an Excel workbook or zip archive, not CSV: export the sheet as CSV")
    decodings = _DECODINGS[encoding]
    if data.startswith(codecs.BOM_UTF8):
        data, decodings = data[len(codecs.BOM_UTF8):], ("utf-8",)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        decodings = ("utf-16",)
    for name in decodings:
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        if "\x00" in text:
            return _refused(RefusedReason.NOT_TEXT, "holds NUL characters: not a CSV text file")
        return text
    tried = " or ".join("Windows-1252" if name == "cp1252" else name.upper() for name in decodings)
    return _refused(RefusedReason.NOT_TEXT, f"not {tried} text (schema encoding: {encoding})")


def _records(text: str, delimiter: str) -> Iterator[list[str]]:
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)


def _csv_position(exc: csv.Error) -> str:
    match = re.search(r"line (\d+)", str(exc))
    return f"near line {match.group(1)}" if match else "malformed quoting or field"


def _blank(record: list[str]) -> bool:
    return all(not cell.strip() for cell in record)


def _expected_headers(schema: ClinicalSchema) -> list[str]:
    headers = [schema.patient_id.header]
    if schema.patient_id.issuer_column is not None:
        headers.append(schema.patient_id.issuer_column)
    return headers + [column.header for column in schema.columns]


def _choose_delimiter(text: str, schema: ClinicalSchema) -> str:
    """The delimiter under which the first row holds the most expected headers (then the most cells).

    Excel writes `;` where the decimal separator is a comma; some exports use tabs.
    """
    wanted = {normalise_header(h) for h in (*_expected_headers(schema), *(c.header for c in schema.dropped))}
    best, best_score = ",", (-1, -1)
    for delimiter in _DELIMITERS:
        try:
            first = next((r for r in _records(text, delimiter) if not _blank(r)), [])
        except csv.Error:
            continue
        score = (len(wanted & {normalise_header(cell) for cell in first}), len(first))
        if score > best_score:
            best, best_score = delimiter, score
    return best


# -- the header ---------------------------------------------------------------------------------


def _match_header(header: list[str], schema: ClinicalSchema) -> dict[str, int] | TableResult:
    """Normalised header -> its (first) position; or the refusal naming each expected column missing."""
    positions: dict[str, int] = {}
    duplicated: set[str] = set()
    for position, cell in enumerate(header):
        key = normalise_header(cell)
        if key in positions:
            duplicated.add(key)
        positions.setdefault(key, position)
    expected = _expected_headers(schema)
    declared = {normalise_header(h) for h in (*expected, *(c.header for c in schema.dropped))}
    twice = [h for h in expected if normalise_header(h) in duplicated]
    if twice:
        return _refused(RefusedReason.HEADER_MISMATCH,
                        f"the header has column {twice[0]!r} twice: which one is meant is not clear")
    missing = [h for h in expected if normalise_header(h) not in positions]
    if not missing:
        return positions
    found = len(expected) - len(missing)
    names = ", ".join(repr(h) for h in missing)
    if 2 * found < len(expected):
        # Most expected columns absent: the first row may be data, so none of it is quoted.
        return _refused(RefusedReason.HEADER_MISMATCH,
                        f"the first row does not look like the schema's header: {found} of {len(expected)}"
                        f" expected columns found; missing {names}")
    spare = [cell.strip() for cell in header if normalise_header(cell) not in declared and _quotable(cell)]
    parts = []
    for wanted in missing:
        part = f"missing column {wanted!r}"
        close = _closest(wanted, spare)
        if close is not None:
            part += f" (closest header in the file: {close!r})"
        parts.append(part)
    return _refused(RefusedReason.HEADER_MISMATCH, "the header does not match the schema: " + "; ".join(parts))


def _quotable(cell: str) -> bool:
    """Column names are not identifying, but a cell quoted back must at least look like a name."""
    text = cell.strip()
    return 0 < len(text) <= 64 and text.isprintable() and not re.search(r"\d{3}|@", text)


def _closest(wanted: str, candidates: list[str]) -> str | None:
    keys = {normalise_header(c): c for c in candidates}
    match = difflib.get_close_matches(normalise_header(wanted), list(keys), n=1, cutoff=0.6)
    return keys[match[0]] if match else None


# -- rows ---------------------------------------------------------------------------------------


class _Table:
    """Accumulates one file's rows: valid ones pseudonymised, the others as problems."""

    def __init__(self, schema: ClinicalSchema, pseudonyms: Pseudonymiser, positions: dict[str, int],
                 width: int, *, decimal_comma: bool, opted_out: Callable[[str], bool] | None = None) -> None:
        self.schema = schema
        self.opted_out = opted_out
        self.pseudonyms = pseudonyms
        self.width = width
        self.decimal_comma = decimal_comma
        self.id_at = positions[normalise_header(schema.patient_id.header)]
        issuer = schema.patient_id.issuer_column
        self.issuer_at = None if issuer is None else positions[normalise_header(issuer)]
        self.kept = [(column, positions[normalise_header(column.header)]) for column in schema.columns]
        # Values of columns declared identifying (names, NHS numbers) are dropped, and searched for.
        self.identifying = [positions[key] for key in (normalise_header(c.header) for c in schema.dropped
                                                       if c.identifying) if key in positions]
        self.out = io.StringIO()
        self.writer = csv.writer(self.out, lineterminator="\r\n")
        self.writer.writerow(schema.output_header)
        self.partial = TableResult()
        self.searched: dict[str, int] = {}  # casefolded source value -> first row holding it
        self.offsets: dict[str, timedelta] = {}
        self.moments: dict[tuple[str, str], datetime | str] = {}  # a str is the problem

    def add(self, row: int, record: list[str]) -> None:
        if _blank(record):  # blank lines, and Excel's rows of empty cells, are not rows
            return
        result = self.partial
        result.rows_in += 1
        # Strict, even when the extra cells are empty: an unquoted delimiter in a value shifts every
        # later cell one column right, and a shifted row can pass validation with wrong values.
        if len(record) != self.width:
            result.rejects.append(RowProblem(row, "", f"{len(record)} fields where the header has {self.width}"
                                             " (a value holding the delimiter without quotes?)"))
            return
        cells = [cell.strip() for cell in record]
        problems: list[RowProblem] = []
        source_patient_id = self._patient_id(row, cells, problems)
        for at in self.identifying:
            self._search(cells[at], row, min_length=_MIN_SEARCHED)
        if self.opted_out is not None and any(self.opted_out(value) for value in
                                              [source_patient_id or "", *(cells[at] for at in self.identifying)] if value):
            result.rejects.append(RowProblem(row, self.schema.patient_id.header, "the patient is on the opt-out list"))
            result.rows_opted_out += 1
            self._search(source_patient_id, row, min_length=_MIN_SEARCHED)
            return
        values = [self._value(row, column, cells[at], source_patient_id, problems) for column, at in self.kept]
        if problems:
            result.rejects.extend(problems)
            self._search(source_patient_id, row, min_length=_MIN_SEARCHED)
            return
        assert source_patient_id is not None
        pseudonym = self.pseudonyms.patient_pseudonym(source_patient_id)
        self.writer.writerow([pseudonym, *values])
        result.pseudonyms.add(pseudonym)
        result.patients[source_patient_id] = pseudonym
        result.rows_out += 1
        self._search(source_patient_id, row, min_length=1)

    def _search(self, value: str | None, row: int, *, min_length: int) -> None:
        if value and len(value) >= min_length:
            self.searched.setdefault(value.casefold(), row)

    def _patient_id(self, row: int, cells: list[str], problems: list[RowProblem]) -> str | None:
        spec = self.schema.patient_id
        source_patient_id = cells[self.id_at]
        if not source_patient_id:
            problems.append(RowProblem(row, spec.header, "patient identifier missing"))
            return None
        if spec.pattern is not None and not spec.pattern.fullmatch(source_patient_id):
            problems.append(RowProblem(row, spec.header, "patient identifier does not match patient_id.pattern"))
        if self.issuer_at is not None:
            issuer = cells[self.issuer_at]
            if not issuer:
                problems.append(RowProblem(row, str(spec.issuer_column), "issuer missing"))
            elif issuer.casefold() != spec.issuer.casefold():
                problems.append(RowProblem(row, str(spec.issuer_column),
                                           f"identifier issued by another authority than {spec.issuer}"))
        return source_patient_id

    def _value(self, row: int, column: KeptColumn, text: str, source_patient_id: str | None,
               problems: list[RowProblem]) -> str:
        if normalise_code(text) in self.schema.missing_values:
            text = ""
        if not text:
            if column.required:
                problems.append(RowProblem(row, column.header, "required value missing"))
            return ""
        try:
            if column.type in (ColumnType.DATE, ColumnType.DATETIME):
                moment = self._moment(column, text)
                # Without a patient there is no offset: the date is only checked, for the report.
                return "" if source_patient_id is None else values.shifted(
                    column, moment, self._offset(source_patient_id))
            if column.type == ColumnType.CODE:
                return values.code(column, text)
            return values.number(column, text, decimal_comma=self.decimal_comma)
        except values.Invalid as invalid:
            problems.append(RowProblem(row, column.header, str(invalid)))
            return ""

    def _moment(self, column: KeptColumn, text: str) -> datetime:
        """Dates repeat down a column: each distinct text is parsed once (strptime is slow)."""
        key = (column.name, text)
        moment = self.moments.get(key)
        if moment is None:
            try:
                moment = values.read_moment(column, text)
            except values.Invalid as invalid:
                moment = str(invalid)
            self.moments[key] = moment
        if isinstance(moment, str):
            raise values.Invalid(moment)
        return moment

    def _offset(self, source_patient_id: str) -> timedelta:
        offset = self.offsets.get(source_patient_id)
        if offset is None:
            offset = self.offsets[source_patient_id] = self.pseudonyms.date_offset(source_patient_id)
        return offset

    def result(self) -> TableResult:
        result = self.partial
        output = self.out.getvalue()
        leak = _first_leak(output, self.searched)
        if leak is not None:
            return _refused(RefusedReason.IDENTIFIER_IN_OUTPUT,
                            f"an identifying value of row {leak} (its patient identifier, or a column declared"
                            " identifying) appears in the output; nothing of the file is uploaded",
                            rows_in=result.rows_in)
        result.csv = output.encode("utf-8")
        return result


def _first_leak(output: str, searched: dict[str, int]) -> int | None:
    """The row of the first searched value found anywhere in the output text, or None.

    A value without a delimiter, quote or line break can only lie inside one cell as written, so
    those are looked up among the windows of the distinct cells (pseudonyms, dates and codes
    repeat, and a cell shorter than a value cannot hold it); any other value is searched in the
    whole text. Rows times output size would take minutes on a large export; this takes a second.
    """
    if not searched:
        return None
    text = output.casefold()
    hits = [row for value, row in searched.items() if _SPANNING.search(value) and value in text]
    cells = {cell for record in _records(text, ",") for cell in record}
    for length in sorted({len(value) for value in searched}):
        for cell in cells:
            for start in range(len(cell) - length + 1):
                found = searched.get(cell[start:start + length])
                if found is not None:
                    hits.append(found)
    return min(hits) if hits else None
