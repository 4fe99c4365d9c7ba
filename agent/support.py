"""`nmip-agent support-bundle`: what a supplier needs to help, and nothing identifying.

The bundle holds the configuration with secrets redacted (a proxy's password; the files that
hold tokens and keys are named, never read), the versions of the agent and what it runs on,
`status --json`, the quarantine's reasons, and the agent's recent log lines (the unit's journal,
or a log file the operator names). All of these are already free of identifiers by design (the
logs carry opaque keys only); the bundle also drops any log line that is not one of the agent's
JSON events, since only those are known to be clean.
"""

from __future__ import annotations

import io
import json
import platform as host
import re
import shutil
import subprocess
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from agent import __version__
from agent.config import Config

_SECRET_URL = re.compile(r"(?<=://)[^/@\s]+@")  # user:password@ in a URL
_LOG_LINES = 5000
_PACKAGES = ("pydicom", "pynetdicom", "deid", "httpx", "numpy", "pylibjpeg", "Pillow", "prometheus-client")


def build(config: Config, out: Path, *, log_file: Path | None = None) -> list[str]:
    """Write the bundle (a .tar.gz, mode 0600) and return the names of its members."""
    from agent.operate import status

    members = {
        "config.yaml": _redacted_config(config.source),
        "versions.json": json.dumps(_versions(), indent=2),
        "status.json": json.dumps(status(config), indent=2, default=str),
        "log.jsonl": _log_lines(log_file),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as archive:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"nmip-agent-support/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            archive.addfile(info, io.BytesIO(data))
    out.chmod(0o600)
    return list(members)


def _redacted_config(path: Path) -> str:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "# the configuration could not be read\n"
    for section in data.values() if isinstance(data, dict) else []:
        for key, value in section.items() if isinstance(section, dict) else []:
            if isinstance(value, str):  # any user:password@ in a URL (serve refuses them but for the proxy)
                section[key] = _SECRET_URL.sub("REDACTED@", value)
    return f"# {path} (secrets are in files it names, which are not included)\n" + yaml.safe_dump(data, sort_keys=False)


def _versions() -> dict[str, Any]:
    found: dict[str, Any] = {"nmip-agent": __version__, "python": host.python_version(), "platform": host.platform()}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    tesseract = shutil.which("tesseract")
    if tesseract:
        run = subprocess.run([tesseract, "--version"], capture_output=True, text=True, timeout=30)
        found["tesseract"] = (run.stdout or run.stderr).splitlines()[0] if (run.stdout or run.stderr) else None
    return found


def _log_lines(log_file: Path | None) -> str:
    """The agent's last JSON events: from the file named, else the unit's journal."""
    if log_file is not None:
        try:
            lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_LINES:]
        except OSError as exc:
            return json.dumps({"note": f"log file not read ({exc.strerror})"}) + "\n"
    elif shutil.which("journalctl"):
        run = subprocess.run(["journalctl", "-u", "nmip-agent", "-n", str(_LOG_LINES), "-o", "cat", "--no-pager"],
                             capture_output=True, text=True, timeout=60)
        lines = run.stdout.splitlines()
    else:
        return json.dumps({"note": "no journal here; name a log file with --log"}) + "\n"
    return "".join(line + "\n" for line in lines if _is_agent_event(line))


#: The agent's own events are snake_case facts; a library's record keeps only where it came from
#: (agent.log). Any other JSON line with an "event" is a library's text rendered by the same
#: renderer, which may quote what it read (watchdog's debug lines named the dropped files).
_AGENT_EVENT = re.compile(r"[a-z][a-z0-9_]*|library_message from [\w.]+:\w+ \(text withheld[^()]*\)")


def _is_agent_event(line: str) -> bool:
    """Only the agent's own JSON events are known to carry no identifier."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and isinstance(event.get("event"), str) and bool(_AGENT_EVENT.fullmatch(event["event"]))
