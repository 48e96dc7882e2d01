"""Setting up an RDMA ring: devices, queue pairs, registered slots, and the move to RTS.

Each rank opens, per neighbour, one RC queue pair on each device the device file names
toward it (``MLX_IBV_DEVICES``; K devices = K connections), with its registered memory:
``SLOTS`` receive slots and ``SLOTS`` send slots of ``SLOT_BYTES`` and two credit words.
What a peer needs to reach each queue pair (numbers, GIDs, PSNs, memory keys) is exchanged
by the transport over the TCP side channel; ``connect`` then brings each queue pair INIT ->
RTR -> RTS.  Moving bytes over the links is ``transports.rdma``'s job.
"""
from __future__ import annotations

import collections
import ctypes
import os
from types import ModuleType, SimpleNamespace

from .base import Side
from .errors import ConfigError
from .posted import Posted

SLOT_BYTES = 256 << 10   # one message at most; JACCL uses 4 KiB-512 KiB buffers
SLOTS = 8                # receive slots (= credits) and send slots per queue pair
RECV, SEND, CREDIT = 0, 1, 2  # the kinds of work request, in bits 8-15 of wr_id
PORT = 1
_CREDIT_WORDS = 16       # after the slots: credit_in (the peer writes it), credit_out


class Link:
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



class RdmaSetup:
    """The verbs objects of one rank: opened devices (shared by their links) and links."""

    def __init__(self, api: SimpleNamespace | ModuleType, rank: int, connections: int,
                 gid_index: int = 0) -> None:
        self.api, self.rank, self.connections, self.gid_index = api, rank, connections, gid_index
        self.contexts: dict[str, SimpleNamespace] = {}
        self.links: tuple[list[Link], list[Link]] = ([], [])
        self.by_number: list[Link] = []

    def check_devices(self, names: set[str], available: list[str], emulated: bool) -> None:
        """ConfigError unless every device the device file names exists here."""
        for name in sorted(names):
            if name not in available:
                raise ConfigError(
                    f"rank {self.rank}: the RDMA device file names {name!r}, which "
                    f"{'the verbs emulation' if emulated else 'this machine'} does not "
                    f"have; devices here: {', '.join(available) or 'none'}"
                    + ("" if available or emulated else
                       " (pyverbs lists no RDMA device; to run the RDMA protocol without "
                       "one, set RINGCOMM_VERBS=emulated: an emulation, not RDMA)"))

    def add(self, side: Side | None, index: int, peer: int, device: str,
            kind: type[Link] = Link) -> Link:
        """Open a queue pair toward ``peer`` on ``device``, its slots posted, in INIT (a
        ``side`` of None: a direct queue pair, ``transports.rdma_direct``)."""
        link = kind(len(self.by_number), side, index, peer, device)
        self.open(link)
        if side is not None:
            self.links[side].append(link)
        self.by_number.append(link)
        return link

    def context(self, name: str) -> SimpleNamespace:
        """The opened device ``name`` with its protection domain and completion queue."""
        ctx = self.contexts.get(name)
        if ctx is None:
            api = self.api
            opened = api.Context(name=name)
            ctx = SimpleNamespace(ctx=opened, pd=api.PD(opened), cq=None,
                                  port=opened.query_port(PORT),
                                  gid=opened.query_gid(PORT, self.gid_index).gid)
            # every link on this device shares the queue: room for all their requests
            ctx.cq = api.CQ(opened, 4 * (2 * SLOTS + 2) * self.connections)
            self.contexts[name] = ctx
        return ctx

    def open(self, link: Link) -> None:
        """Create the queue pair and its memory, post every receive slot, move to INIT."""
        api, e = self.api, self.api.enums
        ctx = self.context(link.device)
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
        link.send_wrs = [self.send_wr(link, s, SLOT_BYTES) for s in range(SLOTS)]
        for wr in link.recv_wrs:
            link.qp.post_recv(wr)
        link.receives_posted = link.advertised = SLOTS

    def send_wr(self, link: Link, slot: int, length: int):
        api, e = self.api, self.api.enums
        sge = api.SGE(link.mr.buf + link.send_base + slot * SLOT_BYTES, length, link.mr.lkey)
        return api.SendWR(wr_id=link.number << 16 | SEND << 8 | slot, num_sge=1, sg=[sge],
                          opcode=e.IBV_WR_SEND, send_flags=e.IBV_SEND_SIGNALED)

    def describe(self) -> dict:
        """What a peer needs to connect to each of this rank's queue pairs."""
        return {f"{link.side.name}{link.index}": self.describe_link(link)
                for link in self.by_number}

    @staticmethod
    def describe_link(link: Link) -> dict:
        """What a peer needs to connect to ``link``'s queue pair."""
        return {"qpn": link.qp.qp_num, "psn": link.psn, "lid": link.context.port.lid,
                "gid": link.context.gid, "mtu": int(link.context.port.active_mtu),
                "credit_addr": link.credit_addr, "rkey": link.mr.rkey}

    def connect(self, link: Link, peer_links: dict) -> None:
        """Bring ``link`` to RTS toward its twin: the peer's opposite side, same index."""
        other = Side.LEFT if link.side is Side.RIGHT else Side.RIGHT
        theirs = peer_links.get(f"{other.name}{link.index}")
        if theirs is None:
            raise ConfigError(f"rank {self.rank}: rank {link.peer} has no queue pair "
                              f"{other.name.lower()}[{link.index}]; do both use the same "
                              "device file?")
        self.connect_to(link, theirs)

    def connect_to(self, link: Link, theirs: dict) -> None:
        """Bring ``link`` to RTS toward the queue pair ``theirs`` describes."""
        api, e = self.api, self.api.enums
        link.peer_credit_addr, link.peer_rkey = theirs["credit_addr"], theirs["rkey"]
        attr = api.QPAttr(qp_state=e.IBV_QPS_RTR, port_num=PORT)
        attr.path_mtu = min(int(link.context.port.active_mtu), theirs["mtu"])
        attr.dest_qp_num = theirs["qpn"]
        attr.rq_psn = theirs["psn"]
        attr.max_dest_rd_atomic = 1
        attr.min_rnr_timer = 12
        attr.ah_attr = api.AHAttr(port_num=PORT, is_global=1, dlid=theirs["lid"], sl=0,
                                  gr=api.GlobalRoute(dgid=api.GID(theirs["gid"]),
                                                     sgid_index=self.gid_index, hop_limit=1))
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

    def release(self) -> None:
        """Destroy every queue pair, memory region and device context (after the data path
        dropped its views of registered memory)."""
        for link in self.by_number:
            link.mem = link.credit_in = link.credit_out = None
            for obj in (link.qp, link.mr):
                _close(obj)
        for ctx in self.contexts.values():
            for obj in (ctx.cq, ctx.pd, ctx.ctx):
                _close(obj)
        self.contexts.clear()


def _close(obj: object) -> None:
    if obj is not None:
        try:
            obj.close()
        except Exception:  # noqa: BLE001 - closing after a failure must not mask it
            pass
