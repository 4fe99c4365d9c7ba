"""Bounds on what a connection may cost before it is trusted, and after.

Anyone on the hospital network can open a TCP connection to the agent's port; the allow-list of
(AE title, address) pairs is checked only once an A-ASSOCIATE-RQ has been read and decoded. So,
before that: connections are capped at accept time (in total from addresses that are not allowed
peers, and per address), the A-ASSOCIATE-RQ must arrive whole within a few seconds and 64 KiB
(pynetdicom would read whatever length its header declares, into memory), and a silent
connection is closed by the same deadline (pynetdicom's ARTIM timer). After it: no PDU may be
longer than the maximum the agent announced, each PDU must arrive whole within the network
timeout once it has started (a trickle of one byte every few seconds would otherwise hold a
thread for ever), and the data of a C-STORE is checked against the spool's quota, its disk floor
and `limits.max_instance_mb` as it arrives. Breaking a bound closes the connection.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import time
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.transport import AssociationSocket, RequestHandler

#: The A-ASSOCIATE-RQ's largest length: a real one is a few KiB even with every storage class.
MAX_ASSOCIATION_REQUEST = 64 * 1024
_HEADER = 6  # PDU type, reserved, 4-byte length
_P_DATA = 0x04

#: (assoc, bytes about to be read) -> why the association must end, or None. Set by the receiver.
DataBudget = Callable[[Any, int], "str | None"]


class Refused(OSError):
    """A bound was broken: pynetdicom takes an OSError from the socket as the connection closing."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.ECONNABORTED, reason)
        self.reason = reason


