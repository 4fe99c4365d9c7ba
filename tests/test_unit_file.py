"""The packaged systemd unit: hardened to the score the docs give, and what the agent needs kept."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "nmip-agent.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_scores_2_or_less_in_systemd_analyze_security() -> None:
    run = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for nmip-agent\.service: ([\d.]+)", run.stdout)
    assert found is not None, run.stdout + run.stderr
    assert float(found.group(1)) <= 2.0, run.stdout


def test_the_unit_notifies_and_keeps_port_104_without_root() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "SystemCallFilter=@system-service", "UMask=0077",
                 "Restart=on-failure", "StateDirectory=nmip-agent", "NoNewPrivileges=yes", "MemoryMax=", "TasksMax="):
        assert line in text, line
