"""The clinical CSV schema: what an information-governance officer declares in `clinical.schema`.

The schema is a whitelist. The patient identifier column becomes `patient_pseudonym`; every other
column that leaves is declared with a type that bounds what it can hold (a date, a number in a
range, a code from a list). There is no free-text type: free text can carry names, so a column of
it can only be dropped. Columns the schema does not declare are dropped too, never passed through.

`parse_schema` checks the whole mapping at start-up and raises `ConfigError` naming the file, the
key path and what is expected, as `agent.config.load` does for the rest of the file. The reference
for every key is `docs/clinical.md`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agent.config import ConfigError

PSEUDONYM_COLUMN = "patient_pseudonym"
ENCODINGS = ("auto", "utf-8", "windows-1252")

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# strptime directives a date format may use: numbers and English month names only, so a value
# cannot be read two ways depending on the machine's locale (%x, %c) or guess its century (%y).
_DATE_DIRECTIVES = set("Ymd" "bB")
_TIME_DIRECTIVES = set("HMSfIp")
_DIRECTIVE = re.compile(r"%(.)")
_NUMERIC_TYPES = ("integer", "number")


class ColumnType(str, enum.Enum):
    """What a kept column holds; each type bounds its values, so none can carry free text."""

    DATE = "date"
    DATETIME = "datetime"
    INTEGER = "integer"
    NUMBER = "number"
    CODE = "code"


@dataclass(frozen=True)
class Bands:
    """Generalise an integer into bands of `width` (`85-89`), with everything from `top` as `90+`."""

    width: int
    top: int | None = None

    def label(self, value: int) -> str:
        if self.top is not None and value >= self.top:
            return f"{self.top}+"
        low = value // self.width * self.width
        high = low + self.width - 1
        if self.top is not None:
            high = min(high, self.top - 1)
        return f"{low}-{high}"


@dataclass(frozen=True)
class KeptColumn:
    """A column that leaves the site, validated and (dates) shifted, under its schema name."""

    name: str
    header: str
    type: ColumnType
    required: bool = False
    formats: tuple[str, ...] = ()
    number_range: tuple[Decimal, Decimal] | None = None
    date_range: tuple[date, date] | None = None  # inclusive, in source (unshifted) dates
    allowed: tuple[str, ...] = ()
    lookup: dict[str, str] | None = None  # casefolded file value or alias -> the allowed value it means
    bands: Bands | None = None


@dataclass(frozen=True)
class DroppedColumn:
    """A column declared only to be dropped; `identifying` values are also searched in the output."""

    name: str
    header: str
    identifying: bool = False


@dataclass(frozen=True)
class PatientIdColumn:
    """The hospital patient identifier: the same value the PACS puts in Patient ID (0010,0020)."""

    header: str
    issuer: str
    issuer_column: str | None = None
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class ClinicalSchema:
    """A checked schema; build it once at start-up with `parse_schema`."""

    patient_id: PatientIdColumn
    columns: tuple[KeptColumn, ...]
    dropped: tuple[DroppedColumn, ...] = ()
    encoding: str = "auto"
    missing_values: frozenset[str] = frozenset()  # casefolded markers read as an empty cell ("NULL")

    @property
    def output_header(self) -> tuple[str, ...]:
        return (PSEUDONYM_COLUMN, *(column.name for column in self.columns))


def normalise_header(text: str) -> str:
    """Headers match whatever their case, spacing and underscores: `Admission  Date` is `admission_date`."""
    return " ".join(text.replace("_", " ").split()).casefold()


def normalise_code(text: str) -> str:
    """Codes and missing-value markers match whatever their case and spacing: ` Died` is `died`."""
    return " ".join(text.split()).casefold()


class _Wrong(Exception):
    """A problem at a key path; `parse_schema` turns it into a ConfigError with the file name."""

    def __init__(self, path: str, expected: str, value: Any = ...) -> None:
        super().__init__(path, expected)
        self.path = path
        self.expected = expected
        self.value = value

    def message(self, source: Path) -> str:
        got = "" if self.value is ... else f", got {_show(self.value)}"
        return f"{source}: {_join('clinical.schema', self.path)}: {self.expected}{got}"


def _join(path: str, key: object) -> str:
    """`columns` + `age` is `columns.age`; an empty side is left out."""
    return f"{path}.{key}" if path and key != "" else f"{path}{key}"


def _show(value: Any) -> str:
    """A config value quoted in an error; config values are the officer's own, never patient data."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_schema(raw: object, source: Path) -> ClinicalSchema:
    """Check `clinical.schema` from the config file `source`; raises ConfigError naming the key."""
    try:
        return _schema(raw)
    except _Wrong as wrong:
        raise ConfigError(wrong.message(source)) from None


