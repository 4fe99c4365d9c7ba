"""What the agent writes on disk is its user's alone, whatever umask it was started with, and what
it logs carries nothing a sender sent."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scenarios.daemon import Daemon, storescu
from tests.synthetic import Patient, make_study, write
from tests.peers.dcmtk import dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
            if not p.is_symlink() and p.name not in ("config.yaml", "agent.log", "site.key")}


def test_everything_the_agent_writes_is_private_under_a_022_umask(tmp_path: Path) -> None:
    """Started under umask 022 with a quarantine folder left 0755 by an old install: the database
    and its -wal and -shm (they hold the crosswalk), spool, outbox and quarantine are 0600 files
    in 0700 folders, and the loosened folder was closed and said so."""
    root = tmp_path / "agent"
    (root / "quarantine").mkdir(parents=True)
    (root / "quarantine").chmod(0o755)
    study = make_study(Patient(), n_series=1, n_per_series=2)
    study[1].BurnedInAnnotation = "YES"  # something in the quarantine too
    files = [write(ds, tmp_path / "pacs" / f"{i}.dcm") for i, ds in enumerate(study)]
    previous = os.umask(0o022)
    try:
        with Daemon(root) as agent:
            assert storescu(agent.port, files).returncode == 0
            agent.wait_queued(1)
            modes = _modes(root)
            log = agent.log_text()
    finally:
        os.umask(previous)
    assert {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm"} <= set(modes)
    loose = {path: f"{mode:04o}" for path, mode in modes.items() if mode & 0o077}
    assert loose == {}
    assert any(path.startswith("quarantine/") and path.endswith(".dcm") for path in modes)
    assert '"private_path_mode_fixed"' in log and '"was": "0755"' in log


def test_a_path_of_another_user_stops_the_start_naming_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    agent = Daemon(tmp_path / "agent")
    outbox = tmp_path / "agent" / "outbox"
    outbox.mkdir(mode=0o700)
    os.chown(outbox, 65534, 65534)
    run = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--config", str(agent.config_path)],
                         capture_output=True, text=True, timeout=60, cwd=agent.root)
    assert run.returncode == 2
    assert f"{outbox}: owned by user id 65534" in run.stderr


def test_a_non_conformant_uid_a_sender_built_from_an_accession_is_never_logged(tmp_path: Path) -> None:
    """Some PACS build UIDs from accession numbers, and pydicom and pynetdicom quote a UID they
    find wrong: the agent's log (stdout and stderr) carries neither the UID nor the number."""
    import warnings

    from pynetdicom import AE

    accession = "ACC55544433"
    study = make_study(Patient(accession=accession), n_series=1, n_per_series=1, plant=False)
    ds = study[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{accession}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{accession}.1"
        with Daemon(tmp_path / "agent") as agent:
            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            assoc = ae.associate("127.0.0.1", agent.port, ae_title="NMIP_AGENT")
            assert assoc.is_established
            status = assoc.send_c_store(ds)
            assoc.release()
            agent.wait_queued(1)
            log = agent.log_text()
    assert status is not None
    assert accession not in log and accession[3:] not in log
