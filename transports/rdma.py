"""RDMA verbs as a ring transport: moving bytes over the queue pairs ``rdma_setup`` opened.

Data moves with two-sided sends (``IBV_WR_SEND``) between registered slots: each queue pair
owns ``SLOTS`` receive slots and ``SLOTS`` send slots of ``SLOT_BYTES``.  A transfer is a byte
stream, as on TCP: a send is cut into slot-sized messages, a receive takes bytes from arrived
messages in order.  Credits make sure a send never meets a missing receive: every receive
posted by a rank is counted, and the count is RDMA-written into its peer's credit word; a
rank sends only while its messages sent are fewer than that word.  Queue pairs therefore run
with ``rnr_retry = 0``: a receiver-not-ready would be a bug, and fails loudly.

Set-up: ``transports.rdma_setup`` opens the queue pairs; their numbers, GIDs, PSNs and keys
travel through the TCP side channel (``transports.sidechannel``, rank 0 the coordinator at
``MLX_JACCL_COORDINATOR``), which then carries failure notices.

Waiting polls the completion queues, spins for at most ``SPIN_SECONDS`` after the last
completion, then sleeps on the side channel in naps that double from ``FIRST_NAP`` to
``MAX_NAP`` (``rdma_stream.Backoff``); a notice from another rank (or a rank's death) wakes
it at once.  Protocol
details: ``docs/rdma-protocol.md``.  The same code runs on real pyverbs or on the emulation
in ``transports.emulated_verbs`` (``RINGCOMM_VERBS=emulated``).
"""
from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING, Sequence

from . import verbs
from .base import Channel, Kind, Side, Transport
from .devicefile import ring_devices
from .errors import CommError, CommTimeoutError, PeerLostError
from .handshake import job_digest
from .hostfile import Address
from .arrivals import HEAD
from .posted import Posted
from .rdma_idle import IdleLinks
from .rdma_setup import RECV, SEND, SLOT_BYTES, SLOTS, Link, RdmaSetup
from .rdma_stream import FLUSH_SECONDS, Backoff, SlotStream, wait_acknowledged
from .sidechannel import SideChannel

if TYPE_CHECKING:
    from .rdma_direct import RdmaDirectLinks

__all__ = ["RdmaTransport", "SLOT_BYTES", "SLOTS"]

NOTICE_GRACE = 0.1       # after a failed completion, how long to wait for the root cause

STATUS_HINTS = {
    "IBV_WC_RETRY_EXC_ERR": "the peer's adapter stopped answering (its process died, the "
                            "link is down, or its queue pair failed)",
    "IBV_WC_RNR_RETRY_EXC_ERR": "the peer had no receive posted (a credit bug; please "
                                "report it)",
    "IBV_WC_WR_FLUSH_ERR": "this queue pair failed before the request ran, with no error "
                           "of its own (a local fault, or a refused write from the peer)",
    "IBV_WC_REM_ACCESS_ERR": "the peer refused a write to its credit word (the two ranks "
                             "disagree on set-up)",
    "IBV_WC_LOC_LEN_ERR": "a message was longer than the receive slot (ranks built with "
                          "different SLOT_BYTES?)",
    "IBV_WC_REM_INV_REQ_ERR": "the peer could not take a message (longer than its slot?)",
    "IBV_WC_LOC_PROT_ERR": "a buffer was not registered memory",
    "IBV_WC_REM_OP_ERR": "the peer's adapter failed the operation",
    "IBV_WC_LOC_QP_OP_ERR": "this queue pair rejected the request",
}
# The statuses that mean the peer is gone.  A flush is the first failure of a queue pair only
# when it failed on this side, so it blames no peer (relayed, it would name the wrong rank).
LOST_STATUSES = ("IBV_WC_RETRY_EXC_ERR",)


