"""Scenario tests run real daemons: none may outlive its test, even when an assertion fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scenarios.daemon import Daemon


@pytest.fixture(autouse=True)
def no_daemon_left_running() -> Iterator[None]:
    yield
    for daemon in list(Daemon.running):
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()
        Daemon.running.discard(daemon)
