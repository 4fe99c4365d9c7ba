"""The real peers work against a pynetdicom Storage SCP: DCMTK's echoscu/storescu/storescp and Orthanc.

These pin down what the receiver daemon's integration tests rely on: that the helpers start
and stop the peers, that storescu's per-file DIMSE statuses are parsed (success and failure),
and that Orthanc pushes an uploaded study to a declared modality.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, VerificationPresentationContexts, evt

from tests.peers.dcmtk import dcmtk_available, echoscu, parse_store_log, storescp, storescu
from tests.peers.orthanc import Orthanc, OrthancError, orthanc, orthanc_available
from tests.peers.ports import LOOPBACK, free_port, wait_for_port
from tests.synthetic import make_ct_slice, write

AGENT_AET = "NMIP_AGENT"

needs_dcmtk = pytest.mark.skipif(
    not dcmtk_available(), reason="DCMTK (storescu/echoscu/storescp) not installed: run scripts/install-debian-packages.sh"
)
needs_orthanc = pytest.mark.skipif(
    not orthanc_available(), reason="Orthanc (/usr/sbin/Orthanc) not installed: run scripts/install-debian-packages.sh"
)


@dataclass
class RecordingSCP:
    """A pynetdicom Storage SCP on a free loopback port that records what it is sent.

    `status_for(sop_instance_uid)` decides each C-STORE's response status (0x0000 by default).
    """

    port: int
    received: list[str] = field(default_factory=list)  # SOP Instance UIDs, in arrival order
    callers: list[str] = field(default_factory=list)  # calling AE titles, one per C-STORE
    status_for: Callable[[str], int] = lambda uid: 0x0000
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle_store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self.lock:
            self.received.append(uid)
            self.callers.append(str(event.assoc.requestor.ae_title).strip())
        return self.status_for(uid)

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.callers.clear()
        self.status_for = lambda uid: 0x0000


@pytest.fixture(scope="module")
def scp() -> Iterator[RecordingSCP]:
    ae = AE(ae_title=AGENT_AET)
    ae.supported_contexts = StoragePresentationContexts + VerificationPresentationContexts
    recorder = RecordingSCP(port=free_port())
    server = ae.start_server(
        (LOOPBACK, recorder.port), block=False, evt_handlers=[(evt.EVT_C_STORE, recorder.handle_store)]
    )
    try:
        wait_for_port(LOOPBACK, recorder.port)
        yield recorder
    finally:
        server.shutdown()


@pytest.fixture
def agent(scp: RecordingSCP) -> RecordingSCP:
    """The module's SCP, with nothing received yet and answering Success."""
    scp.reset()
    return scp


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two synthetic CT slices of one study and series (plain: nothing planted)."""
    folder = tmp_path_factory.mktemp("ct")
    study, series = generate_uid(), generate_uid()
    return [
        write(make_ct_slice(study_uid=study, series_uid=series, instance_number=n, plant=False), folder / f"ct{n}.dcm")
        for n in (1, 2)
    ]


def sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --- ports ---------------------------------------------------------------------------------


def test_wait_for_port_times_out_with_the_address() -> None:
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_for_port(LOOPBACK, port, timeout=0.1)


# --- storescu's log --------------------------------------------------------------------------


def test_parse_store_log_verbose_and_debug_forms() -> None:
    log = "\n".join(
        [
            "I: Sending file: /in/a.dcm",
            "I: Sending Store Request (MsgID 1, CT)",
            "I: Received Store Response (Success)",
            "I: Sending file: /in/b.dcm",
            "D: Affected SOP Instance UID     : 1.2.3.4",
            "I: Received Store Response",
            "D: DIMSE Status                  : 0xb000: Warning: Coercion of data elements",
            "I: Sending file: /in/c.dcm",
            "E: No presentation context for: (MR) 1.2.840.10008.5.1.4.1.1.4",
        ]
    )
    a, b, c = parse_store_log(log)
    assert (a.path, a.status, a.success) == ("/in/a.dcm", 0x0000, True)
    assert (b.status, b.sop_instance_uid, b.warning, b.success) == (0xB000, "1.2.3.4", True, False)
    assert c.status is None and c.errors == ["No presentation context for: (MR) 1.2.840.10008.5.1.4.1.1.4"]


# --- DCMTK against a pynetdicom SCP ----------------------------------------------------------


@needs_dcmtk
def test_echoscu_succeeds(agent: RecordingSCP) -> None:
    proc = echoscu(LOOPBACK, agent.port)
    assert proc.returncode == 0, proc.stderr
    assert "Received Echo Response (Success)" in proc.stderr


@needs_dcmtk
def test_storescu_sends_both_files(agent: RecordingSCP, ct_files: list[Path]) -> None:
    result = storescu(LOOPBACK, agent.port, ct_files)
    assert result.ok, result.describe()
    assert result.statuses == [0x0000, 0x0000]
    expected = [sop_uid(p) for p in ct_files]
    assert [f.sop_instance_uid for f in result.files] == expected
    assert agent.received == expected
    assert agent.callers == ["STORESCU", "STORESCU"]


@needs_dcmtk
def test_storescu_sends_a_folder(agent: RecordingSCP, ct_files: list[Path]) -> None:
    result = storescu(LOOPBACK, agent.port, ct_files[0].parent)
    assert "+sd" in result.args and result.ok, result.describe()
    assert sorted(agent.received) == sorted(sop_uid(p) for p in ct_files)


@needs_dcmtk
def test_storescu_reports_a_refused_store(agent: RecordingSCP, ct_files: list[Path]) -> None:
    refused = sop_uid(ct_files[1])
    agent.status_for = lambda uid: 0xA700 if uid == refused else 0x0000
    result = storescu(LOOPBACK, agent.port, ct_files)
    # -nh (the default here): every file is tried, and storescu exits 0 whatever the statuses.
    assert result.returncode == 0, result.describe()
    assert result.statuses == [0x0000, 0xA700], result.describe()
    assert result.files[1].sop_instance_uid == refused
    assert not result.ok


@needs_dcmtk
def test_storescu_halts_at_a_refused_store(agent: RecordingSCP, ct_files: list[Path]) -> None:
    agent.status_for = lambda uid: 0xA700
    result = storescu(LOOPBACK, agent.port, ct_files, halt=True)
    # storescu's default: stop at the first failure, exit with the status's high byte.
    assert result.returncode == 0xA7, result.describe()
    assert result.statuses == [0xA700]
    assert len(agent.received) == 1


@needs_dcmtk
def test_storescu_to_nobody_fails_without_statuses(ct_files: list[Path]) -> None:
    result = storescu(LOOPBACK, free_port(), ct_files)
    assert result.returncode != 0 and result.files == [] and not result.ok
    assert "Association Request Failed" in result.stderr


@needs_dcmtk
def test_storescp_receives(tmp_path: Path, ct_files: list[Path]) -> None:
    with storescp(free_port(), tmp_path / "out") as floor:
        result = storescu(LOOPBACK, floor.port, ct_files, called_ae=floor.ae)
        assert result.ok, result.describe()
        names = sorted(p.name for p in floor.received())
    assert floor.process.poll() is not None  # stopped on exit
    assert names == sorted(f"CT.{sop_uid(p)}.dcm" for p in ct_files)


# --- Orthanc -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs(scp: RecordingSCP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the module (it takes a few seconds to stop), with the SCP as modality "agent"
    and a modality "nobody" where nothing listens."""
    modalities = {"agent": (AGENT_AET, LOOPBACK, scp.port), "nobody": ("NOBODY", LOOPBACK, free_port())}
    with orthanc(tmp_path_factory.mktemp("orthanc"), modalities=modalities) as server:
        yield server
    assert server.process.poll() is not None


