"""RDMA verbs as a ring transport: reliable-connected queue pairs to both ring neighbours.

Each rank opens, per neighbour, one RC queue pair on each device the device file names
toward it (``MLX_IBV_DEVICES``; K devices = K connections).  Queue-pair numbers, GIDs, PSNs
and memory keys travel through the TCP side channel (``transports.sidechannel``, rank 0 the
coordinator at ``MLX_JACCL_COORDINATOR``); then every queue pair goes INIT -> RTR -> RTS.

Data moves with two-sided sends (``IBV_WR_SEND``) between registered slots: each queue pair
owns ``SLOTS`` receive slots and ``SLOTS`` send slots of ``SLOT_BYTES``.  A transfer is a byte
stream, as on TCP: a send is cut into slot-sized messages, a receive takes bytes from arrived
messages in order.  Credits make sure a send never meets a missing receive: every receive
posted by a rank is counted, and the count is RDMA-written into its peer's credit word; a
rank sends only while its messages sent are fewer than that word.  Queue pairs therefore run
with ``rnr_retry = 0``: a receiver-not-ready would be a bug, and fails loudly.

Waiting polls the completion queues, spins for at most ``SPIN_SECONDS`` after the last
completion, then sleeps on the side channel in naps that double from ``FIRST_NAP`` to
``MAX_NAP``; a notice from another rank (or a rank's death) wakes it at once.  Protocol
details: ``docs/rdma-protocol.md``.  The same code runs on real pyverbs or on the emulation
in ``transports.emulated_verbs`` (``RINGCOMM_VERBS=emulated``).
"""
from __future__ import annotations

import collections
import ctypes
import json
import os
import time
from types import SimpleNamespace
from typing import Sequence

from . import verbs
from .base import Channel, Kind, Side, Transport
from .devicefile import ring_devices
from .errors import CommError, CommTimeoutError, ConfigError, PeerLostError
from .handshake import job_digest
from .hostfile import Address
from .posted import Posted
from .sidechannel import SideChannel

SLOT_BYTES = 256 << 10   # one message at most; JACCL uses 4 KiB-512 KiB buffers
SLOTS = 8                # receive slots (= credits) and send slots per queue pair
SPIN_SECONDS = 50e-6     # poll without sleeping this long after the last completion
FIRST_NAP, MAX_NAP = 20e-6, 1e-3
POLL_BATCH = 16
NOTICE_GRACE = 0.1       # after a failed completion, how long to wait for the root cause
FLUSH_SECONDS = 5.0      # at close, how long to wait for the peers to acknowledge our sends
RECV, SEND, CREDIT = 0, 1, 2  # the kinds of work request, in bits 8-15 of wr_id
PORT = 1
_CREDIT_WORDS = 16       # after the slots: credit_in (the peer writes it), credit_out

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


class _Link:
    """One queue pair to a neighbour: its registered slots, credits, and posted transfers."""

    def __init__(self, number: int, side: Side, index: int, peer: int, device: str) -> None:
        self.number, self.side, self.index, self.peer, self.device = (number, side, index,
                                                                      peer, device)
        self.qp = self.mr = None
        self.psn = int.from_bytes(os.urandom(3), "big")
        # sending
        self.free_slots = list(range(SLOTS))
        self.messages_sent = 0
        self.sending: Posted | None = None
        # receiving: messages that arrived, oldest first, as (slot, length)
        self.arrived: collections.deque[tuple[int, int]] = collections.deque()
        self.taken = 0  # bytes of arrived[0] already handed out
        self.receiving: Posted | None = None
        self.receives_posted = 0
        self.advertised = 0
        self.credit_write_busy = False
        self.failure: tuple[int, int] | None = None  # (kind, status) of the first failed request

    def describe(self) -> str:
        return f"{self.side.name.lower()}[{self.index}] on {self.device}"


