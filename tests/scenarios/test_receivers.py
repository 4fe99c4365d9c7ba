"""The receiver processes: several SCPs on one port, one association limit, none outliving the daemon."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.scenarios.daemon import Daemon, port_open, storescu, wait_for
from tests.synthetic import Patient, make_study, write
from tests.peers.dcmtk import ECHOSCU, dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")


def _associate(port: int) -> object:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="NMIP_AGENT")


def test_max_associations_holds_across_receiver_processes(tmp_path: Path) -> None:
    """With two receiving processes and max_associations 2, a third concurrent association is
    refused (transient, local limit), and accepted again once one closes."""
    with Daemon(tmp_path / "agent", receive__processes=2, receive__max_associations=2) as agent:
        wait_for(lambda: len(agent.receiver_pids()) == 2, 10, what="two receiver processes")
        first, second = _associate(agent.port), _associate(agent.port)
        assert first.is_established and second.is_established  # type: ignore[attr-defined]
        third = _associate(agent.port)
        assert third.is_rejected  # type: ignore[attr-defined]
        first.release()  # type: ignore[attr-defined]
        fourth = wait_for(lambda: (a := _associate(agent.port)).is_established and a, 10, 0.2,  # type: ignore[attr-defined]
                          what="a freed association slot")
        fourth.release()
        second.release()  # type: ignore[attr-defined]
        assert "max_associations reached" in agent.log_text()


def test_a_dead_receiver_process_is_replaced_and_the_agent_keeps_serving(tmp_path: Path) -> None:
    """kill -9 of one receiving process: the daemon logs it, starts another, and every study sent
    afterwards is received whole."""
    study = make_study(Patient(), n_series=1, n_per_series=5)
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    with Daemon(tmp_path / "agent", receive__processes=2) as agent:
        before = wait_for(lambda: len(pids := agent.receiver_pids()) == 2 and pids, 10, what="two receivers")
        os.kill(before[0], signal.SIGKILL)
        after = wait_for(lambda: len(p := agent.receiver_pids()) == 2 and before[0] not in p and p, 10,
                         what="a replacement receiver")
        assert before[1] in after
        for _ in range(4):  # whichever process accepts each association
            assert storescu(agent.port, files).returncode == 0
        agent.wait_queued(1)
        assert len(agent.outbox_files()) == len(files)
        assert "receiver_process_died" in agent.log_text()


def test_receivers_die_with_the_daemon(tmp_path: Path) -> None:
    """kill -9 of the daemon takes its receiving processes with it at once and frees the port, so
    a restart is never racing an old receiver still writing to the spool."""
    agent = Daemon(tmp_path / "agent", receive__processes=2).start()
    receivers = wait_for(lambda: len(pids := agent.receiver_pids()) == 2 and pids, 10, what="two receivers")
    agent.kill()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in receivers), 5, 0.05, "the receivers to exit")
    assert not port_open(agent.port)
    agent.start()
    echo = subprocess.run([ECHOSCU, "-aet", "STORESCU", "-aec", "NMIP_AGENT", "127.0.0.1", str(agent.port)],
                          capture_output=True, text=True, timeout=60)
    agent.stop()
    assert echo.returncode == 0, echo.stderr
