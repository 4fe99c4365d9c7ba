"""One dropped file made ready for upload: its batch id, its pseudonymised table, its rejects report.

The rejects report stays on site but may be sent to support, so it holds row numbers, column
names and problems only, never a value. The log line holds counts and the batch id only: not even
the file's name, which a hospital export may have built from a patient's name or number.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import log
from agent.clinical.schema import ClinicalSchema
from agent.clinical.table import TableResult, pseudonymise_table
from agent.deidentify.pseudonym import Pseudonymiser
from agent.spool.store import save_file

_log = log.get("clinical")
REPORT_SUFFIX = ".rejects.csv"


@dataclass(frozen=True)
class PreparedFile:
    """A file checked and pseudonymised; upload `result.csv` as `{clinical_url}/{batch}.csv`."""

    batch: str
    result: TableResult
    report: Path | None


def batch_id(data: bytes, pseudonyms: Pseudonymiser) -> str:
    """The file's upload name: keyed, opaque, and the same for the same bytes.

    The same file dropped again (or re-read after a crash) overwrites its earlier upload instead of
    duplicating it. Keyed, so the platform cannot confirm a guess of a file's content.
    """
    return pseudonyms.opaque_name("clinical-file:" + hashlib.sha256(data).hexdigest())


def write_rejects_report(folder: Path, batch: str, result: TableResult) -> Path | None:
    """Write `{batch}.rejects.csv` (row, column, problem), 0600 in a 0700 folder; None when clean.

    A file-level refusal is the first line, with an empty row and column. A stale report for the
    same batch (an earlier run under another schema) is removed when the file is now clean.
    """
    path = folder / f"{batch}{REPORT_SUFFIX}"
    if result.refused is None and not result.rejects:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["row", "column", "problem"])
    if result.refused is not None:
        writer.writerow(["", "", _cell(f"file refused: {result.refused}")])
    for problem in result.rejects:
        writer.writerow([problem.row, _cell(problem.column), _cell(problem.problem)])
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    save_file(path, buffer.getvalue().encode("utf-8"), mode=0o600)
    return path


def _cell(text: str) -> str:
    """Keep a spreadsheet from reading a cell as a formula when support opens the report."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def prepare_file(path: Path, schema: ClinicalSchema, pseudonyms: Pseudonymiser, rejects: Path,
                 read: Callable[[Path], bytes] = Path.read_bytes,
                 opted_out: Callable[[str], bool] | None = None) -> PreparedFile:
    """Read a complete dropped file, pseudonymise it, write its rejects report, log one line.

    Raises OSError when the file cannot be read (gone, or permissions): the caller tries again at
    its next look. The message of an OSError names the path, so it must not be logged as it is.
    """
    data = read(path)
    batch = batch_id(data, pseudonyms)
    result = pseudonymise_table(data, schema, pseudonyms, opted_out)
    report = write_rejects_report(rejects, batch, result)
    event = _log.warning if result.refused is not None or result.rejects else _log.info
    event(
        "clinical_file_checked",
        batch=batch,
        rows_in=result.rows_in,
        rows_out=result.rows_out,
        rows_rejected=result.rows_rejected,
        rows_opted_out=result.rows_opted_out,
        problems=len(result.rejects),
        refused=None if result.refused_reason is None else result.refused_reason.value,
    )
    return PreparedFile(batch, result, report)
