"""support-bundle's log.jsonl: the agent's own events only, never a library's text in the same JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.support import _log_lines


def test_only_the_agents_events_and_withheld_library_records_go_into_the_bundle(tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [
        {"event": "study_deidentified", "study_key": "6848412f", "level": "info"},
        {"event": "platform_tls_failed", "kind": "tls", "level": "error"},
        {"event": "library_message from pynetdicom.utils:set_uid (text withheld: it may quote what a sender sent)",
         "level": "warning"},
        # A library's own text through the same renderer (watchdog at debug named the dropped file).
        {"event": "in-event PathedInotifyEvent(ev=<InotifyEvent: mask=IN_CREATE, name='SMITH_JOHN_RXX123456.csv'>)",
         "level": "debug"},
        {"event": "exception calling callback for <Future at 0x7f state=finished raised ValueError>", "level": "error"},
        {"event": 3},
    ]
    log = tmp_path / "agent.log"
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json: SMITH\n")
    kept = [json.loads(line)["event"] for line in _log_lines(log).splitlines()]
    assert kept == [lines[0]["event"], lines[1]["event"], lines[2]["event"]]