class RdmaTransport(SlotStream, IdleLinks, Transport):
    """A rank's queue pairs to its ring neighbours, on pyverbs or the verbs emulation."""

    def __init__(self, rank: int, devices: Sequence[Sequence[Sequence[str]]],
                 coordinator: Address, *, timeout: float, verbs_provider: str | None = None,
                 job_id: str = "", token: bytes | None = None, gid_index: int = 0,
                 coordinator_listener: socket.socket | None = None) -> None:
        self.rank, self.size, self.job_id = rank, len(devices), job_id
        left_names, right_names = ring_devices(devices, rank)
        self.connections = max(len(right_names), 1)
        self._done: list[Channel] = []
        self._sending: set[Link] = set()
        self._side: SideChannel | None = None
        self._closed = False
        self._setup: RdmaSetup | None = None
        self._links: tuple[list[Link], list[Link]] = ([], [])
        self._by_number: list[Link] = []
        self._devices, self._token = devices, token
        self._listener: socket.socket | None = None  # for direct links' bootstrap (p2p)
        self._direct_addresses: list[Address] = []
        self._init_idle()
        if self.size == 1:
            return
        self._api = verbs.load(verbs_provider)
        self.emulated = bool(getattr(self._api, "EMULATED", False))
        e = self._api.enums
        self._ok = e.IBV_WC_SUCCESS
        self._status_names = {getattr(e, n): n for n in (
            "IBV_WC_SUCCESS", *STATUS_HINTS) if hasattr(e, n)}
        deadline = time.monotonic() + timeout
        setup = self._setup = RdmaSetup(self._api, rank, self.connections, gid_index)
        self._links, self._by_number = setup.links, setup.by_number
        setup.check_devices({*left_names, *right_names}, verbs.device_names(self._api),
                            self.emulated)
        try:
            for side, names in ((Side.LEFT, left_names), (Side.RIGHT, right_names)):
                for i, name in enumerate(names):
                    setup.add(side, i, self.peer(side), name)
            self._side = SideChannel(rank, self.size, coordinator, job=job_digest(job_id),
                                     token=token, deadline=deadline,
                                     listener=coordinator_listener)
            host = self._side.local_host()
            self._listener = socket.create_server((host, 0), backlog=64)
            mine = {**setup.describe(), "direct": [host, self._listener.getsockname()[1]]}
            table = self._side.all_gather(json.dumps(mine).encode(), deadline)
            self._direct_addresses = [Address(*json.loads(blob)["direct"]) for blob in table]
            for link in self._by_number:
                setup.connect(link, json.loads(table[link.peer]))
            self._side.all_gather(b"ready", deadline)  # nobody sends before all are in RTS
        except BaseException:
            self.close()
            raise

    def direct_links(self) -> RdmaDirectLinks | None:
        """Queue pairs to the ranks that are not ring neighbours, opened on first use over a
        bootstrap authenticated as the ring is (``transports.rdma_direct``)."""
        from .rdma_direct import RdmaDirectLinks
        if self._listener is None:
            return None
        return RdmaDirectLinks(self, self._direct_addresses, self._listener,
                               job_id=self.job_id, token=self._token)

    def address(self, rank: int) -> str | None:
        """Where ``rank`` listens (its side channel's IP and direct-link port), for errors:
        RDMA has no hostfile, and a device name is this rank's own, not the peer's."""
        known = 0 <= rank < len(self._direct_addresses)
        return str(self._direct_addresses[rank]) if known else None

    def local_host(self) -> str:
        """The IP of this rank's side channel (``SideChannel.local_host``)."""
        return self._side.local_host()

    # -- data ------------------------------------------------------------------------------

    def post_send(self, side: Side, conn: int, data: memoryview,
                  head: bytes | None = None) -> None:
        link = self._links[side][conn]
        if link.sending is not None:
            raise RuntimeError(f"a send is already posted on {side.name}[{conn}]")
        if link.failure is not None:
            raise self._failed(link)
        if not len(data) and not head:
            self._done.append(Channel(side, conn, Kind.SEND))
            return
        link.sending = Posted(data, head)  # a head fills a message of its own
        self._sending.add(link)
        self._push(link)

    def post_recv(self, side: Side, conn: int, into: memoryview,
                  head: bytearray | None = None) -> None:
        link = self._links[side][conn]
        if link.receiving is not None:
            raise RuntimeError(f"a receive is already posted on {side.name}[{conn}]")
        if link.failure is not None:
            raise self._failed(link)
        if not len(into) and not head:
            self._done.append(Channel(side, conn, Kind.RECV))
            return
        if self._stash and link in self._stash:
            return self._recv_stashed(link, into, head)
        if head is not None:  # what the caller expects: HEAD only when a byte differs
            self._expect[link] = (head, bytes(head))
        link.receiving = Posted(into, head)
        self._drain(link)

    def _push(self, link: Link) -> bool:
        """Post what credits and free slots allow of the posted send (``SlotStream``)."""
        pushed, finished = self._fill(link)
        if finished:
            self._sending.discard(link)
            self._done.append(Channel(link.side, link.index, Kind.SEND))
        return pushed

    def _drain(self, link: Link) -> None:
        """Hand arrived bytes to the posted receive; repost each slot once it is empty."""
        p = link.receiving
        in_head = p.next is not None
        if self._copy_in(link)[1]:
            self._done.append(Channel(link.side, link.index, Kind.RECV))
            return
        if in_head and (p.next is None or p.pos):  # head bytes came, the data is not all in
            head, expect = self._expect.get(link, (None, None))
            if head is not None and head != expect:  # a byte differs: check it now
                self._done.append(Channel(link.side, link.index, HEAD))

    def wait(self, deadline: float) -> list[Channel]:
        backoff = Backoff(deadline)
        while not self._done:
            progressed = self._poll()
            for link in list(self._sending):  # a credit word may have grown
                progressed = self._push(link) or progressed
            if self._done:
                break
            if progressed:
                backoff.progressed()
            elif not backoff.idle(self._nap):
                raise self._timed_out()
        done, self._done = self._done, []
        return done

    def _nap(self, seconds: float) -> None:
        if self._vet is not None:
            self._vet_links()
        self._side.watch(seconds)

    def _on_completion(self, wc) -> None:
        link = self._by_number[wc.wr_id >> 16]
        kind, slot = (wc.wr_id >> 8) & 0xFF, wc.wr_id & 0xFF
        if wc.status != self._ok:
            # A peer that finished and closed fails our last credit write to it; that is no
            # error unless this link is still needed, so it is raised when (or if) it is.
            if link.failure is None:
                link.failure = (kind, wc.status)
            if link.sending is not None or link.receiving is not None:
                raise self._failed(link)
            return
        if kind == RECV:
            link.arrived.append((slot, wc.byte_len))
            if link.receiving is not None:
                self._drain(link)
            elif self._stash and self._reading_ahead(link):
                self._drain_ahead(link)
        elif kind == SEND:
            link.free_slots.append(slot)
            if link.sending is not None:
                self._push(link)
        else:
            link.credit_write_busy = False
            self._advertise(link)

    def _failed(self, link: Link) -> CommError:
        """The error for a failed completion: a notice's root cause if one comes, else this."""
        try:
            if self._side is not None:
                self._side.watch(NOTICE_GRACE)
        except CommError as notice:
            return notice
        kind, status = link.failure
        name = self._status_names.get(status, f"status {status}")
        what = ("receive", "send", "credit update")[kind]
        cls = PeerLostError if name in LOST_STATUSES else CommError
        return cls(f"{what} on {link.describe()} completed with {name}: "
                   f"{STATUS_HINTS.get(name, 'see the verbs documentation')}",
                   rank=self.rank, peer=link.peer, address=self.address(link.peer))

    def _timed_out(self) -> CommTimeoutError:
        pending = [(link, what) for link in self._by_number
                   for what, posted in (("send to", link.sending),
                                        ("receive from", link.receiving)) if posted is not None]
        detail = "; ".join(f"{what} rank {link.peer} on {link.describe()}"
                           for link, what in pending)
        first = pending[0][0] if pending else None
        return CommTimeoutError(f"deadline passed while waiting to {detail or 'progress'}; a "
                                "peer may be frozen, overloaded or in a different operation",
                                rank=self.rank, peer=first.peer if first else None,
                                address=self.address(first.peer) if first else None)

    # -- failure and shutdown -----------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        if self._closed:
            return
        if isinstance(error, CommError) and error.peer is not None and error.address is None:
            error.address = self.address(error.peer)  # e.g. the side channel's, or a mismatch
        if self._side is not None:
            self._side.notify(error)
            self._side.close(goodbye=False)
            self._side = None
        self._close(flush=False)

    def close(self) -> None:
        self._close(flush=True)

    def _close(self, flush: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if flush and self._by_number:
            wait_acknowledged(self._by_number, self._poll, FLUSH_SECONDS)
        if self._side is not None:
            self._side.close()
        if self._listener is not None:
            self._listener.close()
        if self._setup is not None:
            self._setup.release()
