"""Logging: structlog JSON lines on stdout, configured once at start-up.

Events are snake_case facts (`instance_stored`, `study_quarantined`) with pseudonymous fields
only: opaque study keys, pseudonyms, reason codes, AE titles and addresses of peers. Exceptions
are rendered without local variables (they would print identifiers), and pynetdicom's own DIMSE
dumps, which carry UIDs, are switched off.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from typing import Any

import structlog


def configure(level: str = "info") -> None:
    """JSON to stdout; stdlib records (pynetdicom's) go through the same renderer."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)), structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.JSONRenderer()],
        foreign_pre_chain=shared,
    ))
    handler.addFilter(_withhold_library_text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    warnings.showwarning = _show_warning
    threading.excepthook = _thread_failed
    # pynetdicom logs each DIMSE message, with UIDs, at INFO and DEBUG; httpx logs each request's
    # URL at INFO and httpcore/h2/hpack trace headers (the bearer token) at DEBUG; watchdog logs
    # each inotify event of the clinical drop folder, with the file's name (an export may be named
    # after its patient), at DEBUG: warnings only.
    for name in ("pynetdicom", "httpx", "httpcore", "h2", "hpack", "watchdog"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # pydicom's warnings about a damaged value quote the value ("Invalid value for VR UI: '...'"),
    # and a sender controls it: its own logger stays silent, the agent says what went wrong; and
    # whatever pydicom or pynetdicom still log, or `warnings` raises, goes out without its text.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


#: Libraries that read what a sender sent: their messages can quote it (a non-conformant UID built
#: from an accession number, a name in a value pydicom complains about, the name of a file dropped
#: in the clinical drop folder).
_QUOTING = ("pydicom", "pynetdicom", "py.warnings", "watchdog")


def _withhold_library_text(record: logging.LogRecord) -> bool:
    """A library record keeps its level, logger and where it came from, never its text or its
    exception's (which may quote a value); the agent's own events say what happened."""
    if record.name.startswith(_QUOTING):
        record.msg = f"library_message from {record.name}:{record.funcName} (text withheld: it may quote what a sender sent)"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
    return True


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Every `warnings.warn` (pydicom's quote values): one JSON line with its category and where,
    never its text, and never raw on stderr."""
    module = filename.rsplit("site-packages/", 1)[-1]
    structlog.get_logger("warnings").warning("library_warning", category=category.__name__,
                                             where=f"{module}:{lineno}")


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a thread (a library's, pynetdicom's reader): its type and the
    thread, never its text or traceback, which may quote what a sender sent."""
    structlog.get_logger("threads").error("thread_failed", thread=getattr(args.thread, "name", None),
                                          error=getattr(args.exc_type, "__name__", "unknown"))


def get(name: str) -> Any:
    return structlog.get_logger(name)
