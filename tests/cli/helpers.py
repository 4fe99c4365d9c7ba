"""Helpers for the CLI tests: run the real `nmip-agent` console script, find sample files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_SCRIPT = Path(sys.executable).with_name("nmip-agent")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "agent.cli"]

@dataclass
class Run:
    """One finished invocation: what a user sees."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


def nmip(*args: object, cwd: Path) -> Run:
    """Run `nmip-agent ARGS...` in `cwd` with a wide, colourless console."""
    env = {k: v for k, v in os.environ.items() if k not in {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}}
    env.update(COLUMNS="250", NO_COLOR="1")
    argv = [str(a) for a in args]
    proc = subprocess.run(COMMAND + argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return Run(argv, proc.returncode, proc.stdout, proc.stderr)


def make_key(folder: Path) -> Path:
    """A new key made the way a site makes one: `nmip-agent keys init`."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "site.key"
    run = nmip("keys", "init", "--key-file", key, cwd=folder)
    assert run.returncode == 0, run.output
    return key


def sample(name: str) -> Path:
    """A pydicom test file (installed with pydicom or pydicom-data)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    assert found is not None, f"pydicom test file {name} is not installed"
    return Path(found)


def deid_sample(relative: str) -> Path:
    """A file of the deid-data package, e.g. 'dicom-cookies/image1.dcm'."""
    import deid_data as package

    path = Path(package.__file__).parent / "data" / relative
    assert path.is_file(), path
    return path
