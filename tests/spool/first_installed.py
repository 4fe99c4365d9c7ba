"""The state database as sites first installed it (schema version 0), for upgrade tests: what
each later migration added is taken away again. A new migration adds its undoing here."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def take_back_to_version_0(database: Path) -> None:
    db = sqlite3.connect(database)
    try:
        for index in ("studies_by_pseudonym", "studies_by_link", "studies_unsettled"):  # 3
            db.execute(f"DROP INDEX {index}")
        db.execute("ALTER TABLE studies DROP COLUMN patient_link")
        db.execute("ALTER TABLE studies DROP COLUMN delivery_started_at")
        for table in ("optout_tokens", "optout_imports", "study_patients", "retractions", "access_log"):  # 2
            db.execute(f"DROP TABLE {table}")
        db.execute("ALTER TABLE studies DROP COLUMN opted_out_at")
        db.execute("ALTER TABLE studies DROP COLUMN opt_out_settled")
        db.execute("DROP INDEX instances_by_series")  # 1
        db.execute("ALTER TABLE instances DROP COLUMN series_key")
        db.execute("PRAGMA user_version = 0")
        db.commit()
    finally:
        db.close()