class BoundedSocket(AssociationSocket):
    """pynetdicom's socket, reading each PDU within its deadline and size."""

    request_timeout_s: float = 5.0
    network_timeout_s: float = 30.0
    max_pdu_bytes: int = 262_144
    budget: DataBudget | None = None
    on_refused: Callable[[Any, str], None] | None = None

    def __init__(self, assoc: Any, client_socket: socket.socket | None = None, address: Any = None) -> None:
        super().__init__(assoc, client_socket=client_socket, address=address)
        self._accepted_at = time.monotonic()
        self._pdus = 0
        self._header_next = True  # pynetdicom reads a PDU as recv(6) then recv(length)
        self._type = 0

    def recv(self, nr_bytes: int) -> bytearray:
        first = self._pdus == 0
        if self._header_next:
            deadline = self._accepted_at + self.request_timeout_s if first else time.monotonic() + self.network_timeout_s
            data = self._read(nr_bytes, deadline)
            self._type = data[0] if data else 0
            self._header_next = False
            if data and first and self._type != 0x01:
                self._refuse(f"PDU type 0x{self._type:02X} where an association request must come first")
            if data and not 0x01 <= self._type <= 0x07:
                self._refuse(f"unknown PDU type 0x{self._type:02X}")  # garbage: read no further
            return data
        self._header_next = True
        self._pdus += 1
        if first:
            if nr_bytes > MAX_ASSOCIATION_REQUEST:
                self._refuse(f"association request of {nr_bytes} bytes (at most {MAX_ASSOCIATION_REQUEST})")
            deadline = self._accepted_at + self.request_timeout_s
        else:
            if nr_bytes > self.max_pdu_bytes:
                self._refuse(f"PDU of {nr_bytes} bytes, more than the {self.max_pdu_bytes} announced")
            if self._type == _P_DATA and self.budget is not None:
                reason = self.budget(self.assoc, nr_bytes)  # may switch the instance to discarding
                if reason is not None:
                    self._refuse(reason)
            deadline = time.monotonic() + self.network_timeout_s
        return self._read(nr_bytes, deadline)

    def _read(self, nr_bytes: int, deadline: float) -> bytearray:
        """`nr_bytes` by `deadline`, or what came before the peer closed (pynetdicom checks)."""
        sock = self.socket
        assert sock is not None
        data = bytearray()
        try:
            while len(data) < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._refuse("a PDU not received whole in time" if self._pdus or not self._header_next
                                 else "association request not received whole in time")
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(min(nr_bytes - len(data), 65_536))
                except socket.timeout:
                    continue  # the deadline check above decides
                if not chunk:
                    break
                data.extend(chunk)
        finally:
            try:  # also bounds what the agent sends: a peer that stops reading cannot hold a thread
                sock.settimeout(self.network_timeout_s)
            except OSError:
                pass
        return data

    def _refuse(self, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(self.assoc, reason)
        raise Refused(reason)


def bounded_handler(*, request_timeout_s: float, network_timeout_s: float, max_pdu_bytes: int,
                    budget: DataBudget | None, on_refused: Callable[[Any, str], None] | None,
                    on_association: Callable[[socket.socket, Any], None] | None = None) -> type[RequestHandler]:
    """pynetdicom's request handler, giving each association a `BoundedSocket` with these bounds."""
    socket_class = type("ReceiverSocket", (BoundedSocket,), {
        "request_timeout_s": request_timeout_s, "network_timeout_s": network_timeout_s,
        "max_pdu_bytes": max_pdu_bytes, "budget": staticmethod(budget) if budget else None,
        "on_refused": staticmethod(on_refused) if on_refused else None,
    })

    class BoundedRequestHandler(RequestHandler):
        def _create_association(self) -> Any:
            """pynetdicom's own (transport.RequestHandler, 3.0), with our socket class: a socket
            announces the connection to the state machine when made, so only one may be."""
            from pynetdicom.association import Association

            assoc = Association(self.ae, MODE_ACCEPTOR)
            assoc._server = self.server
            assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
            assoc.set_socket(socket_class(assoc, client_socket=self.request))
            if on_association is not None:
                on_association(self.request, assoc)
            assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
            assoc.acceptor.ae_title = self.server.ae_title
            assoc.acceptor.address_info = self.local
            assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
            assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
            assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
            assoc.requestor.address_info = self.remote
            for event, handlers in self.server._handlers.items():
                if event.is_intervention and handlers:
                    assoc.bind(event, *handlers)
                elif isinstance(event, evt.NotificationEvent):
                    for handler in handlers:
                        assoc.bind(event, handler[0], handler[1])  # type: ignore[index]
            return assoc

    return BoundedRequestHandler


def address_key(address: str) -> int:
    """A stable, non-zero 62-bit key for an address, the same in every receiver process."""
    return int.from_bytes(hashlib.sha256(address.encode()).digest()[:8], "big") >> 2 | 1


class ConnectionTable:
    """Open connections per address and per receiver process, in shared memory: a small open
    addressing table of (address key, count in each process). A process that dies has its counts
    reset with it."""

    SLOTS = 2048
    PROBES = 64

    def __init__(self, context: Any, processes: int) -> None:
        self.processes = processes
        self.width = processes + 1
        self.cells: SynchronizedArray[int] = context.Array("q", self.SLOTS * self.width)

    def _slot(self, key: int, *, take: bool) -> int | None:
        cells = self.cells
        free = None
        for probe in range(self.PROBES):
            slot = (key + probe) % self.SLOTS
            base = slot * self.width
            if cells[base] == key:
                return slot
            idle = cells[base] == 0 or not any(cells[base + 1 : base + self.width])
            if idle and free is None:
                free = slot
            if cells[base] == 0:
                break
        if take and free is not None:
            base = free * self.width
            cells[base] = key
            for i in range(1, self.width):
                cells[base + i] = 0
        return free if take else None

    def count(self, address: str) -> int:
        with self.cells.get_lock():
            slot = self._slot(address_key(address), take=False)
            if slot is None:
                return 0
            base = slot * self.width
            return int(sum(self.cells[base + 1 : base + self.width]))

    def admit(self, address: str, index: int, limit: int) -> bool:
        """Count a connection from `address` in process `index`, unless `limit` are open already."""
        with self.cells.get_lock():
            slot = self._slot(address_key(address), take=True)
            if slot is None:
                return False  # the table is full of other addresses: far past every limit
            base = slot * self.width
            if sum(self.cells[base + 1 : base + self.width]) >= limit:
                return False
            self.cells[base + 1 + index] += 1
            return True

    def release(self, address: str, index: int) -> None:
        with self.cells.get_lock():
            slot = self._slot(address_key(address), take=False)
            if slot is not None and self.cells[slot * self.width + 1 + index] > 0:
                self.cells[slot * self.width + 1 + index] -= 1

    def reset(self, index: int) -> None:
        with self.cells.get_lock():
            for slot in range(self.SLOTS):
                self.cells[slot * self.width + 1 + index] = 0
