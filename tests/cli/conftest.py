"""Fixtures of the CLI tests: one site key per module, made with `nmip-agent keys init`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import make_key, nmip


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's site key, made once with `keys init`."""
    return make_key(tmp_path_factory.mktemp("key"))


@pytest.fixture(scope="module")
def key_id(key_file: Path) -> str:
    """The key's public fingerprint, as `keys id` prints it."""
    run = nmip("keys", "id", "--key-file", key_file, cwd=key_file.parent)
    assert run.returncode == 0, run.output
    return run.stdout.strip()
