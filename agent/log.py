"""Logging: structlog JSON lines on stdout, configured once at start-up.

Events are snake_case facts (`instance_stored`, `study_quarantined`) with pseudonymous fields
only: opaque study keys, pseudonyms, reason codes, AE titles and addresses of peers. Exceptions
are rendered without local variables (they would print identifiers), and pynetdicom's own DIMSE
dumps, which carry UIDs, are switched off.
"""

from __future__ import annotations

import logging
import sys
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # pynetdicom logs each DIMSE message, with UIDs, at INFO and DEBUG; httpx logs each request's
    # URL at INFO and httpcore/h2/hpack trace headers (the bearer token) at DEBUG: warnings only.
    for name in ("pynetdicom", "httpx", "httpcore", "h2", "hpack"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # pydicom's warnings about a damaged value quote the value ("Invalid value for VR UI: '...'"),
    # and a sender controls it: its own logger stays silent, the agent says what went wrong.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def get(name: str) -> Any:
    return structlog.get_logger(name)