@needs_orthanc
def test_orthanc_starts_with_the_config(pacs: Orthanc) -> None:
    system = pacs.system()
    assert system["DicomAet"] == "ORTHANC" and system["DicomPort"] == pacs.dicom_port
    assert system["HttpPort"] == pacs.http_port
    assert "Orthanc has started" in pacs.log_text()


@needs_orthanc
def test_orthanc_pushes_an_uploaded_study(pacs: Orthanc, agent: RecordingSCP, tmp_path: Path) -> None:
    path = write(make_ct_slice(plant=False), tmp_path / "ct.dcm")
    uploaded = pacs.upload(path)
    assert uploaded["Status"] == "Success"
    assert uploaded["ParentStudy"] in pacs.studies()
    answer = pacs.push_study("agent", uploaded["ParentStudy"])
    assert answer["InstancesCount"] == 1 and answer["RemoteAet"] == AGENT_AET
    assert agent.received == [sop_uid(path)]
    assert agent.callers == ["ORTHANC"]


@needs_orthanc
def test_orthanc_push_fails_on_a_refused_store(pacs: Orthanc, agent: RecordingSCP, tmp_path: Path) -> None:
    path = write(make_ct_slice(plant=False), tmp_path / "ct.dcm")
    study = pacs.upload(path)["ParentStudy"]
    agent.status_for = lambda uid: 0xA700
    with pytest.raises(OrthancError) as failure:
        pacs.push_study("agent", study)
    # Orthanc fails the whole job (HTTP 500) and names the DIMSE status; it does not retry.
    assert failure.value.status == 500
    assert "0xA700" in failure.value.body["Details"]
    assert agent.received == [sop_uid(path)]


@needs_orthanc
def test_orthanc_echo(pacs: Orthanc, agent: RecordingSCP) -> None:
    assert pacs.echo("agent")
    assert not pacs.echo("nobody", timeout=2)
