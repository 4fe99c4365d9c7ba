"""The DICOM receiver: a pynetdicom SCP that answers success only once an instance is durable.

C-ECHO, and C-STORE for every storage SOP class in the usual transfer syntaxes. Associations are
accepted only from the configured (calling AE title, address) pairs, and with `receive.tls` only
over TLS from a peer with a certificate of the configured CA (agent/receive_tls.py). Each dataset
is taken as the bytes the peer sent (never decoded and re-encoded), its header parsed just enough
to know its study, written to the spool with fsync and rename, recorded in the state database, and
only then answered. Statuses (PS3.4 Annex B.2.3): 0x0000 success, 0xA700 out of resources (disk,
quota or database: the sender retries), 0xC210 cannot understand (not a parseable dataset).
"""

from __future__ import annotations

import errno
import io
import mmap
import multiprocessing
import os
import signal
import socket
import ssl
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from agent import log, metrics
from agent.config import Config, Peer, ReceiveConfig
from agent.connections import ConnectionTable, bounded_handler
from agent.errors import AgentError
from agent.deidentify.pseudonym import Pseudonymiser, PseudonymSettings
from agent.keys import load_key_file
from agent.processes import die_with, name_process
from agent.receive_tls import handshake, server_context
from agent.spool.state import State
from agent.spool.store import NoSpace, Spool

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, Out of Resources
CANNOT_UNDERSTAND = 0xC210  # PS3.4 B.2.3: Error, Cannot Understand

# Set once, here: pynetdicom's per-message logging prints UIDs, and its default handler decodes
# every dataset, which we never want.
_config.LOG_HANDLER_LEVEL = "none"
# Datasets are written to a temporary file (0600, on the spool's file system: `_receiver_main`
# points tempfile there) as their fragments arrive, never assembled in memory.
_config.STORE_RECV_CHUNKED_DATASET = True
INCOMING = ".incoming"  # the spool's folder of datasets being received

_log = log.get("receive")

#: The transfer syntaxes a PACS uses (PS3.5 Annex A): uncompressed, deflate, RLE, JPEG baseline,
#: extended and lossless, JPEG-LS, JPEG 2000. Offering pynetdicom's 45 for 170 storage classes
#: made every association copy 7,650 contexts (66 ms before the first instance).
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
]  # fmt: skip
_USAGE_REFRESH_S = 10.0


def open_listener(config: ReceiveConfig) -> socket.socket:
    """The listening socket, bound once by the daemon and shared by its receiver processes.

    Non-blocking: every receiver wakes for a new connection and the ones that lose the race to
    accept it go back to waiting instead of blocking in accept().
    """
    listener = socket.create_server((config.bind_address, config.port), backlog=64, reuse_port=False)
    listener.setblocking(False)
    return listener


class ReceiverShared:
    """What the receiver processes share, in shared memory: per process, its open associations
    (summed against max_associations), its open connections (to spread new ones), those from
    addresses that are not allowed peers (summed against max_connections), and whether it is
    ready; and open connections per address (`ConnectionTable`). A dead process's counts are
    reset with it."""

    def __init__(self, context: Any, processes: int) -> None:
        self.associations: SynchronizedArray[int] = context.Array("i", processes)
        self.connections: SynchronizedArray[int] = context.Array("i", processes)
        self.foreign: SynchronizedArray[int] = context.Array("i", processes)
        self.ready: SynchronizedArray[int] = context.Array("i", processes)
        #: time.monotonic() of each process's last reaper round (every _REAP_S): its sign of life
        self.beats: SynchronizedArray[float] = context.Array("d", processes)
        #: the SIGHUP generation whose allowed peers each process has taken (`ReceiverProcesses.reload`)
        self.reloaded: SynchronizedArray[int] = context.Array("i", processes)
        self.addresses = ConnectionTable(context, processes)
        self.generation: Any = context.Value("i", 0)

    def reset(self, index: int) -> None:
        for counts in (self.associations, self.connections, self.foreign, self.ready):
            with counts.get_lock():
                counts[index] = 0
        self.addresses.reset(index)

    def admit(self, address: str, index: int, config: ReceiveConfig, allowed: bool) -> str | None:
        """Count a new connection, or say why it is refused: every address has its cap, and
        addresses that are not allowed peers share `max_connections` (so a crowd of them never
        locks the PACS out)."""
        if not allowed:
            with self.foreign.get_lock():
                if sum(self.foreign[:]) >= config.max_connections:
                    return "max_connections reached"
                self.foreign[index] += 1
        # An allowed peer may always open as many connections as it may have associations.
        cap = max(config.max_connections_per_address, config.max_associations + 2) if allowed \
            else config.max_connections_per_address
        if not self.addresses.admit(address, index, cap):
            if not allowed:
                with self.foreign.get_lock():
                    self.foreign[index] -= 1
            return "max_connections_per_address reached"
        self.add_connection(index, +1)
        return None

    def release(self, address: str, index: int, allowed: bool) -> None:
        self.add_connection(index, -1)
        self.addresses.release(address, index)
        if not allowed:
            with self.foreign.get_lock():
                self.foreign[index] = max(0, self.foreign[index] - 1)

    def busier_than_another(self, index: int) -> bool:
        counts = self.connections[:]
        return len(counts) > 1 and counts[index] > min(counts)

    def add_connection(self, index: int, delta: int) -> None:
        with self.connections.get_lock():
            self.connections[index] += delta


