"""The configuration: defaults, relative paths, and a clear stop on every wrong key or value."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load

REPO = Path(__file__).resolve().parents[1]


def test_example_config_loads_with_documented_values() -> None:
    """config.example.yaml is valid, and its paths land under ./var/ next to it."""
    config = load(REPO / "config.example.yaml")
    assert config.receive.port == 11112 and config.pipeline.quiet_period_s == 60
    assert config.spool.directory == REPO / "var" / "spool"
    assert {(p.ae_title, p.address) for p in config.receive.allowed_peers} >= {("STORESCU", "127.0.0.1")}


def test_every_key_of_the_example_is_documented_with_its_default() -> None:
    """Each key line in config.example.yaml says its default, so an operator never has to guess."""
    for line in (REPO / "config.example.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "-")) and not stripped.endswith(":") and ":" in stripped:
            assert "default" in line, line


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file is every default."""
    path = tmp_path / "c.yaml"
    path.write_text("")
    config = load(path)
    assert config.receive.ae_title == "NMIP_AGENT" and config.receive.allowed_peers == ()
    assert config.pipeline.database == tmp_path / "var" / "state.sqlite"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recieve: {}\n", "unknown section 'recieve'"),
        ("receive: {prot: 1}\n", "receive.prot: unknown key"),
        ("receive: {port: eleven}\n", "receive.port: an integer from 1 to 65535, got 'eleven'"),
        ("receive: {port: 70000}\n", "receive.port: an integer from 1 to 65535"),
        ("receive: {ae_title: THIS_AE_TITLE_IS_TOO_LONG}\n", "receive.ae_title: an AE title"),
        ("receive: {bind_address: localhost}\n", "receive.bind_address: an IP address"),
        ("receive: {allowed_peers: [{ae_title: PACS}]}\n", "receive.allowed_peers: entry 0: a mapping with exactly"),
        ("pipeline: {quiet_period_s: -1}\n", "pipeline.quiet_period_s: a number from 0 to 86400"),
        ("log: {level: loud}\n", "log.level: one of debug, info, warning, error"),
        ("receive: [1, 2]\n", "receive: expected a mapping"),
        ("receive: {port: 1\n", "not valid YAML at line"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    """A wrong key, type or value stops start-up with the file, the key and what is expected."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_serve_with_a_bad_config_exits_2_with_the_key(tmp_path: Path) -> None:
    """`nmip-agent serve` with a wrong value prints the file and key and exits 2, before listening."""
    import subprocess
    import sys

    path = tmp_path / "c.yaml"
    path.write_text("receive: {port: 0}\n")
    run = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "receive.port" in run.stderr


def test_packaged_config_keeps_state_under_var_lib() -> None:
    """The packaged service's config loads and keeps everything under /var/lib/nmip-agent."""
    config = load(REPO / "packaging" / "config.yaml")
    for path in (config.spool.directory, config.pipeline.database, config.pipeline.outbox,
                 config.pipeline.quarantine, config.pipeline.key_file):
        assert str(path).startswith("/var/lib/nmip-agent/")
