"""A hostile host on the hospital network against the real daemon, on loopback: attackers from
127.0.0.2 and up, the allowed PACS (DCMTK's storescu) from 127.0.0.1. Each case is bounded in the
bytes it sends and the time it takes; throughout each, every agent process stays under 400 MB
resident, and afterwards the PACS still stores a study."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dsutils import encode

from tests.scenarios.daemon import Daemon, storescu
from tests.synthetic import Patient, make_study, write
from tests.peers.dcmtk import dcmtk_available

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test")

RSS_LIMIT_MB = 400
CT_IMAGE_STORAGE, EXPLICIT_LE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"


class Watch:
    """Samples every agent process's resident memory while a case runs."""

    def __init__(self, agent: Daemon) -> None:
        self.agent = agent
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            assert self.agent.process is not None
            for pid in [self.agent.process.pid, *self.agent.children()]:
                try:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    rss = next(int(line.split()[1]) // 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
                except (OSError, StopIteration):
                    continue
                self.peak[name] = max(self.peak.get(name, 0), rss)
            time.sleep(0.05)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon per case (none outlives its test): tight caps, a 3 s request deadline, 16 MB instances."""
    with Daemon(tmp_path / "agent", receive__max_connections=32, receive__max_connections_per_address=8,
                receive__association_request_timeout_s=3, limits__max_instance_mb=16) as running:
        yield running


@pytest.fixture
def pacs_sends(agent: Daemon, tmp_path: Path) -> Callable[[], None]:
    """The allowed PACS stores a two-instance study: storescu must succeed."""
    def send() -> None:
        study = make_study(Patient(patient_id=f"HOSP{time.monotonic_ns() % 10**6:06d}"), n_series=1, n_per_series=2,
                           plant=False)
        files = [write(ds, tmp_path / "pacs" / f"{time.monotonic_ns()}-{i}.dcm") for i, ds in enumerate(study)]
        sent = storescu(agent.port, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "Received Store Response (Success)" in sent.stdout + sent.stderr
    return send


def attacker(agent: Daemon, source: str = "127.0.0.2", timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", agent.port))
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """The agent closed the connection within `seconds` (reading whatever it sent first)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


def send_until_closed(sock: socket.socket, chunk: bytes, limit: int) -> int:
    """Send `chunk` repeatedly until the agent closes the connection or `limit` bytes went."""
    sent = 0
    try:
        while sent < limit:
            sent += sock.send(chunk)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    return sent


def store_command(context: int, sop_instance_uid: str = "1.2.826.0.1.3680043.8.498.99") -> bytes:
    """A P-DATA-TF PDU holding a whole C-STORE-RQ command set on presentation context `context`."""
    command = Dataset()
    command.AffectedSOPClassUID, command.CommandField, command.MessageID = CT_IMAGE_STORAGE, 0x0001, 1
    command.Priority, command.CommandDataSetType = 0, 0x0000
    command.AffectedSOPInstanceUID = sop_instance_uid
    encoded = encode(command, True, True)
    assert encoded is not None
    group_length = struct.pack("<HHLL", 0x0000, 0x0000, 4, len(encoded))
    pdv = bytes([context, 0x03]) + group_length + encoded
    return struct.pack(">BBL", 0x04, 0, 4 + len(pdv)) + struct.pack(">L", len(pdv)) + pdv


def data_fragment(context: int, data: bytes, *, last: bool) -> bytes:
    pdv = bytes([context, 0x02 if last else 0x00]) + data
    return struct.pack(">BBL", 0x04, 0, 4 + len(pdv)) + struct.pack(">L", len(pdv)) + pdv


def assert_bounded(watch: Watch) -> None:
    over = {name: mb for name, mb in watch.peak.items() if mb >= RSS_LIMIT_MB}
    assert not over, f"agent processes over {RSS_LIMIT_MB} MB resident: {over}"


def test_a_4_gib_association_request_is_refused_before_it_is_read(agent: Daemon, pacs_sends: Callable[[], None]) -> None:
    with Watch(agent) as watch:
        sock = attacker(agent)
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFF_FFF0))
        sent = send_until_closed(sock, b"\0" * (1 << 20), 1 << 30)
        sock.close()
        pacs_sends()
    assert sent < 256 << 20, f"{sent >> 20} MB taken before the connection was closed"
    assert_bounded(watch)