_YIELD_S = 0.003
_REAP_S = 2.0
_STALE_INCOMING_S = 300.0  # an unfinished dataset's file nobody has written for this long is dropped
_REFUSAL_LOG_S = 10.0


class _Refusals:
    """Connections refused before any association, logged at most one line per reason every 10 s,
    with how many were refused since and from which addresses (the first few): a flood of
    connections is not a flood of log lines. From the acceptor and from handshake threads."""

    def __init__(self) -> None:
        self._logged: dict[str, tuple[float, int, set[str]]] = {}  # reason -> (last logged, refused since, addresses since)
        self._lock = threading.Lock()

    def log(self, address: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, count, addresses = self._logged.get(reason, (-_REFUSAL_LOG_S, 0, set()))
            if len(addresses) < 8:
                addresses.add(address)
            if now - last < _REFUSAL_LOG_S:
                self._logged[reason] = (last, count + 1, addresses)
                return
            self._logged[reason] = (now, 0, set())
        _log.warning("connection_refused", reason=reason, address=address, refused_since_last=count,
                     addresses_since_last=sorted(addresses - {address}))


class _ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server for one Receiver (`owner`). With receive.tls, a connection is
    wrapped at accept (no I/O) and its handshake done in the connection's own thread, within
    association_request_timeout_s: pynetdicom's own `ssl_context` handshakes in the acceptor,
    where one client that connects and says nothing would hold every other PACS."""

    owner: "Receiver"

    def secure(self, request: socket.socket) -> socket.socket:
        tls = self.owner.tls
        return request if tls is None else tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            refused = handshake(request, self.owner.config.association_request_timeout_s)
            if refused is not None:
                request.close()  # the reaper gives back what the connection held
                metrics.association_refused("tls_handshake")
                self.owner.refusals.log(str(client_address[0]), refused)
                return
        super().finish_request(request, client_address)


def _server_class(listener: socket.socket, shared: ReceiverShared, index: int,
                  receiver: "Receiver") -> type[ThreadedAssociationServer]:
    class SharedListenerServer(_ReceiverServer):
        """pynetdicom's server, accepting on a socket bound by the daemon instead of its own.

        Every process wakes for a new connection; one with more open connections than another
        waits a moment first, so that four associations arriving together land two and two
        instead of all on whichever process was quickest. A connection past its caps is closed
        at once, before a thread or an association is made for it.
        """

        owner = receiver

        def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
            if shared.busier_than_another(index):
                time.sleep(_YIELD_S)
            request, address = super().get_request()  # BlockingIOError (an OSError) if another took it
            request = self.secure(request)
            refused = receiver.admit_connection(request, str(address[0]))
            if refused is not None:
                request.close()
                metrics.association_refused(refused.split()[0])  # max_connections[_per_address]
                receiver.refusals.log(str(address[0]), refused)
                raise ConnectionRefusedError(refused)  # socketserver drops it and waits for the next
            return request, address

        def server_bind(self) -> None:
            if self.socket is not None:
                self.socket.close()
            self.socket = listener
            self.server_address = listener.getsockname()

        def server_activate(self) -> None:
            pass  # already listening

    return SharedListenerServer


class Receiver:
    """The SCP; `start` returns once it listens, `stop` closes it and its associations.

    With `listener` it accepts on that socket (the daemon's receiver processes), and `slots`
    counts open associations across processes so `max_associations` holds for the whole agent.
    """

    def __init__(self, config: ReceiveConfig, spool: Spool, state: State, names: Pseudonymiser, *,
                 listener: socket.socket | None = None, shared: ReceiverShared | None = None,
                 index: int = 0, max_instance_bytes: int = 4096 << 20, tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.tls = tls  # receive.tls's context, built in this process: an SSLContext cannot be pickled
        self.refusals = _Refusals()
        self.max_instance_bytes = max_instance_bytes
        self.listener = listener
        self.shared = shared
        self.index = index
        self._counted: set[int] = set()
        self.spool = spool
        self.state = state
        self.names = names
        self._allowed = {(p.ae_title, p.address) for p in config.allowed_peers}
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        # Spool use, counted here and re-read from the database every few seconds (purges by an
        # operator happen elsewhere): a SUM over every instance per C-STORE grew with the spool.
        self._spool_used = state.spool_bytes()
        self._spool_read_at = time.monotonic()
        self._server: Any = None
        self._connections: dict[int, _Connection] = {}  # id(client socket) -> what it holds
        self._stopping = threading.Event()
        self._incoming: dict[int, int] = {}  # id(assoc) -> bytes of P-DATA since its last C-STORE
        # id(assoc) -> why its instance in progress is not kept, and that instance's temporary file
        self._discarding: dict[int, tuple[str, str | None]] = {}
        self._open = 0  # associations open here, when there is no shared count (one process)
        self._allowed_addresses = {p.address for p in config.allowed_peers}
        self.ae = self._make_ae()

    def allow(self, peers: tuple[Peer, ...]) -> None:
        """A new allow-list, from SIGHUP: the next association is judged by it."""
        self._allowed = {(p.ae_title, p.address) for p in peers}
        self._allowed_addresses = {p.address for p in peers}

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), TRANSFER_SYNTAXES)
        # The called AE title is checked in `_on_requested`, which logs what was wrong: pynetdicom's
        # own check rejects before any handler runs, and a PACS set up with a typo met silence.
        ae.require_called_aet = False
        # Associations are counted by `_take_slot`, from allowed peers only: pynetdicom's own count
        # includes connections that never associate, which a crowd of them would use up.
        ae.maximum_associations = 100_000
        ae.network_timeout = self.config.idle_timeout_s
        ae.acse_timeout = self.config.association_request_timeout_s  # the ARTIM timer: a silent connection
        ae.dimse_timeout = self.config.network_timeout_s
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        return ae

    def _request_handler(self) -> Any:
        return bounded_handler(request_timeout_s=self.config.association_request_timeout_s,
                               network_timeout_s=self.config.network_timeout_s, max_pdu_bytes=self.config.max_pdu_bytes,
                               budget=self._admit_data, on_refused=self._on_bound_broken,
                               on_association=self._attach)

    # -- what each connection holds, given back once whatever ends it -----------------------------

    def admit_connection(self, sock: socket.socket, address: str) -> str | None:
        """A connection just accepted: counted against its caps (None), or why it is refused."""
        allowed = address in self._allowed_addresses
        if self.shared is not None:
            refused = self.shared.admit(address, self.index, self.config, allowed)
            if refused is not None:
                return refused
        with self._lock:
            self._connections[id(sock)] = _Connection(sock, address, allowed, time.monotonic())
        return None

    def _attach(self, sock: socket.socket, assoc: Any) -> None:
        with self._lock:
            connection = self._connections.get(id(sock))
            if connection is not None:
                connection.assoc = assoc

    def _release(self, connection: "_Connection") -> None:
        """Give back what a connection held, once: its caps, its association slot, the temporary
        file of an instance it left unfinished. From EVT_CONN_CLOSE or, when pynetdicom's thread
        ended another way (an exception, an abort it sent itself), from `_reap`."""
        with self._lock:
            if connection.released:
                return
            connection.released = True
            self._connections.pop(id(connection.sock), None)
            assoc = connection.assoc
            counted = assoc is not None and id(assoc) in self._counted
            if assoc is not None:
                self._counted.discard(id(assoc))
                self._incoming.pop(id(assoc), None)
                self._discarding.pop(id(assoc), None)
            if counted and self.shared is None:
                self._open -= 1
        if assoc is not None:
            _drop_partial(assoc)
        if self.shared is None:
            return
        self.shared.release(connection.address, self.index, connection.allowed)
        if counted:
            with self.shared.associations.get_lock():
                self.shared.associations[self.index] -= 1

    def _reap(self) -> None:
        """Every few seconds: release connections whose association thread has ended (or that
        never got one and are closed), and delete temporary files nobody is writing any more."""
        while not self._stopping.wait(_REAP_S):
            if self.shared is not None:
                self.shared.beats[self.index] = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
            try:
                self._reap_once()
            except Exception as exc:  # the next round tries again
                _log.error("receiver_reap_failed", error=type(exc).__name__)

    def _reap_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            if now - connection.accepted_at < _REAP_S:
                continue
            ended = (connection.assoc is not None and not connection.assoc.is_alive()) or \
                    (connection.assoc is None and connection.sock.fileno() == -1)
            if ended:
                self._release(connection)
        incoming = Path(tempfile.gettempdir())
        if incoming.name != str(self.index) or incoming.parent.name != INCOMING:
            return  # not this process's own folder (one process, tests): nothing to sweep
        with self._lock:
            live = {_current_file(c.assoc) for c in self._connections.values() if c.assoc is not None}
        for path in incoming.iterdir():
            try:
                if str(path) not in live and time.time() - path.stat().st_mtime > _STALE_INCOMING_S:
                    path.unlink()
            except OSError:
                pass

    def _admit_data(self, assoc: Any, nbytes: int) -> str | None:
        """Checked before each P-DATA PDU is read. Past `limits.max_instance_mb` the association
        ends (no answer could take such an instance). Past the spool's quota, or when the next
        PDU would take the disk under its floor, the instance is received to its end but not kept
        (its temporary file cut back before each PDU, so it never holds more than one) and then
        answered 0xA700: the PACS sends it again later."""
        with self._lock:
            incoming = self._incoming.get(id(assoc), 0) + nbytes
            self._incoming[id(assoc)] = incoming
            discarding = id(assoc) in self._discarding
        if incoming > self.max_instance_bytes:
            return f"an instance larger than limits.max_instance_mb ({self.max_instance_bytes >> 20} MB)"
        if not discarding:
            why = self.spool.room_while_receiving(incoming, nbytes, self._used())
            if why is None:
                return None
            with self._lock:
                self._discarding[id(assoc)] = (why, _current_file(assoc))
        _cut_back(assoc)
        return None

    def _on_bound_broken(self, assoc: Any, reason: str) -> None:
        try:
            address = str(assoc.requestor.address)
        except Exception:
            address = ""
        _log.warning("connection_closed_at_bound", address=address, reason=reason)

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
        ]
        address = (self.config.bind_address, self.config.port)
        if self.listener is None or self.shared is None:
            receiver = self

            class OwnServer(_ReceiverServer):
                owner = receiver

                def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
                    request, peer = super().get_request()
                    request = self.secure(request)
                    receiver.admit_connection(request, str(peer[0]))  # one process: counted, never capped
                    return request, peer

            self._server = self.ae.make_server(address, evt_handlers=handlers, server_class=OwnServer,
                                               request_handler=self._request_handler())
            threading.Thread(target=self._server.serve_forever, name="acceptor", daemon=True).start()
            threading.Thread(target=self._reap, name="reaper", daemon=True).start()
            self.ae._servers.append(self._server)
            _log.info("receiver_listening", ae_title=self.config.ae_title, address=self.config.bind_address,
                      port=self.port)
            return
        server_class = _server_class(self.listener, self.shared, self.index, self)
        self._server = self.ae.make_server(address, evt_handlers=handlers, server_class=server_class,
                                           request_handler=self._request_handler())
        threading.Thread(target=self._server.serve_forever, name="acceptor", daemon=True).start()
        threading.Thread(target=self._reap, name="reaper", daemon=True).start()
        self.ae._servers.append(self._server)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def stop(self) -> None:
        """Stop accepting, then abort associations still open: an instance they had not been told
        was stored is resent by the PACS, and one still waiting for its first PDU would otherwise
        hold the shutdown for the whole ACSE timeout."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.socket.close()  # refuse new connections at once
        for assoc in list(self.ae.active_associations):
            assoc.abort()
        if server is not None:
            server.shutdown()
        self.ae.shutdown()

    # -- associations -------------------------------------------------------------------------

    def _on_requested(self, event: Any) -> None:
        """Reject, before negotiation, any peer not in the allow-list (AE title and address)."""
        calling = str(event.assoc.requestor.primitive.calling_ae_title).strip()
        called = str(event.assoc.requestor.primitive.called_ae_title).strip()
        address = str(event.assoc.requestor.address)
        if called != self.config.ae_title.strip():
            _log.warning("association_rejected", calling_ae_title=calling, called_ae_title=called, address=address,
                         reason="called AE title is not this agent's", check="receive.ae_title, and the PACS's "
                         "destination for this agent")
            metrics.association_refused("called_ae_title")
            event.assoc.acse.send_reject(0x01, 0x01, 0x07)  # rejected-permanent, called AE title not recognised
            event.assoc.kill()
        elif (calling, address) not in self._allowed:
            _log.warning("association_rejected", calling_ae_title=calling, called_ae_title=called, address=address,
                         reason="not an allowed peer", check="receive.allowed_peers (AE title and address)")
            metrics.association_refused("not_an_allowed_peer")
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, calling AE not recognised
            event.assoc.kill()
        elif not self._take_slot(id(event.assoc)):
            _log.warning("association_rejected", calling_ae_title=calling, address=address,
                         reason="max_associations reached")
            metrics.association_refused("max_associations")
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)  # rejected-transient, local limit exceeded
            event.assoc.kill()

    def _take_slot(self, assoc_id: int) -> bool:
        if self.shared is None:
            with self._lock:
                if self._open >= self.config.max_associations:
                    return False
                self._open += 1
                self._counted.add(assoc_id)
            return True
        slots = self.shared.associations
        with slots.get_lock():
            if sum(slots[:]) >= self.config.max_associations:
                return False
            slots[self.index] += 1
        with self._lock:
            self._counted.add(assoc_id)
        return True

    def _on_connection_closed(self, event: Any) -> None:
        with self._lock:
            connection = next((c for c in self._connections.values() if c.assoc is event.assoc), None)
        if connection is not None:
            self._release(connection)
        else:
            _drop_partial(event.assoc)

    def _on_established(self, event: Any) -> None:
        with self._lock:
            self._counts[id(event.assoc)] = 0
            active = len(self._counts)
        metrics.association_accepted()
        _log.info("association_opened", calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
                  address=str(event.assoc.requestor.address), active=active, receiver=self.index)

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            stored = self._counts.pop(id(event.assoc), None)
        if stored is not None:
            _log.info("association_closed", calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
                      address=str(event.assoc.requestor.address), instances=stored,
                      aborted=event.event is evt.EVT_ABORTED)

    # -- C-STORE ------------------------------------------------------------------------------

    def _used(self) -> int:
        with self._lock:
            if time.monotonic() - self._spool_read_at > _USAGE_REFRESH_S:
                self._spool_used = self.state.spool_bytes()
                self._spool_read_at = time.monotonic()
            return self._spool_used

    def _on_store(self, event: Any) -> int:
        """Spool the instance durably, then answer; every failure is a status, never an exception.

        The dataset is in a temporary file on the spool's file system (written as it arrived):
        it is read through a memory map (its header only, in practice) and linked into the spool.
        """
        path = getattr(event.request, "_dataset_path", None)
        with self._lock:
            self._incoming[id(event.assoc)] = 0  # the next instance's bytes count from here
            discarded = self._discarding.get(id(event.assoc))
            if discarded is not None and discarded[1] in (None, str(path)):  # this instance's, not the next one's
                del self._discarding[id(event.assoc)]
            else:
                discarded = None
        if discarded is not None:
            _log.warning("instance_refused", status="0xA700", reason=discarded[0])
            return OUT_OF_RESOURCES
        try:
            received = Path(event.dataset_path)
            size = received.stat().st_size
            sop_uid, study_uid, series_uid = _identify_file(received)
        except Exception:
            # The instance is not named: an unparseable stream has no key to name it by.
            _log.warning("instance_refused", status="0xC210", reason="unparseable or truncated")
            return CANNOT_UNDERSTAND
        sop_key = self.names.opaque_name(sop_uid)
        study_key = self.names.opaque_name(study_uid)
        series_key = self.names.opaque_name(series_uid) if series_uid else None
        try:
            if size > self.max_instance_bytes:
                raise NoSpace(errno.EFBIG, f"an instance larger than limits.max_instance_mb ({size >> 20} MB)")
            self.spool.check_received(size, self._used())
            with self.spool.locked(sop_key):  # no purge deletes this copy between the two steps
                self.spool.store_file(sop_key, received)
                follow_up = self.state.record_received(sop_key, study_key, size, series_key=series_key)
            with self._lock:
                self._spool_used += size
        except NoSpace as exc:
            _log.warning("instance_refused", status="0xA700", reason=exc.strerror, study_key=study_key)
            return OUT_OF_RESOURCES
        except Exception as exc:  # the database or the disk failed: the sender must retry
            _log.error("instance_refused", status="0xA700", reason=type(exc).__name__, study_key=study_key)
            return OUT_OF_RESOURCES
        with self._lock:
            self._counts[id(event.assoc)] = self._counts.get(id(event.assoc), 0) + 1
        if follow_up:
            _log.info("study_reopened", study_key=study_key)
        return SUCCESS


# -- receiver processes --------------------------------------------------------------------------

def _receiver_main(config: Config, listener: socket.socket, parent_pid: int, shared: ReceiverShared,
                   index: int, generation: int) -> None:
    """One receiver process: its own interpreter (and GIL), spool writer and database connection."""
    die_with(parent_pid)
    name_process(f"nmip-receive-{index}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon, which stops us
    stopping = threading.Event()
    reload = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())
    log.configure(config.log.level)
    # Datasets as they arrive, on the spool's file system, in this process's own folder: emptied
    # now (whatever a process before it left there was never acknowledged).
    incoming = config.spool.directory / INCOMING / str(index)
    incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in (incoming.parent, incoming):
        folder.chmod(0o700)
    for leftover in incoming.iterdir():
        leftover.unlink(missing_ok=True)
    tempfile.tempdir = str(incoming)
    state = State(config.pipeline.database)
    names = Pseudonymiser(load_key_file(config.pipeline.key_file), PseudonymSettings())
    tls = server_context(config.receive.tls, config.source) if config.receive.tls is not None else None
    receiver = Receiver(config.receive, Spool.from_config(config.spool), state, names, listener=listener,
                        shared=shared, index=index, max_instance_bytes=config.limits.max_instance_mb << 20, tls=tls)
    receiver.start()
    shared.beats[index] = time.monotonic()
    shared.reloaded[index] = generation  # the configuration it was started with
    shared.ready[index] = 1
    while not stopping.wait(0.1) and os.getppid() == parent_pid:
        if reload.is_set():
            reload.clear()
            wanted = shared.generation.value  # read first: the file read next is at least this fresh
            if _reload_receiver(receiver, config.source):
                shared.reloaded[index] = wanted
    receiver.stop()
    state.close()


def _reload_receiver(receiver: Receiver, source: Path) -> bool:
    """SIGHUP from the daemon: take the allowed peers from the file again. The
    daemon has checked the file; one that no longer loads changes nothing here."""
    from agent import config as config_module

    try:
        fresh = config_module.load(source)
    except AgentError:
        return False
    receiver.allow(fresh.receive.allowed_peers)
    return True


class ReceiverFailed(AgentError):
    """A receiver process could not start (the key, the database or the spool is unusable)."""


class ReceiverProcesses:
    """`receive.processes` SCP processes accepting on one socket the daemon binds.

    pynetdicom reads PDUs in Python threads, so in one process every association shares one
    interpreter lock; separate processes let concurrent associations use every core. Each
    instance is still spooled, committed to the shared WAL database and only then answered.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._context = multiprocessing.get_context("spawn")
        self._shared = ReceiverShared(self._context, config.receive.processes)
        self._listener: socket.socket | None = None
        self._processes: list[multiprocessing.process.BaseProcess] = []

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1]) if self._listener is not None else self.config.receive.port

    def reload(self, timeout_s: float = 10.0) -> list[int]:
        """Pass SIGHUP on and wait until each process has read the allowed peers again, so that
        once the daemon logs the reload every association is judged by the new list (the
        kernel hands a connection to any of them). Returns the processes that had not in time."""
        with self._shared.generation.get_lock():
            self._shared.generation.value += 1
            wanted = self._shared.generation.value
        unsignalled = set(range(len(self._processes)))
        deadline = time.monotonic() + timeout_s
        while True:
            # Signal a process only once it is ready (its handler is set: SIGHUP would end it
            # before). One that died meanwhile is restarted by supervise() with the new configuration.
            for index in sorted(unsignalled):
                process = self._processes[index]
                if process.is_alive() and process.pid is not None and self._shared.ready[index]:
                    os.kill(process.pid, signal.SIGHUP)
                    unsignalled.discard(index)
            late = [index for index, process in enumerate(self._processes)
                    if process.is_alive() and self._shared.reloaded[index] < wanted]
            if not late or time.monotonic() > deadline:
                return late
            time.sleep(0.02)

    def ready_count(self) -> int:
        """Receiver processes accepting on the port now."""
        return sum(1 for index, process in enumerate(self._processes) if process.is_alive() and self._shared.ready[index])

    def open_associations(self) -> int:
        """Associations open across the receiver processes now."""
        return sum(self._shared.associations[:])

    def start(self, timeout_s: float = 60.0) -> None:
        """Returns once every receiver process accepts on the port."""
        self._listener = open_listener(self.config.receive)
        self._processes = [self._spawn(index) for index in range(self.config.receive.processes)]
        deadline = time.monotonic() + timeout_s
        while not all(self._shared.ready[:]):
            dead = [p for p in self._processes if not p.is_alive()]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise ReceiverFailed(f"a receiver process did not start (exit code {dead[0].exitcode if dead else None});"
                                     " its error is in the log above")
            time.sleep(0.02)
        receive = self.config.receive
        _log.info("receiver_listening", ae_title=receive.ae_title, address=receive.bind_address, port=self.port,
                  processes=len(self._processes), tls="on" if receive.tls is not None else "off")

    def _spawn(self, index: int) -> multiprocessing.process.BaseProcess:
        process = self._context.Process(target=_receiver_main, name=f"nmip-agent-receive-{index}", daemon=True,
                                        args=(self.config, self._listener, os.getpid(), self._shared, index,
                                              self._shared.generation.value))
        process.start()
        return process

    def stuck(self, limit_s: float) -> bool:
        """Whether a live receiver process has not turned its reaper for `limit_s`: it is hung."""
        now = time.monotonic()
        return any(process.is_alive() and self._shared.ready[index] and now - self._shared.beats[index] > limit_s
                   for index, process in enumerate(self._processes))

    def supervise(self) -> None:
        """Restart a receiver process that died: the agent keeps listening whatever happened to one."""
        for index, process in enumerate(self._processes):
            if not process.is_alive():
                _log.error("receiver_process_died", exit_code=process.exitcode, action="restarted")
                self._shared.reset(index)
                self._processes[index] = self._spawn(index)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM each process (they abort their open associations), then close the socket."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in self._processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        if self._listener is not None:
            self._listener.close()
            self._listener = None


_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_ITEM = b"\xfe\xff\x00\xe0"


def _check_fragments(value: bytes) -> None:
    """Every item of encapsulated pixel data must fit in the bytes received."""
    position = 0
    while position + 8 <= len(value) and value[position : position + 4] == _ITEM:
        position += 8 + int.from_bytes(value[position + 4 : position + 8], "little")
    if position > len(value):
        raise ValueError("encapsulated pixel data cut inside a fragment")


class _Unsure(Exception):
    """The scanner met something it does not handle: pydicom decides."""


_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_ITEM_TAG, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_SOP_INSTANCE_UID, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID = (0x0008, 0x0018), (0x0020, 0x000D), (0x0020, 0x000E)
_NAMED = (_SOP_INSTANCE_UID, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID)
_NOT_SCANNED = frozenset({ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})


def _scan(data: bytes) -> tuple[str, str, str]:
    """The three UIDs (SOP instance, study, series), from a walk of every element header to the very last byte: any value that
    does not fit, any unknown VR or unusual encoding raises _Unsure (pydicom then decides).

    The C-STORE handler's largest CPU step was pydicom parsing ~200 header elements to read two
    UIDs; this walk only reads tags and lengths. It never accepts what it cannot walk whole.
    """
    if data[128:132] != b"DICM":
        raise _Unsure
    position, syntax = 132, ""
    while position + 8 <= len(data) and int.from_bytes(data[position:position + 2], "little") == 0x0002:
        element = int.from_bytes(data[position + 2:position + 4], "little")
        start, length = _element(data, position)
        if element == 0x0010:
            syntax = data[start:start + length].rstrip(b"\0 ").decode("ascii")
        position = start + length
    if not syntax or syntax in _NOT_SCANNED:
        raise _Unsure
    found: dict[tuple[int, int], str] = {}
    if _walk(data, position, found, top=True) != len(data):
        raise _Unsure
    return found.get(_SOP_INSTANCE_UID, ""), found.get(_STUDY_INSTANCE_UID, ""), found.get(_SERIES_INSTANCE_UID, "")


_HEADER = struct.Struct("<HH2sH")  # group, element, VR, short length
_LONG = struct.Struct("<I")


def _element(data: bytes, position: int) -> tuple[int, int]:
    """(where the value starts, its length) of the explicit VR little endian element at `position`."""
    vr, short = _HEADER.unpack_from(data, position)[2:]
    if vr in _LONG_VRS:
        return position + 12, _LONG.unpack_from(data, position + 8)[0]
    if vr in _SHORT_VRS:
        return position + 8, short
    raise _Unsure


def _walk(data: bytes, position: int, found: dict[tuple[int, int], str], *, top: bool) -> int:
    """Past the elements from `position` to the end (top) or to an item delimiter (in an item)."""
    end = len(data)
    while position < end:
        if position + 8 > end:
            raise _Unsure
        group, element, vr, short = _HEADER.unpack_from(data, position)
        tag = (group, element)
        if tag == _ITEM_END and not top:
            return position + 8
        if group == 0xFFFE:
            raise _Unsure
        if vr in _LONG_VRS:
            start, length = position + 12, _LONG.unpack_from(data, position + 8)[0]
        elif vr in _SHORT_VRS:
            start, length = position + 8, short
        else:
            raise _Unsure
        if length == _UNDEFINED_LENGTH:
            if vr not in (b"SQ", b"OB", b"OW"):
                raise _Unsure  # UN of undefined length holds implicit VR: pydicom's job
            position = _skip_items(data, start, found)
            continue
        if start + length > end:
            raise _Unsure  # cut short
        if top and tag in _NAMED:
            if length > 66:  # a UID is at most 64 characters (and its padding): never copy more
                raise ValueError("a UID longer than 64 characters")
            found[tag] = data[start:start + length].rstrip(b"\0 ").decode("ascii")
        position = start + length
    if not top:
        raise _Unsure  # an item never closed
    return position


def _skip_items(data: bytes, position: int, found: dict[tuple[int, int], str]) -> int:
    """Past the items (or fragments) of an undefined-length value, to its sequence delimiter."""
    while position + 8 <= len(data):
        tag = (int.from_bytes(data[position:position + 2], "little"), int.from_bytes(data[position + 2:position + 4], "little"))
        length = int.from_bytes(data[position + 4:position + 8], "little")
        if tag == _SEQUENCE_END:
            return position + 8
        if tag != _ITEM_TAG:
            raise _Unsure
        if length == _UNDEFINED_LENGTH:
            position = _walk(data, position + 8, found, top=False)
        elif position + 8 + length > len(data):
            raise _Unsure
        else:
            position += 8 + length
    raise _Unsure  # no sequence delimiter: cut short


def _identify(data: bytes) -> tuple[str, str, str]:
    """The SOP Instance, Study Instance and Series Instance UIDs (the last may be ""), after
    checking the dataset is whole.

    First `_scan` (tags and lengths only); when it is unsure, pydicom.

    The header is parsed (not decoded) up to the pixel data, whose length is then checked from its
    element header: pydicom accepts a value shorter than its declared length at the end of a
    stream, and parsing half a megabyte of pixels to learn two UIDs was a quarter of the handler.
    A truncated instance is refused while the sender can still resend it.
    """
    try:
        sop_uid, study_uid, series_uid = _scan(data)
    except (_Unsure, UnicodeDecodeError, struct.error):
        pass
    else:
        if not sop_uid or not study_uid:
            raise ValueError("missing UIDs")
        return sop_uid, study_uid, series_uid
    stream = _stream(data)
    ds = dcmread(stream, stop_before_pixels=True)
    sop_uid, study_uid = str(ds.SOPInstanceUID).strip(), str(ds.StudyInstanceUID).strip()
    series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not sop_uid or not study_uid:
        raise ValueError("missing UIDs")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    position = stream.tell()
    if syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        _check_by_full_parse(data)  # positions are not byte offsets (deflate), or big endian: rare
    elif data[position : position + 4] in _PIXEL_TAGS:
        _check_pixels(data, position, implicit=syntax == ImplicitVRLittleEndian)
    return sop_uid, study_uid, series_uid


_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")  # Pixel, Float, Double Float


def _cut_back(assoc: Any) -> None:
    """Empty the temporary file of the dataset being received (pynetdicom's DIMSE message's):
    the next fragment is written at its start, so a discarded instance holds one PDU at most."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    handle = getattr(message, "_data_set_file", None)
    if handle is not None and not handle.closed:
        handle.flush()
        handle.seek(0)
        handle.truncate(0)


@dataclass
class _Connection:
    sock: socket.socket
    address: str
    allowed: bool  # from an allowed peer's address: not counted against max_connections
    accepted_at: float
    assoc: Any = None
    released: bool = False


def _current_file(assoc: Any) -> str | None:
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    handle = getattr(message, "_data_set_file", None)
    return None if handle is None else str(handle.name)


def _drop_partial(assoc: Any) -> None:
    """Delete the temporary file of a dataset whose association ended before it was whole
    (pynetdicom leaves it: it deletes the file only after a C-STORE handler has run)."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    handle = getattr(message, "_data_set_file", None)
    if handle is None:
        return
    try:
        handle.close()
    except OSError:
        pass
    try:
        os.unlink(handle.name)
    except OSError:
        pass  # gone already: a C-STORE that completed


def _identify_file(path: Path) -> tuple[str, str, str]:
    """`_identify` for a received file, read through a memory map: only the pages the header walk
    touches are read, whatever the size of the pixel data."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ValueError("empty dataset")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return _identify(view)  # type: ignore[arg-type]


def _check_pixels(data: bytes, position: int, *, implicit: bool) -> None:
    if implicit:
        length, start = int.from_bytes(data[position + 4 : position + 8], "little"), position + 8
    else:
        length, start = int.from_bytes(data[position + 8 : position + 12], "little"), position + 12
    if start > len(data):
        raise ValueError("pixel data element cut in its header")
    if length == _UNDEFINED:
        with memoryview(data) as view:  # no copy of the pixel data
            tail = view[start:]
            try:
                _check_fragments(tail)  # type: ignore[arg-type]
            finally:
                tail.release()  # before the memory map closes, whatever was raised
    elif start + length > len(data):
        raise ValueError("pixel data shorter than its declared length")


def _stream(data: bytes) -> Any:
    """A file-like over `data` for pydicom: the memory map itself (no copy), or a BytesIO."""
    if isinstance(data, mmap.mmap):
        data.seek(0)
        return data
    return io.BytesIO(data)


def _check_by_full_parse(data: bytes) -> None:
    ds = dcmread(_stream(data))
    if _PIXEL_DATA in ds:
        pixels = ds.get_item(_PIXEL_DATA)
        length = getattr(pixels, "length", None)
        value = pixels.value if isinstance(pixels.value, bytes) else b""
        if length == _UNDEFINED:
            _check_fragments(value)
        elif length is not None and len(value) != length:
            raise ValueError("pixel data shorter than its declared length")