def _mapping(value: Any, path: str, keys: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Wrong(path, f"a mapping with keys {', '.join(keys)}", value)
    for key in value:
        if key not in keys:
            raise _Wrong(_join(path, key), f"unknown key; expected one of {', '.join(keys)}")
    for key in required:
        if value.get(key) is None:
            raise _Wrong(_join(path, key), "required")
    return value


def _text(value: Any, path: str, what: str = "a non-empty string") -> str:
    if isinstance(value, bool) or value is None:
        raise _Wrong(path, f"{what}; quote it, as YAML reads unquoted yes, no, on, off, true, false, null"
                     " and ~ as something else", value)
    if not isinstance(value, (str, int)) or not str(value).strip():
        raise _Wrong(path, what, value)
    if not str(value).isprintable():
        raise _Wrong(path, what + " without control characters", value)
    return str(value).strip()


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Wrong(path, "true or false", value)
    return value


def _schema(raw: object) -> ClinicalSchema:
    if not isinstance(raw, dict):
        raise _Wrong("", "a mapping with patient_id and columns (see docs/clinical.md)", raw)
    top = _mapping(raw, "", ("patient_id", "columns", "encoding", "missing_values"), ("patient_id",))
    encoding = top.get("encoding") or "auto"
    if encoding not in ENCODINGS:
        raise _Wrong("encoding", f"one of {', '.join(ENCODINGS)}", encoding)
    missing = top.get("missing_values") or []
    if not isinstance(missing, list):
        raise _Wrong("missing_values", "a list of markers that mean no value, such as [NULL, N/A]", missing)
    # An unquoted NULL in YAML is null: the officer meant the text.
    missing_values = frozenset(
        normalise_code(_text("null" if v is None else v, f"missing_values[{i}]", "a marker such as NULL"))
        for i, v in enumerate(missing)
    )
    patient_id = _patient_id(top["patient_id"])
    raw_columns = top.get("columns") or {}
    if not isinstance(raw_columns, dict):
        raise _Wrong("columns", "a mapping of output column name to its declaration", raw_columns)
    kept: list[KeptColumn] = []
    dropped: list[DroppedColumn] = []
    for name, spec in raw_columns.items():
        column = _column(name, spec)
        if isinstance(column, DroppedColumn):
            dropped.append(column)
        else:
            kept.append(column)
    _check_headers(patient_id, kept, dropped)
    for column in kept:
        clash = missing_values & set(column.lookup or ())
        if clash:
            raise _Wrong("missing_values", f"markers that are not also codes of columns.{column.name}", sorted(clash))
    return ClinicalSchema(patient_id, tuple(kept), tuple(dropped), encoding, missing_values)


def _patient_id(value: Any) -> PatientIdColumn:
    spec = _mapping(value, "patient_id", ("column", "issuer", "issuer_column", "pattern"), ("column", "issuer"))
    pattern = None
    if spec.get("pattern") is not None:
        text = _text(spec["pattern"], "patient_id.pattern", "a regular expression")
        try:
            pattern = re.compile(text)
        except re.error as exc:
            raise _Wrong("patient_id.pattern", f"a regular expression ({exc.msg})", text) from None
    issuer_column = spec.get("issuer_column")
    return PatientIdColumn(
        header=_text(spec["column"], "patient_id.column", "the header of the column holding the patient identifier"),
        issuer=_text(spec["issuer"], "patient_id.issuer", "the issuer of the identifier, as the PACS knows it"),
        issuer_column=None if issuer_column is None else _text(issuer_column, "patient_id.issuer_column"),
        pattern=pattern,
    )


_COMMON = ("type", "header", "required", "drop")
_KEYS: dict[ColumnType, tuple[str, ...]] = {
    ColumnType.DATE: (*_COMMON, "formats", "range"),
    ColumnType.DATETIME: (*_COMMON, "formats", "range"),
    ColumnType.INTEGER: (*_COMMON, "range", "generalise"),
    ColumnType.NUMBER: (*_COMMON, "range"),
    ColumnType.CODE: (*_COMMON, "allowed", "aliases"),
}
_TYPES = ", ".join(t.value for t in ColumnType)
_FREE_TEXT = ("text", "string", "str", "free_text", "freetext", "free text")


def _column(name: Any, spec: Any) -> KeptColumn | DroppedColumn:
    path = f"columns.{name}"
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == PSEUDONYM_COLUMN:
        raise _Wrong(path, "an output column name: lower case letters, digits and _, starting with a letter,"
                     f" not {PSEUDONYM_COLUMN} (header: gives the column's name in the file)")
    if not isinstance(spec, dict):
        raise _Wrong(path, f"a mapping with type ({_TYPES}) or drop: true", spec)
    header = _text(spec["header"], f"{path}.header") if spec.get("header") is not None else name
    if spec.get("drop") is not None and _bool(spec["drop"], f"{path}.drop"):
        _mapping(spec, path, ("drop", "header", "identifying"))
        identifying = spec.get("identifying")
        return DroppedColumn(name, header, identifying is not None and _bool(identifying, f"{path}.identifying"))
    kind = spec.get("type")
    if isinstance(kind, str) and kind.strip().casefold() in _FREE_TEXT:
        raise _Wrong(f"{path}.type", "free text cannot be kept (it can carry names): declare the column"
                     " drop: true, or type: code with its allowed values", kind)
    try:
        column_type = ColumnType(kind)
    except ValueError:
        raise _Wrong(f"{path}.type", f"one of {_TYPES} (or drop: true)", kind) from None
    _mapping(spec, path, _KEYS[column_type])
    required = spec.get("required")
    column = KeptColumn(name, header, column_type, required=required is not None and _bool(required, f"{path}.required"))
    if column_type in (ColumnType.DATE, ColumnType.DATETIME):
        return _dated(column, spec, path)
    if column_type == ColumnType.CODE:
        return _code(column, spec, path)
    return _numeric(column, spec, path)


def _dated(column: KeptColumn, spec: dict[str, Any], path: str) -> KeptColumn:
    raw = spec.get("formats")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _Wrong(f"{path}.formats", "a list of strptime formats such as ['%d/%m/%Y', '%Y-%m-%d']", raw)
    formats = tuple(_format(f, f"{path}.formats[{i}]", column.type) for i, f in enumerate(raw))
    date_range = None
    if spec.get("range") is not None:
        low, high = _pair(spec["range"], f"{path}.range", "two dates [low, high] as YYYY-MM-DD", _as_date)
        date_range = (low, high)
    return replace(column, formats=formats, date_range=date_range)


def _format(value: Any, path: str, column_type: ColumnType) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Wrong(path, "a strptime format such as '%d/%m/%Y'", value)
    directives = set(_DIRECTIVE.findall(value.replace("%%", "")))
    unknown = directives - _DATE_DIRECTIVES - _TIME_DIRECTIVES
    if "y" in unknown:
        raise _Wrong(path, "a four-digit year (%Y): a two-digit year makes the agent guess the century", value)
    if unknown:
        raise _Wrong(path, "only %Y %m %d %b %B for dates and %H %M %S %f %I %p for times", value)
    if "Y" not in directives or "d" not in directives or not directives & set("mbB"):
        raise _Wrong(path, "a format with a year (%Y), a month (%m, %b or %B) and a day (%d)", value)
    has_time = bool(directives & _TIME_DIRECTIVES)
    if column_type == ColumnType.DATE and has_time:
        raise _Wrong(path, "a date without a time (use type: datetime for dates with times)", value)
    if column_type == ColumnType.DATETIME and not ({"H", "M"} <= directives or {"I", "M", "p"} <= directives):
        raise _Wrong(path, "a date with hours and minutes (%H:%M, or %I:%M %p)", value)
    if ("I" in directives) != ("p" in directives):
        raise _Wrong(path, "%I (12-hour clock) goes with %p (AM/PM)", value)
    return value


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):  # YAML reads an unquoted 2020-01-01 as a date
        return value
    if isinstance(value, str):
        return date.fromisoformat(value.strip())
    raise ValueError(value)


