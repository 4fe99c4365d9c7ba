"""Clinical CSV data: a watched drop folder, a declared schema, rows pseudonymised like the images.

    schema.py   parse_schema: the IG officer's declaration, checked whole at start-up
    table.py    pseudonymise_table: bytes in, valid rows out (same pseudonym, same date offset)
    prepare.py  prepare_file, batch_id, write_rejects_report: one dropped file ready for upload
    drop.py     DropFolder: which dropped files are complete, and a watchdog wake-up

The daemon builds the schema once (`parse_schema(config.clinical.schema, config.source)`), then
for each path `DropFolder.ready()` lists, calls `prepare_file`, uploads `result.csv` as
`{clinical_url}/{batch}.csv` when `result.refused` is None, and calls `DropFolder.finish`.
The schema reference is docs/clinical.md.
"""

from agent.clinical.drop import DropFolder
from agent.clinical.prepare import PreparedFile, batch_id, prepare_file, write_rejects_report
from agent.clinical.schema import PSEUDONYM_COLUMN, ClinicalSchema, ColumnType, parse_schema
from agent.clinical.table import RefusedReason, RowProblem, TableResult, pseudonymise_table

__all__ = [
    "PSEUDONYM_COLUMN",
    "ClinicalSchema",
    "ColumnType",
    "DropFolder",
    "PreparedFile",
    "RefusedReason",
    "RowProblem",
    "TableResult",
    "batch_id",
    "parse_schema",
    "prepare_file",
    "pseudonymise_table",
    "write_rejects_report",
]
