"""DICOM over TLS (`receive.tls`) against the real daemon: DCMTK's echoscu and storescu with +tls as
the PACS. A client certificate from the configured CA is required, TLS 1.2 or later; everything
else is refused before a DICOM PDU is read, with a log line, and nothing is stored. A client that
connects and says nothing holds only its own connection."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.peers.certs import Pki, make_pki
from tests.peers.dcmtk import dcmtk_available, echoscu, storescu
from tests.scenarios.daemon import Daemon, wait_for
from tests.synthetic import Patient, make_study, write

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")


def _tls_daemon(root: Path, pki: Pki, **overrides: Any) -> Daemon:
    tls = {"certificate": str(pki.server_certificate), "key": str(pki.server_key), "ca_bundle": str(pki.ca_certificate)}
    return Daemon(root, receive__tls=tls, **overrides)


def _client(pki: Pki, certificate: Path | None = None, key: Path | None = None, *,
            anonymous: bool = False) -> list[str]:
    """DCMTK's TLS options: the PACS's certificate and key (or none: anonymous TLS), trusting the agent's CA."""
    mine = ["+tla"] if anonymous else ["+tls", str(key or pki.client_key), str(certificate or pki.client_certificate)]
    return [*mine, "+cf", str(pki.ca_certificate)]


def _refusals(agent: Daemon) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in agent.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "connection_refused"]


def _refused_for(agent: Daemon, words: str) -> dict[str, Any]:
    return wait_for(lambda: next((r for r in _refusals(agent) if words in r["reason"]), None), 15,
                    what=f"a connection_refused line with {words!r}")


def _study(folder: Path) -> list[Path]:
    return [write(ds, folder / f"{i}.dcm") for i, ds in enumerate(make_study(Patient(), n_series=1, n_per_series=3))]


def test_a_pacs_with_a_certificate_from_the_ca_echoes_and_stores(tmp_path: Path) -> None:
    """echoscu +tls succeeds, storescu +tls sends a study that is received and queued; the
    allow-list still applies inside TLS (a certified client with a wrong AE title is rejected)."""
    pki = make_pki(tmp_path / "pki")
    files = _study(tmp_path / "pacs")
    with _tls_daemon(tmp_path / "agent", pki) as agent:
        assert '"tls": "on"' in agent.log_text()
        echo = echoscu("127.0.0.1", agent.port, calling_ae="STORESCU", extra_args=_client(pki))
        assert echo.returncode == 0 and "Received Echo Response (Success)" in echo.stderr, echo.stderr
        sent = storescu("127.0.0.1", agent.port, files, extra_args=_client(pki))
        assert sent.ok, sent.describe()
        agent.wait_queued(1)
        assert len(agent.outbox_files()) == len(files)
        stranger = echoscu("127.0.0.1", agent.port, calling_ae="STRANGER", extra_args=_client(pki))
        assert stranger.returncode != 0
        wait_for(lambda: "not an allowed peer" in agent.log_text(), 10, what="the association rejection")
        assert not _refusals(agent)


def test_clients_without_a_valid_certificate_or_tls_1_2_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    """No certificate, a certificate from another CA, plain DICOM, and TLS 1.1: each is refused at the
    handshake with its reason and the address (no field of a certificate), and nothing is stored."""
    pki = make_pki(tmp_path / "pki")
    files = _study(tmp_path / "pacs")
    with _tls_daemon(tmp_path / "agent", pki) as agent:
        cases = {
            "no client certificate": _client(pki, anonymous=True),
            "client certificate refused": _client(pki, pki.other_client_certificate, pki.other_client_key),
            "not TLS": [],
        }
        for reason, args in cases.items():
            sent = storescu("127.0.0.1", agent.port, files, extra_args=args, timeout=60)
            assert not any(f.success for f in sent.files), sent.describe()
            refusal = _refused_for(agent, reason)
            assert refusal["address"] == "127.0.0.1" and refusal["level"] == "warning"
        with pytest.raises(ssl.SSLError):
            _tls_1_1_hello(agent.port, pki)
        _refused_for(agent, "a TLS version below 1.2")
        assert "nmip-agent test" not in json.dumps(_refusals(agent))  # no certificate subject logged
        assert "association_opened" not in agent.log_text()
        assert agent.status()["studies"] == {}
    assert not [p for p in (tmp_path / "agent" / "spool").rglob("*") if p.is_file()]


def _tls_1_1_hello(port: int, pki: Pki) -> None:
    """A client that offers TLS 1.1 at most (OpenSSL 3 sends it only at security level 0)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(pki.ca_certificate))
    context.load_cert_chain(str(pki.client_certificate), str(pki.client_key))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            tls.recv(1)


def test_a_client_that_connects_and_says_nothing_does_not_hold_the_others(tmp_path: Path) -> None:
    """With one receiver process, three silent connections are open while a PACS echoes and stores
    (the handshake is never in the acceptor); each silent one is then closed at the deadline."""
    pki = make_pki(tmp_path / "pki")
    files = _study(tmp_path / "pacs")
    with _tls_daemon(tmp_path / "agent", pki, receive__processes=1, receive__association_request_timeout_s=8) as agent:
        silent = [socket.create_connection(("127.0.0.1", agent.port), timeout=20) for _ in range(3)]
        try:
            echo = echoscu("127.0.0.1", agent.port, calling_ae="STORESCU", extra_args=_client(pki), timeout=15)
            assert echo.returncode == 0, echo.stderr
            sent = storescu("127.0.0.1", agent.port, files, extra_args=_client(pki))
            assert sent.ok, sent.describe()
            for connection in silent:  # served while the silent ones still waited for their deadline
                connection.setblocking(False)
                with pytest.raises(BlockingIOError):
                    connection.recv(1)
                connection.settimeout(20)
            for connection in silent:
                assert connection.recv(1) == b""  # closed by the agent at the deadline
        finally:
            for connection in silent:
                connection.close()
        refusal = _refused_for(agent, "TLS handshake not completed within 8 s")
        assert refusal["address"] == "127.0.0.1"
        agent.wait_queued(1)