def _as_number(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    number = Decimal(str(value).strip())
    if not number.is_finite():
        raise ValueError(value)
    return number


def _pair(value: Any, path: str, expected: str, convert: Any) -> tuple[Any, Any]:
    if not isinstance(value, list) or len(value) != 2:
        raise _Wrong(path, expected, value)
    try:
        low, high = convert(value[0]), convert(value[1])
    except (ValueError, TypeError, InvalidOperation):
        raise _Wrong(path, expected, value) from None
    if low > high:
        raise _Wrong(path, expected + ", low <= high", value)
    return low, high


def _numeric(column: KeptColumn, spec: dict[str, Any], path: str) -> KeptColumn:
    # A range is required: an identifier is a number too, and a range is what stops a column of
    # hospital or NHS numbers from leaving as "numbers".
    if spec.get("range") is None:
        raise _Wrong(f"{path}.range", "required for integer and number columns: two numbers [low, high]")
    low, high = _pair(spec["range"], f"{path}.range", "two numbers [low, high]", _as_number)
    if column.type == ColumnType.INTEGER and (low != low.to_integral_value() or high != high.to_integral_value()):
        raise _Wrong(f"{path}.range", "two whole numbers [low, high] for an integer column", spec["range"])
    bands = None
    if spec.get("generalise") is not None:
        bands = _bands(spec["generalise"], f"{path}.generalise")
    return replace(column, number_range=(low, high), bands=bands)


def _bands(value: Any, path: str) -> Bands:
    spec = _mapping(value, path, ("band", "top"), ("band",))
    width, top = spec["band"], spec.get("top")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise _Wrong(f"{path}.band", "a whole number of at least 1 (the width of each band)", width)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int)):
        raise _Wrong(f"{path}.top", "a whole number: values from it up become one band, such as 90+", top)
    return Bands(width, top)


