"""Quarantine: where an instance that must not leave goes, with a machine-readable reason.

The quarantine is on site and holds the identifiable source, so a reviewer can look at it and an
operator can release it after a profile fix. Its file names are opaque keyed hashes.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


class Reason(str, enum.Enum):
    """Why an instance was refused. The value is the stable code scripts and reports use."""

    UNKNOWN_SOP_CLASS = "unknown_sop_class"
    ENCAPSULATED_DOCUMENT = "encapsulated_document"
    BURNED_IN_ANNOTATION = "burned_in_annotation"
    BURNED_IN_RISK = "burned_in_risk"
    BURNED_IN_TEXT = "burned_in_text"  # OCR of the output still read identifying text (detail: frame and boxes)
    PIXELS_UNDECODABLE = "pixels_undecodable"  # pixels to mask cannot be decoded or masked here
    NO_PATIENT_ID = "no_patient_id"
    RESIDUAL_IDENTIFIER = "residual_identifier"
    INVALID_OUTPUT = "invalid_output"
    DEIDENTIFICATION_FAILED = "deidentification_failed"
    SERIES_QUARANTINED = "series_quarantined"  # another instance of its series was refused: no series with a hole
    STUDY_QUARANTINED = "study_quarantined"  # the whole-study rule before issue 9: kept to read old records
    UNREADABLE = "unreadable"  # the spooled file cannot be parsed any more
    DUPLICATE_SOP_INSTANCE = "duplicate_sop_instance"  # a batch run met other bytes with the same SOP Instance UID
    PLATFORM_REJECTED = "platform_rejected"  # the central platform refused it; detail: its reason
    RESOURCE_LIMIT = "resource_limit"  # the instance broke a limit of config.yaml's limits section
    # Not refusals: an excluded instance is outside the profile's scope, never sent, never held.
    OUT_OF_SCOPE = "out_of_scope"  # a SOP class the profile does not accept
    EXCLUDED_BY_RULE = "excluded_by_rule"  # a header match of the profile's `exclude:` rules
    OPTED_OUT = "opted_out"  # the patient is on the site's opt-out list (agent/optout.py)


#: The reasons that exclude an instance rather than quarantine it.
EXCLUSIONS = frozenset({Reason.OUT_OF_SCOPE, Reason.EXCLUDED_BY_RULE, Reason.OPTED_OUT})


@dataclass(frozen=True)
class Refusal:
    """The gate's verdict against an instance: a reason code and a detail without any identifier."""

    reason: Reason
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason.value, "detail": self.detail}


def write_atomically(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write `path` so that it appears whole or not at all (temp file in the same folder, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _file_new(path: Path, data: bytes) -> bool:
    """Write `path` whole only if it does not exist; True when it now holds `data` (written here,
    or already there with the same bytes)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return path.read_bytes() == data
    finally:
        os.unlink(tmp)


def quarantine(folder: Path, opaque_name: str, source: bytes | None, refusal: Refusal, *, profile: str,
               other_name: Callable[[], str] | None = None) -> Path:
    """Store the identifiable source as `<opaque>.dcm` with `<opaque>.json` stating why (only the
    record when the source is gone: `file` is then null).

    `other_name` (a batch run): when another source is already filed under `opaque_name` (another
    file with the same SOP Instance UID), it is kept and this one is filed under `other_name()`, a
    keyed name too. The daemon files a resent instance over its earlier copy: that is how a PACS
    corrects one.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if source is None:
        pass
    elif other_name is None:
        write_atomically(folder / f"{opaque_name}.dcm", source)
    elif not _file_new(folder / f"{opaque_name}.dcm", source):
        # Another worker may be filing a file of the same UID at this very moment: the name is
        # claimed with a hard link, which fails if it exists, never by a check and then a write.
        opaque_name = other_name()
        _file_new(folder / f"{opaque_name}.dcm", source)  # the same bytes if it exists: keyed by them
    record = {
        **refusal.as_dict(),
        "profile": profile,
        "quarantined_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file": f"{opaque_name}.dcm" if source is not None else None,
    }
    write_atomically(folder / f"{opaque_name}.json", (json.dumps(record, indent=2) + "\n").encode())
    return folder / f"{opaque_name}.json"