class RdmaTransport(Transport):
    """A rank's queue pairs to its ring neighbours, on pyverbs or the verbs emulation."""

    def __init__(self, rank: int, devices: Sequence[Sequence[Sequence[str]]],
                 coordinator: Address, *, timeout: float, verbs_provider: str | None = None,
                 job_id: str = "", token: bytes | None = None, gid_index: int = 0) -> None:
        self.rank, self.size, self.job_id = rank, len(devices), job_id
        left_names, right_names = ring_devices(devices, rank)
        self.connections = max(len(right_names), 1)
        self._done: list[Channel] = []
        self._links: tuple[list[_Link], list[_Link]] = ([], [])
        self._by_number: list[_Link] = []
        self._sending: set[_Link] = set()
        self._contexts: dict[str, SimpleNamespace] = {}
        self._side: SideChannel | None = None
        self._closed = False
        if self.size == 1:
            return
        self._api = verbs.load(verbs_provider)
        self.emulated = bool(getattr(self._api, "EMULATED", False))
        e = self._api.enums
        self._ok = e.IBV_WC_SUCCESS
        self._status_names = {getattr(e, n): n for n in (
            "IBV_WC_SUCCESS", *STATUS_HINTS) if hasattr(e, n)}
        deadline = time.monotonic() + timeout
        available = verbs.device_names(self._api)
        for name in sorted({*left_names, *right_names}):
            if name not in available:
                raise ConfigError(
                    f"rank {rank}: the RDMA device file names {name!r}, which "
                    f"{'the verbs emulation' if self.emulated else 'this machine'} does not "
                    f"have; devices here: {', '.join(available) or 'none'}"
                    + ("" if available or self.emulated else
                       " (pyverbs lists no RDMA device; to run the RDMA protocol without "
                       "one, set RINGCOMM_VERBS=emulated: an emulation, not RDMA)"))
        try:
            for side, names in ((Side.LEFT, left_names), (Side.RIGHT, right_names)):
                for i, name in enumerate(names):
                    link = _Link(len(self._by_number), side, i, self.peer(side), name)
                    self._open(link, gid_index)
                    self._links[side].append(link)
                    self._by_number.append(link)
            self._side = SideChannel(rank, self.size, coordinator, job=job_digest(job_id),
                                     token=token, deadline=deadline)
            table = self._side.all_gather(json.dumps(self._describe_links()).encode(),
                                          deadline)
            for link in self._by_number:
                self._connect(link, json.loads(table[link.peer]), gid_index)
            self._side.all_gather(b"ready", deadline)  # nobody sends before all are in RTS
        except BaseException:
            self.close()
            raise

    # -- set-up ----------------------------------------------------------------------------

    def _context(self, name: str, gid_index: int) -> SimpleNamespace:
        """The opened device ``name`` with its protection domain and completion queue."""
        ctx = self._contexts.get(name)
        if ctx is None:
            api = self._api
            opened = api.Context(name=name)
            ctx = SimpleNamespace(ctx=opened, pd=api.PD(opened), cq=None,
                                  port=opened.query_port(PORT),
                                  gid=opened.query_gid(PORT, gid_index).gid)
            # every link on this device shares the queue: room for all their requests
            ctx.cq = api.CQ(opened, 4 * (2 * SLOTS + 2) * self.connections)
            self._contexts[name] = ctx
        return ctx

    def _open(self, link: _Link, gid_index: int) -> None:
        """Create the queue pair and its memory, post every receive slot, move to INIT."""
        api, e = self._api, self._api.enums
        ctx = self._context(link.device, gid_index)
        link.context = ctx
        access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
        length = 2 * SLOTS * SLOT_BYTES + 8 * _CREDIT_WORDS
        link.mr = api.MR(ctx.pd, length, access)
        base = link.mr.buf
        link.mem = memoryview((ctypes.c_char * length).from_address(base)).cast("B")
        credit = base + 2 * SLOTS * SLOT_BYTES
        link.credit_in = ctypes.c_uint64.from_address(credit)       # written by the peer
        link.credit_out = ctypes.c_uint64.from_address(credit + 8)  # what we write there
        link.credit_in.value = SLOTS  # the peer posts SLOTS receives before anyone sends
        link.credit_addr = credit
        cap = api.QPCap(max_send_wr=SLOTS + 2, max_recv_wr=SLOTS, max_send_sge=1,
                        max_recv_sge=1)
        link.qp = api.QP(ctx.pd, api.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=ctx.cq,
                                                 rcq=ctx.cq, cap=cap, sq_sig_all=0))
        attr = api.QPAttr(qp_state=e.IBV_QPS_INIT, port_num=PORT)
        attr.pkey_index = 0
        attr.qp_access_flags = access
        link.qp.to_init(attr)
        wr_base = link.number << 16
        lkey = link.mr.lkey
        link.recv_wrs = [api.RecvWR(wr_id=wr_base | RECV << 8 | s, num_sge=1,
                                    sg=[api.SGE(base + s * SLOT_BYTES, SLOT_BYTES, lkey)])
                         for s in range(SLOTS)]
        link.send_base = SLOTS * SLOT_BYTES
        link.send_wrs = [self._send_wr(link, s, SLOT_BYTES) for s in range(SLOTS)]
        for wr in link.recv_wrs:
            link.qp.post_recv(wr)
        link.receives_posted = link.advertised = SLOTS

    def _send_wr(self, link: _Link, slot: int, length: int):
        api, e = self._api, self._api.enums
        sge = api.SGE(link.mr.buf + link.send_base + slot * SLOT_BYTES, length, link.mr.lkey)
        return api.SendWR(wr_id=link.number << 16 | SEND << 8 | slot, num_sge=1, sg=[sge],
                          opcode=e.IBV_WR_SEND, send_flags=e.IBV_SEND_SIGNALED)

    def _describe_links(self) -> dict:
        """What a peer needs to connect to each of this rank's queue pairs."""
        return {f"{link.side.name}{link.index}": {
            "qpn": link.qp.qp_num, "psn": link.psn, "lid": link.context.port.lid,
            "gid": link.context.gid, "mtu": int(link.context.port.active_mtu),
            "credit_addr": link.credit_addr, "rkey": link.mr.rkey}
            for link in self._by_number}

    def _connect(self, link: _Link, peer_links: dict, gid_index: int) -> None:
        """Bring ``link`` to RTS toward its twin: the peer's opposite side, same index."""
        api, e = self._api, self._api.enums
        other = Side.LEFT if link.side is Side.RIGHT else Side.RIGHT
        theirs = peer_links.get(f"{other.name}{link.index}")
        if theirs is None:
            raise ConfigError(f"rank {self.rank}: rank {link.peer} has no queue pair "
                              f"{other.name.lower()}[{link.index}]; do both use the same "
                              "device file?")
        link.peer_credit_addr, link.peer_rkey = theirs["credit_addr"], theirs["rkey"]
        attr = api.QPAttr(qp_state=e.IBV_QPS_RTR, port_num=PORT)
        attr.path_mtu = min(int(link.context.port.active_mtu), theirs["mtu"])
        attr.dest_qp_num = theirs["qpn"]
        attr.rq_psn = theirs["psn"]
        attr.max_dest_rd_atomic = 1
        attr.min_rnr_timer = 12
        attr.ah_attr = api.AHAttr(port_num=PORT, is_global=1, dlid=theirs["lid"], sl=0,
                                  gr=api.GlobalRoute(dgid=api.GID(theirs["gid"]),
                                                     sgid_index=gid_index, hop_limit=1))
        link.qp.to_rtr(attr)
        attr.qp_state = e.IBV_QPS_RTS
        attr.sq_psn = link.psn
        attr.timeout, attr.retry_cnt, attr.rnr_retry = 14, 7, 0
        attr.max_rd_atomic = 1
        link.qp.to_rts(attr)
        credit_sge = api.SGE(link.credit_addr + 8, 8, link.mr.lkey)
        link.credit_wr = api.SendWR(wr_id=link.number << 16 | CREDIT << 8, num_sge=1,
                                    sg=[credit_sge], opcode=e.IBV_WR_RDMA_WRITE,
                                    send_flags=e.IBV_SEND_SIGNALED)
        link.credit_wr.set_wr_rdma(link.peer_rkey, link.peer_credit_addr)

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
        link.receiving = Posted(into, head)
        self._drain(link)

    def _push(self, link: _Link) -> bool:
        """Copy what credits and free slots allow of the posted send into slots, and post it."""
        p, pushed = link.sending, False
        credits = link.credit_in.value - link.messages_sent
        while credits > 0 and link.free_slots:
            slot = link.free_slots.pop()
            n = min(SLOT_BYTES, len(p.view) - p.pos)
            at = link.send_base + slot * SLOT_BYTES
            link.mem[at:at + n] = p.view[p.pos:p.pos + n]
            wr = link.send_wrs[slot] if n == SLOT_BYTES else self._send_wr(link, slot, n)
            self._post(link, "send", link.qp.post_send, wr)
            link.messages_sent += 1
            credits -= 1
            pushed = True
            if p.advance(n):
                link.sending = None
                self._sending.discard(link)
                self._done.append(Channel(link.side, link.index, Kind.SEND))
                break
        return pushed

    def _drain(self, link: _Link) -> None:
        """Hand arrived bytes to the posted receive; repost each slot once it is empty."""
        p = link.receiving
        while link.arrived:
            slot, length = link.arrived[0]
            at = slot * SLOT_BYTES + link.taken
            n = min(length - link.taken, len(p.view) - p.pos)
            p.view[p.pos:p.pos + n] = link.mem[at:at + n]
            link.taken += n
            if link.taken == length:
                link.arrived.popleft()
                link.taken = 0
                self._post(link, "receive", link.qp.post_recv, link.recv_wrs[slot])
                link.receives_posted += 1
                self._advertise(link)
            if p.advance(n):
                link.receiving = None
                self._done.append(Channel(link.side, link.index, Kind.RECV))
                return

    def _advertise(self, link: _Link) -> None:
        """Write our receive count into the peer's credit word (one write in flight at most)."""
        if link.credit_write_busy or link.receives_posted == link.advertised:
            return
        link.credit_out.value = link.receives_posted
        link.advertised = link.receives_posted
        link.credit_write_busy = True
        self._post(link, "credit update", link.qp.post_send, link.credit_wr)

    def _post(self, link: _Link, what: str, post, wr) -> None:
        try:
            post(wr)
        except self._api.PyverbsError as err:
            raise CommError(f"posting a {what} on {link.describe()} failed: {err}",
                            rank=self.rank, peer=link.peer, address=link.device) from err

    def wait(self, deadline: float) -> list[Channel]:
        spin_until: float | None = None
        nap = FIRST_NAP
        while not self._done:
            progressed = self._poll()
            for link in list(self._sending):  # a credit word may have grown
                progressed = self._push(link) or progressed
            if self._done:
                break
            if progressed:
                spin_until, nap = None, FIRST_NAP
                continue
            now = time.monotonic()
            if now >= deadline:
                raise self._timed_out()
            if spin_until is None:
                spin_until = now + SPIN_SECONDS
            elif now >= spin_until:
                self._side.watch(min(nap, deadline - now))
                nap = min(nap * 2, MAX_NAP)
        done, self._done = self._done, []
        return done

    def _poll(self) -> bool:
        got = False
        for ctx in self._contexts.values():
            n, wcs = ctx.cq.poll(POLL_BATCH)
            for wc in wcs:
                self._on_completion(wc)
            got = got or n > 0
        return got

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
        elif kind == SEND:
            link.free_slots.append(slot)
            if link.sending is not None:
                self._push(link)
        else:
            link.credit_write_busy = False
            self._advertise(link)

    def _failed(self, link: _Link) -> CommError:
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
                   rank=self.rank, peer=link.peer, address=link.device)

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
                                address=first.device if first else None)

    # -- failure and shutdown -----------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        if self._closed:
            return
        if self._side is not None:
            self._side.notify(error)
            self._side.close(goodbye=False)
            self._side = None
        self._close(flush=False)

    def close(self) -> None:
        self._close(flush=True)

    def _flush(self) -> None:
        """Wait until the peers acknowledged every message we sent.

        A send is complete for its caller once its bytes are in a send slot, but a queue pair
        destroyed before the peer's adapter acknowledged the message may never deliver it:
        the peer would wait for bytes that are gone.
        """
        deadline = time.monotonic() + FLUSH_SECONDS
        nap = FIRST_NAP
        while any(len(link.free_slots) < SLOTS and link.failure is None
                  for link in self._by_number):
            if time.monotonic() >= deadline:
                return  # the peer is gone or stuck; closing must not hang on it
            try:
                if self._poll():
                    nap = FIRST_NAP
                    continue
            except CommError:
                return
            time.sleep(nap)
            nap = min(nap * 2, MAX_NAP)

    def _close(self, flush: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if flush and self._by_number:
            self._flush()
        if self._side is not None:
            self._side.close()
        for link in self._by_number:  # drop views of registered memory before freeing it
            link.mem = link.credit_in = link.credit_out = None
            for obj in (link.qp, link.mr):
                _close(obj)
        for ctx in self._contexts.values():
            for obj in (ctx.cq, ctx.pd, ctx.ctx):
                _close(obj)
        self._contexts.clear()


def _close(obj: object) -> None:
    if obj is not None:
        try:
            obj.close()
        except Exception:  # noqa: BLE001 - closing after a failure must not mask it
            pass