def _code(column: KeptColumn, spec: dict[str, Any], path: str) -> KeptColumn:
    raw = spec.get("allowed")
    if not isinstance(raw, list) or not raw:
        raise _Wrong(f"{path}.allowed", "a list of the values the column may hold", raw)
    allowed = tuple(_text(v, f"{path}.allowed[{i}]", "a code (text or a whole number)") for i, v in enumerate(raw))
    lookup = {normalise_code(code): code for code in allowed}
    if len(lookup) != len(allowed):
        raise _Wrong(f"{path}.allowed", "codes that differ other than by case and spacing", raw)
    aliases = spec.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise _Wrong(f"{path}.aliases", "a mapping of a value found in files to the allowed code it means", aliases)
    for found, meant in aliases.items():
        key_path = f"{path}.aliases.{found}"
        key = normalise_code(_text(found, key_path, "a value as found in files"))
        target = _text(meant, key_path, "one of the allowed codes")
        if target not in allowed:
            raise _Wrong(key_path, f"one of the allowed codes ({', '.join(allowed)})", meant)
        if lookup.get(key, target) != target:
            raise _Wrong(key_path, "an alias that is not already another allowed code", meant)
        lookup[key] = target
    return replace(column, allowed=allowed, lookup=lookup)


def _check_headers(patient_id: PatientIdColumn, kept: list[KeptColumn], dropped: list[DroppedColumn]) -> None:
    """Each file column has one fate: the identifier column cannot also be kept, nor a column twice."""
    seen = {normalise_header(patient_id.header): "patient_id.column"}
    if patient_id.issuer_column is not None:
        if normalise_header(patient_id.issuer_column) in seen:
            raise _Wrong("patient_id.issuer_column", "a column other than patient_id.column", patient_id.issuer_column)
        seen[normalise_header(patient_id.issuer_column)] = "patient_id.issuer_column"
    columns: list[KeptColumn | DroppedColumn] = [*kept, *dropped]
    for column in columns:
        key = normalise_header(column.header)
        if key in seen:
            where = f"columns.{column.name}" + (".header" if column.header != column.name else "")
            raise _Wrong(where, f"a file column not already declared by {seen[key]}", column.header)
        seen[key] = f"columns.{column.name}"
