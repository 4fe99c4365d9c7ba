"""/healthz, /readyz and /metrics: what the hospital's monitoring reads, with no identifier in it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.peers.dcmtk import dcmtk_available
from tests.peers.ports import free_port
from tests.scenarios.daemon import Daemon, storescu
from tests.synthetic import Patient, make_study, planted_values, write

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")

PATIENT = Patient(name="QUIGLEY^MARGARET", patient_id="OBS771243", birth_date="19580214")


def test_health_readiness_and_metrics_and_nothing_identifying_in_them(tmp_path: Path) -> None:
    port = free_port()
    study = make_study(PATIENT, n_series=1, n_per_series=3)
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    with Daemon(tmp_path / "agent", observe__port=port, pipeline__quiet_period_s=1) as agent:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.text == "ready\n"
        assert storescu(agent.port, files).returncode == 0
        misdirected = storescu(agent.port, files[:1], extra=("-aec", "OTHER_AGENT"))  # the later -aec wins
        assert misdirected.returncode != 0
        agent.wait_queued(1)
        metrics = httpx.get(f"{base}/metrics").text
        assert 'nmip_associations_total{outcome="accepted",reason=""} 1.0' in metrics, metrics
        assert 'nmip_associations_total{outcome="refused",reason="called_ae_title"} 1.0' in metrics, metrics
        assert 'nmip_studies{state="queued"} 1.0' in metrics
        assert 'nmip_instances{state="deidentified"} 3.0' in metrics
        assert "nmip_oldest_waiting_study_seconds" in metrics and "nmip_receivers_ready 2.0" in metrics  # two processes
        for value in planted_values(PATIENT, study[0]).values():
            if len(value) >= 4:
                assert value not in metrics, value
        assert httpx.get(f"{base}/other").status_code == 404


def test_the_endpoint_listens_on_an_ipv6_address(tmp_path: Path) -> None:
    """observe.bind: ::1 (an IPv6-only monitoring network): the endpoint answers there."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = free_port()
    with Daemon(tmp_path / "agent", observe__port=port, observe__bind="::1"):
        assert httpx.get(f"http://[::1]:{port}/healthz").status_code == 200
