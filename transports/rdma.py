"""RDMA verbs as a ring transport: moving bytes over the queue pairs ``rdma_setup`` opened.

Unreliable-connected queue pairs and two-sided sends only (what Thunderbolt allows, on every
stack): every message is one fixed-size frame (``transports.rdma_frames``) between registered
slots, with a sequence number and checksums, and what was lost, damaged or repeated is found
by the receiver and sent again by the sender from its copy (``transports.rdma_reliable``).
A transfer is a byte stream, as on TCP: a send is cut into frames, a receive takes bytes from
arrived frames in order (``transports.rdma_stream``).  Acknowledgements and credits travel
in every frame's header, so a send never meets a missing receive and nothing is RDMA-written.

Set-up: ``transports.rdma_setup`` opens the queue pairs; their numbers, GIDs and PSNs
travel through the TCP side channel (``transports.sidechannel``, rank 0 the coordinator at
``MLX_JACCL_COORDINATOR``), which then carries failure notices.

Waiting polls the completion queues, resends and reports what the links owe, spins for at
most ``SPIN_SECONDS`` after the last completion, then sleeps on the side channel in naps that
double from ``FIRST_NAP`` to ``MAX_NAP`` (``rdma_stream.Backoff``); a notice from another
rank (or a rank's death) wakes it at once.  Protocol details: ``docs/rdma-protocol.md``.  The
same code runs on real pyverbs or on the emulation in ``transports.emulated_verbs``
(``RINGCOMM_VERBS=emulated``).
"""
from __future__ import annotations

import json
import socket
import time
from typing import Sequence

from . import settings, verbs
from .base import Channel, Kind, Side, Transport
from .devicefile import ring_devices
from .errors import CommError, CommTimeoutError, PeerLostError
from .handshake import job_digest
from .hostfile import Address
from .arrivals import HEAD
from .posted import Posted
from .rdma_direct import RdmaDirectLinks
from .rdma_idle import IdleLinks
from .rdma_keeper import Keeper, locked
from .rdma_frames import FRAME_BYTES, PAYLOAD_BYTES, SLOTS
from .rdma_setup import RECV, Link, RdmaSetup
from .rdma_stream import FLUSH_SECONDS, Backoff, SlotStream, wait_acknowledged
from .sidechannel import SideChannel


__all__ = ["RdmaTransport", "FRAME_BYTES", "PAYLOAD_BYTES", "SLOTS"]

NOTICE_GRACE = 0.1       # after a failed completion, how long to wait for the root cause

STATUS_HINTS = {
    "IBV_WC_RETRY_EXC_ERR": "the peer's adapter stopped answering (its process died, the "
                            "link is down, or its queue pair failed)",
    "IBV_WC_WR_FLUSH_ERR": "this queue pair failed before the request ran, with no error "
                           "of its own (a local fault)",
    "IBV_WC_LOC_LEN_ERR": "a message did not fit its receive frame, or spanned another "
                          "number of 4 KiB units (ranks built with different FRAME_BYTES?)",
    "IBV_WC_REM_INV_REQ_ERR": "the peer could not take a message (longer than its frame?)",
    "IBV_WC_LOC_PROT_ERR": "a buffer was not registered memory",
    "IBV_WC_LOC_QP_OP_ERR": "this queue pair rejected the request",
    "IBV_WC_GENERAL_ERR": "the adapter failed the request",
}
# The statuses that mean the peer is gone.  A flush is the first failure of a queue pair only
# when it failed on this side, so it blames no peer (relayed, it would name the wrong rank).
LOST_STATUSES = ("IBV_WC_RETRY_EXC_ERR",)


