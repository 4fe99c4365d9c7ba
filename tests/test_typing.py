"""The agent package type-checks under mypy --strict (pyproject.toml [tool.mypy])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_agent_type_checks_strictly() -> None:
    """mypy --strict finds nothing in agent/: types are part of the code's documentation."""
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
