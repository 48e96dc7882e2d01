"""send/recv between RDMA ranks that are not ring neighbours: a queue pair per direction,
opened on first use, the data over RDMA (issue 19).

What the two queue pairs need of each other (number, GID, PSN, MTU, frame size)
goes over a TCP bootstrap connection that ``transports.direct`` opens and authenticates with
the ring's handshake (job digest, ranks, HMAC proof of ``RINGCOMM_TOKEN``; strays and forgeries
refused) under the caller's deadline, to the listener every RDMA rank binds at set-up on its
side channel's IP (its port goes round in the set-up table).  The opener creates its queue
pair and sends its description; the peer's acceptor thread (which serves whatever that rank is
doing) creates its own, brings it to RTS and answers with its description; the opener brings
its own to RTS.  Only this set-up runs in the acceptor thread (within ``HANDSHAKE_SECONDS``,
for a peer that has proved itself); the bytes then move in the caller's thread over RDMA
exactly as on a ring link (frames, sequence, checksums, acknowledgements, credits,
``rdma_stream``), and the header is checked before any data byte is taken.
Each queue pair carries one direction, opener to acceptor, as direct TCP connections do, so
two ranks that send to each other at once never have to agree on who opens.

Direct queue pairs have device contexts and completion queues of their own (a second
``RdmaSetup``, sharing the ring's count of queue pairs per device and of locked memory),
polled while a direct send or recv runs and while the ring's waits nap (a lost frame of
theirs is sent again whatever this rank waits for).  Waiting spins, then naps on
the ring's side channel (``rdma_stream.Backoff``), so another rank's failure notice or death
ends the wait at once; failures are relayed there too.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
from typing import Any, Protocol, Sequence

from .direct import HANDSHAKE_SECONDS, DirectLinks, HeadCheck
from .errors import CommError, CommTimeoutError, ConfigError
from .hostfile import Address
from .posted import Posted
from .rdma_keeper import Keeper
from .rdma_setup import Link, RdmaSetup
from .rdma_stream import (FIRST_NAP, MAX_NAP, Backoff, SlotStream,
                          wait_acknowledged)
from .sockets import recv_exactly



class RingTransport(Protocol):
    """What the direct links need of the ring's RDMA transport (``rdma.RdmaTransport``), so
    that this module, which that transport builds, never imports it."""

    rank: int
    size: int
    flush_seconds: float
    _api: Any
    _setup: RdmaSetup
    _devices: Any
    _keeper: Keeper
    _side: Any
    _ok: Any

    def _progress(self) -> None: ...
    def _failed(self, link: Link) -> CommError: ...

_LENGTH = struct.Struct("!I")
MAX_DESCRIPTION = 4096  # bytes of a queue pair's description (JSON, ~200 in practice)


class DirectLink(Link):
    """A direct queue pair: ``index`` 1 sends (this rank opened it), 0 receives."""

    def describe(self) -> str:
        return (f"the direct queue pair {'to' if self.index else 'from'} rank {self.peer} on "
                f"{self.device}")


class RdmaDirectLinks(SlotStream, DirectLinks):
    """This rank's direct queue pairs: opened to peers on first use, accepted from them."""

    def __init__(self, transport: RingTransport, addresses: Sequence[Address],
                 listener: socket.socket, *, job_id: str, token: bytes | None) -> None:
        self._transport = transport  # its side channel carries notices; its devices, names
        self._api = transport._api
        ring = transport._setup
        self._setup = RdmaSetup(self._api, transport.rank, transport.size, ring.gid_index,
                                budget=ring.budget, qp_type=ring.qp_type)
        self._adding = threading.Lock()  # the acceptor thread adds queue pairs too
        self._qp_out: dict[int, DirectLink] = {}
        self._qp_in: dict[int, DirectLink] = {}
        self._closed_qps = False
        super().__init__(transport.rank, transport.size, addresses, listener, job_id=job_id,
                         token=token)

    # -- opening -------------------------------------------------------------------------------

    def _device(self, peer: int) -> str:
        """The device file's entry toward ``peer``, else the one toward the right neighbour."""
        devices = self._transport._devices
        names = devices[self.rank][peer] or devices[self.rank][(self.rank + 1) % self.size]
        return names[0]

    def _new_link(self, peer: int, sending: bool) -> DirectLink:
        """A direct queue pair, within the devices' and the locked-memory limits (else
        ConfigError, before it exists)."""
        device = self._device(peer)
        with self._adding:
            self._setup.check_limits([device])
            return self._setup.add(None, int(sending), peer, device, DirectLink)

    def _link_to(self, peer: int, deadline: float, op: str) -> DirectLink:
        """The queue pair that carries this rank's messages to ``peer``, opened on first use."""
        link = self._qp_out.get(peer)
        if link is not None:
            return link
        sock = self._opened(peer, deadline, op)  # the ring's handshake, under the deadline
        try:
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))  # sends too: bounded
            link = self._new_link(peer, sending=True)
            _send_blob(sock, RdmaSetup.describe_link(link))
            theirs = _recv_blob(sock, deadline)
            if "error" in theirs:
                raise CommError(f"rank {peer} could not open its end of a direct queue pair: "
                                f"{theirs['error']}", rank=self.rank, peer=peer,
                                address=self.address(peer), op=op)
            self._setup.connect_to(link, theirs)
        except (CommError, ConfigError):
            raise
        except TimeoutError as e:
            raise CommTimeoutError(f"rank {peer} did not describe its direct queue pair by "
                                   f"the deadline ({e})", rank=self.rank, peer=peer,
                                   address=self.address(peer), op=op) from e
        except Exception as e:  # noqa: BLE001 - a closed bootstrap, bad JSON, a verbs error
            raise CommError(f"opening a direct queue pair to rank {peer} failed: "
                            f"{type(e).__name__}: {e}", rank=self.rank, peer=peer,
                            address=self.address(peer), op=op) from e
        self._qp_out[peer] = link
        return link

    def _adopt(self, peer: int, sock: socket.socket) -> None:
        """In the acceptor thread: ``peer`` (verified) describes its queue pair; open ours."""
        sock.settimeout(HANDSHAKE_SECONDS)  # sends too: bounded
        theirs = _recv_blob(sock, time.monotonic() + HANDSHAKE_SECONDS)
        try:
            link = self._new_link(peer, sending=False)
            self._setup.connect_to(link, theirs)
        except Exception as e:  # noqa: BLE001 - told to the opener, which raises it
            _send_blob(sock, {"error": f"{type(e).__name__}: {e}"})
            raise
        _send_blob(sock, RdmaSetup.describe_link(link))
        self._qp_in[peer] = link  # only once the opener can use it

    def _link_from(self, peer: int, deadline: float, op: str) -> DirectLink:
        """The queue pair ``peer`` opened to this rank, once its bootstrap is done; waits as
        the ring does (naps on the side channel, so a notice or a dead rank ends it)."""
        nap = FIRST_NAP
        while peer not in self._qp_in:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                raise CommTimeoutError(f"rank {peer} opened no direct queue pair to this rank "
                                       "by the deadline", rank=self.rank, peer=peer,
                                       address=self.address(peer), op=op)
            self._nap(min(nap, left))
            nap = min(nap * 2, MAX_NAP)
        return self._qp_in[peer]

    # -- moving one message each way ----------------------------------------------------------

    def exchange(self, send: tuple[int, bytes, memoryview] | None,
                 recv: tuple[int, bytearray, memoryview, HeadCheck] | None,
                 deadline: float, op: str) -> None:
        """Send (peer, head, data) and receive (peer, head buffer, into, check) at once; the
        received head is checked (``check``) before any data byte is taken."""
        with self._transport._keeper.lock:  # the links change only under it
            self._exchange(send, recv, deadline, op)

    def _exchange(self, send: tuple[int, bytes, memoryview] | None,
                  recv: tuple[int, bytearray, memoryview, HeadCheck] | None,
                  deadline: float, op: str) -> None:
        out = self._link_to(send[0], deadline, op) if send is not None else None
        into = self._link_from(recv[0], deadline, op) if recv is not None else None
        # a failed link still delivers what arrived before its failure (as the loop below)
        if out is not None and out.failure is not None:
            raise self._failed(out, op)
        if into is not None and into.failure is not None and not into.arrived:
            raise self._failed(into, op)
        if out is not None:
            out.sending = Posted(send[2], send[1])  # head and data share frames
        unchecked = into is not None
        if unchecked:
            into.receiving = Posted(memoryview(recv[1]))
        backoff = Backoff(deadline)
        while (out is not None and out.sending is not None) or \
                (into is not None and into.receiving is not None) or unchecked:
            progressed = self._progress()
            if out is not None and out.sending is not None:
                progressed = self._fill(out)[0] or progressed
            if into is not None and into.receiving is not None:
                progressed = self._copy_in(into)[0] or progressed
                if unchecked and into.receiving is None:
                    unchecked = False
                    recv[3](bytes(recv[1]))  # MismatchError before the data is touched
                    if len(recv[2]):
                        into.receiving = Posted(recv[2])
                        continue
            for link in (out, into):
                if link is not None and link.failure is not None and (
                        link.sending is not None or
                        (link.receiving is not None and not link.arrived)):
                    raise self._failed(link, op)
            if progressed and time.monotonic() < deadline:
                backoff.progressed()
            elif not backoff.idle(self._nap):
                raise self._timed_out(out, into, op)

    def progress_idle(self) -> None:
        """While the ring's wait naps: take what arrived, resend and report (a peer may be
        waiting for a frame of these links that was lost)."""
        try:
            self._progress()
        except CommError:
            pass  # raised by the direct send or recv that needs the link, if one does

    def _nap(self, seconds: float) -> None:
        """Sleep on the ring's side channel: another rank's notice (or death) raises here;
        all links are served meanwhile (a peer may wait for a lost frame of any of them)."""
        self.progress_idle()
        try:
            self._transport._progress()
        except CommError:
            pass  # recorded on the ring's link: its next send or recv raises it
        side = self._transport._side
        if side is None:
            time.sleep(seconds)
        else:
            side.watch(seconds)

    def _on_completion(self, wc) -> None:
        if wc.status != self._transport._ok:
            # raised by ``exchange`` once nothing that arrived first is left to take
            link = self._setup.by_number[wc.wr_id >> 16]
            if link.failure is None:
                link.failure = ((wc.wr_id >> 8) & 0xFF, wc.status)
            return
        self._book(wc)

    def _failed(self, link: Link, op: str) -> CommError:
        """A failed completion: its error, or the root cause a side-channel notice names."""
        error = self._transport._failed(link)
        error.op = error.op or op
        return error

    def _timed_out(self, out: Link | None, into: Link | None, op: str) -> CommTimeoutError:
        link, what = (out, "send to") if out is not None and out.sending is not None else \
            (into, "receive from")
        return CommTimeoutError(f"the direct {what} rank {link.peer} over {link.describe()} "
                                "did not finish by the deadline; the peer may be frozen, "
                                "overloaded or in a different operation", rank=self.rank,
                                peer=link.peer, address=self.address(link.peer), op=op)

    # -- the end ------------------------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        """The ring's side channel tells the other ranks (``RdmaTransport.abort``): close."""
        self._close(flush=False)

    def close(self) -> None:
        self._close(flush=True)

    def _close(self, flush: bool) -> None:
        """Stop the acceptor and the bootstraps, let the peers acknowledge what this rank
        sent (``wait_acknowledged``, as the ring does), then destroy the queue pairs."""
        super().close()
        with self._transport._keeper.lock:  # the keeper's round progresses these links too
            if self._closed_qps:
                return
            self._closed_qps = True
            if flush:
                wait_acknowledged(self._qp_out.values(), self._progress,
                                  self._transport.flush_seconds, self._nap)
                for link in self._setup.by_number:
                    self._say_bye(link)
            self._setup.release()


def _send_blob(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _recv_blob(sock: socket.socket, deadline: float) -> dict:
    (n,) = _LENGTH.unpack(recv_exactly(sock, _LENGTH.size, deadline))
    if n > MAX_DESCRIPTION:
        raise ValueError(f"a queue pair description of {n} bytes (at most {MAX_DESCRIPTION})")
    obj = json.loads(recv_exactly(sock, n, deadline))
    if not isinstance(obj, dict):
        raise ValueError("a queue pair description that is not a JSON object")
    return obj
