"""The configuration: defaults, relative paths, and a clear stop on every wrong key or value."""

from __future__ import annotations

import shutil
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
        ("receive: {allowed_peers: [{ae_title: PACS}]}\n", "receive.allowed_peers: entry 1 (counting from 1): address is missing"),
        ("receive: {allowed_peers: [{ae_title: PACS, address: 10.0.0.1}, {ae_title: RIS, adress: 10.0.0.2}]}\n",
         "receive.allowed_peers: entry 2 (counting from 1): unknown key 'adress'; expected ae_title and address"),
        ("pipeline: {quiet_period_s: -1}\n", "pipeline.quiet_period_s: a number from 0 to 86400"),
        ("log: {level: loud}\n", "log.level: one of debug, info, warning, error"),
        ("receive: [1, 2]\n", "receive: expected a mapping"),
        ("platform: {dicomweb_url: 'https://svc:S3cretPw@platform.example.org/dicom-web'}\n",
         "platform.dicomweb_url: an https:// URL without user or password in it"),
        ("receive: {port: 1\n", "not valid YAML: expected ',' or '}', but got '<stream end>' at the end of the file (line 1)"),
        ("receive: {processes: 0}\n", "receive.processes: an integer from 1 to 32"),
        ("platform: {dicomweb_url: 'http://platform/dicom-web'}\n", "platform.dicomweb_url: an https:// URL"),
        ("platform: {dicomweb_url: 'https://p/dicom-web'}\n", "platform.manifest_url: required when dicomweb_url"),
        ("platform: {dicomweb_url: 'https://p/dw', manifest_url: 'https://p/m', token_file: t}\n",
         "platform.ca_bundle: required"),
        ("platform: {dicomweb_url: 'https://p/dw', manifest_url: 'https://p/m', ca_bundle: ca.pem}\n",
         "platform.client_certificate: one of client_certificate, token_file or oauth2_token_url"),
        ("platform: {dicomweb_url: 'https://p/dw', manifest_url: 'https://p/m', ca_bundle: ca.pem,"
         " client_certificate: c.pem}\n", "platform.client_key: client_certificate and client_key go together"),
        ("platform: {upload_window: '7pm-7am'}\n", "platform.upload_window: HH:MM-HH:MM"),
        ("platform: {token: abc}\n", "platform.token: unknown key"),
        ("platform: {proxy: 'http://user:secret@proxy:3128'}\n", "platform.proxy: the site's forward proxy"),
        ("clinical: {after_upload: keep}\n", "clinical.after_upload: one of archive, purge"),
        ("receive: {tls: on}\n", "receive.tls: a mapping with certificate, key, ca_bundle"),
        ("receive: {tls: {certificate: agent.pem, key: agent.key}}\n",
         "receive.tls: ca_bundle is missing: certificate, key, ca_bundle go together"),
        ("receive: {tls: {certificate: agent.pem, key: agent.key, ca: ca.pem}}\n",
         "receive.tls: unknown key 'ca'; expected certificate, key, ca_bundle"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    """A wrong key, type or value stops start-up with the file, the key and what is expected."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_a_proxy_url_with_a_password_is_refused_without_repeating_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("platform: {proxy: 'http://user:s3cret-pw@proxy:3128'}\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "platform.proxy" in str(info.value) and "s3cret-pw" not in str(info.value)


def test_serve_with_a_bad_config_exits_2_with_the_key(tmp_path: Path) -> None:
    """`nmip-agent serve` with a wrong value prints the file and key and exits 2, before listening."""
    import subprocess
    import sys

    path = tmp_path / "c.yaml"
    path.write_text("receive: {port: 0}\n")
    run = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "receive.port" in run.stderr


def test_serve_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    """Secrets come from files only the agent may read: serve names the key and the fix, exits 2."""
    import subprocess
    import sys

    from agent.keys import init_key_file
    from tests.peers.certs import make_pki

    init_key_file(tmp_path / "site.key")
    shutil.copy(make_pki(tmp_path / "pki").ca_certificate, tmp_path / "ca.pem")
    token = tmp_path / "token"
    token.write_text("secret-token-value\n")
    token.chmod(0o644)
    path = tmp_path / "c.yaml"
    path.write_text("pipeline: {key_file: site.key}\nplatform: {dicomweb_url: 'https://127.0.0.1:1/dicom-web',"
                    " manifest_url: 'https://127.0.0.1:1/m', ca_bundle: ca.pem, token_file: token}\n")
    run = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "platform.token_file" in run.stderr and "chmod 600" in run.stderr
    assert "secret-token-value" not in run.stderr + run.stdout
    # Refused before anything was made on disk: no state database, spool or outbox left behind.
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ["c.yaml", "ca.pem", "pki", "site.key", "token"], made


def test_packaged_config_shows_every_key_the_example_shows() -> None:
    """The packaged service's config is the example with system paths: no key missing from it."""
    def keys(path: Path) -> list[str]:
        found, section = [], ""
        for line in path.read_text().splitlines():
            if line and not line.startswith((" ", "#")) and line.rstrip().endswith(":"):
                section = line.rstrip()[:-1]
            elif line.startswith("  ") and not line.strip().startswith(("#", "-")) and ":" in line:
                found.append(f"{section}.{line.split(':')[0].strip()}")
        return found

    assert keys(REPO / "packaging" / "config.yaml") == keys(REPO / "config.example.yaml")


def test_packaged_config_keeps_state_under_var_lib() -> None:
    """The packaged service's config loads and keeps everything under /var/lib/nmip-agent."""
    config = load(REPO / "packaging" / "config.yaml")
    for path in (config.spool.directory, config.pipeline.database, config.pipeline.outbox,
                 config.pipeline.quarantine, config.pipeline.key_file):
        assert str(path).startswith("/var/lib/nmip-agent/")


def _tls_config(tmp_path: Path, **files: Path) -> Path:
    """A config whose receive.tls names the agent's certificate, key and the PACS's CA (relative paths)."""
    from tests.peers.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    chosen = {"certificate": pki.server_certificate, "key": pki.server_key, "ca_bundle": pki.ca_certificate, **files}
    path = tmp_path / "c.yaml"
    tls = ", ".join(f"{key}: {value.relative_to(tmp_path)}" for key, value in chosen.items())
    path.write_text(f"pipeline: {{key_file: site.key}}\nreceive: {{tls: {{{tls}}}}}\n")
    return path


def test_receive_tls_paths_are_relative_to_the_config_and_build_a_tls_1_2_context(tmp_path: Path) -> None:
    import ssl

    from agent.receive_tls import server_context

    config = load(_tls_config(tmp_path))
    tls = config.receive.tls
    assert tls is not None and tls.key == tmp_path / "pki" / "server.key" and tls.ca_bundle.is_absolute()
    context = server_context(tls, config.source)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("key open to the group", "receive.tls.key: {pki}/server.key is open to its group (mode 0640); chmod 600 it"),
        ("missing certificate", "receive.tls.certificate: {pki}/missing.pem: cannot read (No such file or directory)"),
        ("key of another certificate", "receive.tls.key: {pki}/client.key and receive.tls.certificate"
                                       " {pki}/server.pem are not a matching PEM certificate and unencrypted key"),
        ("CA bundle that is no certificate", "receive.tls.ca_bundle: {pki}/ca.key: no PEM CA certificate in it"),
    ],
)
def test_receive_tls_files_are_checked_with_the_key_named(tmp_path: Path, case: str, message: str) -> None:
    """Each receive.tls file must be readable, the key private and matching the certificate."""
    from agent.receive_tls import server_context

    pki = tmp_path / "pki"
    files = {"key open to the group": {}, "missing certificate": {"certificate": pki / "missing.pem"},
             "key of another certificate": {"key": pki / "client.key"},
             "CA bundle that is no certificate": {"ca_bundle": pki / "ca.key"}}[case]
    config = load(_tls_config(tmp_path, **files))
    if case == "key open to the group":
        (pki / "server.key").chmod(0o640)
    assert config.receive.tls is not None
    with pytest.raises(ConfigError) as info:
        server_context(config.receive.tls, config.source)
    assert str(info.value) == f"{config.source}: " + message.format(pki=pki)


def test_serve_refuses_a_tls_key_others_can_read_before_creating_anything(tmp_path: Path) -> None:
    """A receive.tls.key others may read stops serve with the key's name and the fix, exit 2,
    before any state is made on disk."""
    import subprocess
    import sys

    from agent.keys import init_key_file

    init_key_file(tmp_path / "site.key")
    path = _tls_config(tmp_path)
    (tmp_path / "pki" / "server.key").chmod(0o644)
    run = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "receive.tls.key" in run.stderr and "readable by others" in run.stderr and "chmod 600" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "pki", "site.key"]