def test_an_allowed_sender_streaming_oversized_fragments_is_cut_off(agent: Daemon, pacs_sends: Callable[[], None]) -> None:
    """After a real association and a C-STORE command, 16 MiB data fragments never marked last:
    the first is longer than the PDU the agent announced, and the association ends there."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", agent.port, ae_title="NMIP_AGENT")
    assert assoc.is_established
    context = assoc.accepted_contexts[0].context_id
    raw = assoc.dul.socket.socket
    with Watch(agent) as watch:
        raw.sendall(store_command(context))
        fragment = bytes([context, 0x00]) + b"\0" * (16 << 20)
        pdu = struct.pack(">BBL", 0x04, 0, 4 + len(fragment)) + struct.pack(">L", len(fragment)) + fragment
        sent = 0
        try:
            while sent < 1 << 30:
                raw.sendall(pdu)
                sent += len(pdu)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        assoc.abort()
        raw.close()
        pacs_sends()
    assert sent < 256 << 20, f"{sent >> 20} MB taken before the association was ended"
    assert_bounded(watch)
    assert '"connection_closed_at_bound"' in agent.log_text()


def test_an_instance_past_max_instance_mb_is_cut_off_as_it_arrives(agent: Daemon, pacs_sends: Callable[[], None],
                                                                   tmp_path: Path) -> None:
    """Fragments within the announced PDU, but an instance past limits.max_instance_mb (16 MB
    here): the association ends once it is passed, and nothing of it stays in the spool."""
    ds = make_study(Patient(), n_series=1, n_per_series=1, rows=4096, columns=2560, plant=False)[0]  # 20 MB
    big = write(ds, tmp_path / "big.dcm")
    with Watch(agent) as watch:
        sent = storescu(agent.port, [big])
        pacs_sends()
    assert sent.returncode != 0 or "Success" not in sent.stdout + sent.stderr
    assert_bounded(watch)
    incoming = agent.root / "spool" / ".incoming"
    assert sum(p.stat().st_size for p in incoming.rglob("*") if p.is_file()) < 1 << 20


def test_silent_connections_never_lock_the_pacs_out(agent: Daemon, pacs_sends: Callable[[], None]) -> None:
    """400 silent connections, from one address and from many: past the caps they are closed at
    once; the PACS stores meanwhile; the rest are closed when the request deadline passes."""
    with Watch(agent) as watch:
        held: list[socket.socket] = []
        refused = 0
        for n in range(400):
            source = "127.0.0.2" if n < 100 else f"127.0.{1 + n // 200}.{2 + n % 200}"
            try:
                held.append(attacker(agent, source, timeout=2))
            except OSError:
                refused += 1
        pacs_sends()
        time.sleep(0.5)
        open_now = [s for s in held if not closed_within(s, 0.05)]
        assert len(open_now) <= 32 + 8, f"{len(open_now)} silent connections still open"
        started = time.monotonic()
        still = [s for s in open_now if not closed_within(s, max(0.1, 6 - (time.monotonic() - started)))]
        for s in held:
            s.close()
        pacs_sends()
    assert still == [], f"{len(still)} silent connections outlived the 3 s request deadline"
    assert_bounded(watch)
    again = attacker(agent, "127.0.0.2")  # every count was given back: the address may connect again
    assert not closed_within(again, 0.5)
    again.close()
    assert agent.log_text().count('"connection_refused"') < 50  # one line per address per 10 s


def test_trickling_half_requests_are_closed_at_the_deadline(agent: Daemon, pacs_sends: Callable[[], None]) -> None:
    """8 association requests sent a byte a second: each closed by the 3 s deadline, whatever trickles."""
    with Watch(agent) as watch:
        socks = [attacker(agent, f"127.0.2.{10 + n}") for n in range(8)]
        request = struct.pack(">BBL", 0x01, 0, 1000) + b"\0" * 1000
        started = time.monotonic()
        closed_at: dict[int, float] = {}
        for position in range(len(request)):
            for n, sock in enumerate(socks):
                if n in closed_at:
                    continue
                try:
                    sock.send(request[position:position + 1])
                except OSError:
                    closed_at[n] = time.monotonic() - started
            if len(closed_at) == len(socks) or time.monotonic() - started > 15:
                break
            time.sleep(1)
        for n, sock in enumerate(socks):
            if n not in closed_at and closed_within(sock, 0.1):
                closed_at[n] = time.monotonic() - started
            sock.close()
        pacs_sends()
    assert len(closed_at) == 8 and max(closed_at.values()) < 8, closed_at
    assert_bounded(watch)


def test_garbage_and_query_retrieve_requests_change_nothing(agent: Daemon, pacs_sends: Callable[[], None]) -> None:
    """Random bytes instead of a PDU, and C-FIND, C-GET and C-MOVE from the allowed peer's
    address: each ends without harm (the agent offers storage and verification only)."""
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        PatientRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelGet,
        PatientRootQueryRetrieveInformationModelMove,
    )

    with Watch(agent) as watch:
        sock = attacker(agent, "127.0.3.1")
        send_until_closed(sock, os.urandom(65536), 4 << 20)
        assert closed_within(sock, 5)
        sock.close()
        for model in (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
                      PatientRootQueryRetrieveInformationModelMove):
            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context(model)
            assoc = ae.associate("127.0.0.1", agent.port, ae_title="NMIP_AGENT")
            assert not assoc.is_established or not assoc.accepted_contexts
            if assoc.is_established:
                assoc.release()
        pacs_sends()
    assert_bounded(watch)


def test_associations_that_break_pynetdicom_give_back_what_they_held(agent: Daemon, pacs_sends: Callable[[], None]) -> None:
    """Twelve associations from the allowed peer (more than max_associations, 8) each send a
    C-STORE on a presentation context that was never accepted, half its data, then vanish:
    pynetdicom's reader fails without the usual close event. Their association slots and caps
    are given back, their temporary files deleted, and the PACS is still served."""
    with Watch(agent) as watch:
        for n in range(12):
            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_LE)
            assoc = ae.associate("127.0.0.1", agent.port, ae_title="NMIP_AGENT")
            assert assoc.is_established, n
            raw = assoc.dul.socket.socket
            context = assoc.accepted_contexts[0].context_id
            try:
                raw.sendall(store_command(context + 2 if n % 2 else context))  # odd: a context never accepted
                raw.sendall(data_fragment(context, b"\0" * 60_000, last=False))
            except OSError:
                pass
            raw.close()
            assoc.kill()
        time.sleep(5)  # the receivers' reaper runs every 2 s
        pacs_sends()
    assert_bounded(watch)
    incoming = agent.root / "spool" / ".incoming"
    assert [p for p in incoming.rglob("*") if p.is_file()] == []