class RdmaTransport(SlotStream, IdleLinks, Transport):
    """A rank's queue pairs to its ring neighbours, on pyverbs or the verbs emulation."""

    def __init__(self, rank: int, devices: Sequence[Sequence[Sequence[str]]],
                 coordinator: Address, *, timeout: float, verbs_provider: str | None = None,
                 job_id: str = "", token: bytes | None = None, gid_index: int | None = None,
                 coordinator_listener: socket.socket | None = None) -> None:
        self.rank, self.size, self.job_id = rank, len(devices), job_id
        self.flush_seconds = max(FLUSH_SECONDS, timeout)  # close waits for acks as a call would
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
        self._direct: RdmaDirectLinks | None = None
        self._keeper = Keeper(self._keep, f"ringcomm-rdma-keeper-{rank}")
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
        if gid_index is None:
            gid_index = settings.load().gid_index
        setup = self._setup = RdmaSetup(self._api, rank, self.connections, gid_index,
                                        qp_type=settings.load().rdma_qp)
        self._links, self._by_number = setup.links, setup.by_number
        setup.check_devices({*left_names, *right_names}, verbs.device_names(self._api),
                            self.emulated)
        setup.check_limits(left_names + right_names)  # before any queue pair exists
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
            self._keeper.start()
        except BaseException:
            self.close()
            raise

    def direct_links(self) -> RdmaDirectLinks | None:
        """Queue pairs to the ranks that are not ring neighbours, opened on first use over a
        bootstrap authenticated as the ring is (``transports.rdma_direct``)."""
        if self._listener is None:
            return None
        self._direct = RdmaDirectLinks(self, self._direct_addresses, self._listener,
                                       job_id=self.job_id, token=self._token)
        return self._direct

    def address(self, rank: int) -> str | None:
        """Where ``rank`` listens (its side channel's IP and direct-link port), for errors:
        RDMA has no hostfile, and a device name is this rank's own, not the peer's."""
        known = 0 <= rank < len(self._direct_addresses)
        return str(self._direct_addresses[rank]) if known else None

    def local_host(self) -> str:
        """The IP of this rank's side channel (``SideChannel.local_host``)."""
        return self._side.local_host()

    # -- data ------------------------------------------------------------------------------

    @locked
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
        link.sending = Posted(data, head)  # head and data share frames
        self._sending.add(link)
        self._push(link)

    @locked
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

    @locked
    def wait(self, deadline: float) -> list[Channel]:
        if self._keeper.error is not None:  # found while this rank was outside ringcomm
            error, self._keeper.error = self._keeper.error, None
            raise error
        backoff = Backoff(deadline)
        while not self._done:
            progressed = self._poll()
            for link in list(self._sending):  # the window or the credits may have grown
                progressed = self._push(link) or progressed
            now = time.monotonic()
            for link in self._by_number:  # resend on silence, report what is owed
                progressed = self._service(link, now, not progressed) or progressed
            if self._done:
                break
            if now >= deadline:  # (busy resending to a silent peer counts as no progress)
                raise self._timed_out()
            if progressed:
                backoff.progressed()
            elif not backoff.idle(self._nap):
                raise self._timed_out()
        done, self._done = self._done, []
        return done

    def _keep(self) -> None:
        """The keeper's round, while this rank is outside ringcomm (``rdma_keeper``)."""
        if self._side is not None and not self._closed:
            self._progress()
            if self._direct is not None:
                self._direct.progress_idle()

    def _nap(self, seconds: float) -> None:
        if self._vet is not None:
            self._vet_links()
        if self._direct is not None:  # their frames may be what a peer waits for
            self._direct.progress_idle()
        self._side.watch(seconds)

    def _on_completion(self, wc) -> None:
        link = self._by_number[wc.wr_id >> 16]
        kind = (wc.wr_id >> 8) & 0xFF
        if wc.status != self._ok:
            if link.failure is None:
                link.failure = (kind, wc.status)
            if link.sending is not None or link.receiving is not None:
                raise self._failed(link)
            return
        self._book(wc)
        if kind == RECV and link.arrived:
            if link.receiving is not None:
                self._drain(link)
            elif self._stash and self._reading_ahead(link):
                self._drain_ahead(link)
        if link.sending is not None:  # its report may have opened the window
            self._push(link)

    def _failed(self, link: Link) -> CommError:
        """The error for a failed completion: a notice's root cause if one comes, else this."""
        try:
            if self._side is not None:
                self._side.watch(NOTICE_GRACE)
        except CommError as notice:
            return notice
        kind, status = link.failure
        name = self._status_names.get(status, f"status {status}")
        what = ("receive", "send")[kind]
        cls = PeerLostError if name in LOST_STATUSES else CommError
        return cls(f"{what} on {link.describe()} completed with {name}: "
                   f"{STATUS_HINTS.get(name, 'see the verbs documentation')}",
                   rank=self.rank, peer=link.peer, address=self.address(link.peer))

    def _timed_out(self) -> CommTimeoutError:
        pending = [(link, what) for link in self._by_number
                   for what, posted in (("send to", link.sending),
                                        ("receive from", link.receiving)) if posted is not None]
        detail = "; ".join(f"{what} rank {link.peer} on {link.describe()}"
                           + (f" ({link.counts['resent']} frames sent again)"
                              if link.counts["resent"] else "")
                           for link, what in pending)
        first = pending[0][0] if pending else None
        return CommTimeoutError(f"deadline passed while waiting to {detail or 'progress'}; a "
                                "peer may be frozen, overloaded or in a different operation",
                                rank=self.rank, peer=first.peer if first else None,
                                address=self.address(first.peer) if first else None)

    # -- failure and shutdown -----------------------------------------------------------------

    @locked
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

    @locked
    def close(self) -> None:
        self._close(flush=True)

    def _close(self, flush: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._keeper.stop()
        if flush and self._by_number:
            wait_acknowledged(self._by_number, self._progress, self.flush_seconds,
                              self._side.watch if self._side is not None else time.sleep)
            for link in self._by_number:
                self._say_bye(link)
        if self._side is not None:
            self._side.close()
        if self._listener is not None:
            self._listener.close()
        if self._setup is not None:
            self._setup.release()
