"""Setting up an RDMA ring: devices, queue pairs, registered frames, and the move to RTS.

Each rank opens, per neighbour, one unreliable-connected (UC) queue pair on each device the
device file names toward it (``MLX_IBV_DEVICES``; K devices = K connections), with its
registered memory: ``SLOTS`` receive frames and ``SEND_SLOTS`` send frames of ``FRAME_BYTES``
(``transports.rdma_frames``).  Before any queue pair exists it checks what devices refuse:
at most ``MAX_QPS_PER_DEVICE`` queue pairs per device, and memory the locked-memory limit
lets it register.  What a peer needs to reach each queue pair (number, GID, PSN, MTU) is
exchanged by the transport over the TCP side channel; ``connect`` then brings each queue pair
INIT -> RTR -> RTS.  The GID is the IPv4-mapped entry, found as MLX's JACCL finds it, unless
``RINGCOMM_GID_INDEX`` names one.  Moving bytes over the links is ``transports.rdma``'s job.
"""
from __future__ import annotations

import collections
import ctypes
import os
import resource
from types import ModuleType, SimpleNamespace

from .base import Side
from .errors import ConfigError
from .posted import Posted
from .rdma_frames import FRAME_BYTES, SEND_SLOTS, SLOTS, WINDOW

RECV, SEND = 0, 1        # the kinds of work request, in bits 8-15 of wr_id
PORT = 1
REGION_BYTES = (SLOTS + SEND_SLOTS) * FRAME_BYTES  # registered per queue pair
QP_EXTRA_BYTES = 64 << 10  # what else a queue pair may pin (its queues), for the estimate
# Apple's documented limits for RDMA over Thunderbolt (docs/rdma-protocol.md, "Limits")
MAX_QPS_PER_DEVICE = 10
MAX_MESSAGE_BYTES = 16_773_120
MAX_WR = 4095
MTU_1024 = 3             # IBV_MTU_1024: the path MTU where a port's is unknown
MTU_ENUMS = range(1, 6)  # IBV_MTU_256 .. IBV_MTU_4096
assert FRAME_BYTES <= MAX_MESSAGE_BYTES and 2 * SEND_SLOTS <= MAX_WR


class Link:
    """One queue pair to a peer: its registered frames, the reliability state of both
    directions (``rdma_stream``), and the posted transfers."""

    def __init__(self, number: int, side: Side | None, index: int, peer: int,
                 device: str) -> None:
        self.number, self.side, self.index, self.peer, self.device = (number, side, index,
                                                                      peer, device)
        self.qp = self.mr = None
        self.psn = int.from_bytes(os.urandom(3), "big")
        # sending
        self.sending: Posted | None = None
        self.free_slots = list(range(WINDOW))  # data send slots holding no unacknowledged frame
        self.next_seq = 0                      # seq of the next new data frame
        self.acked = 0                         # the peer has every data frame before this
        self.unacked: collections.deque[tuple[int, int, int]] = collections.deque()
        self.in_flight = [0] * SEND_SLOTS      # posted sends per slot not yet completed
        self.sent_at = [0.0] * SEND_SLOTS      # when each slot was last posted
        self.resent_slots: set[int] = set()    # slots whose frame was sent more than once
        self.srtt = 0.0                        # smoothed round trip of a frame, seconds
        self.msgs_sent = 0                     # messages posted: the last one's number
        self.peer_seen, self.peer_free = 0, SLOTS  # the peer's report: credits
        self.report_msg = 0                    # the message whose report was applied last
        self.resend_at: float | None = None
        self.rto = 0.0
        self.peer_bye = False
        # receiving: data frames in order, oldest first, as (slot, length)
        self.arrived: collections.deque[tuple[int, int]] = collections.deque()
        self.taken = 0  # bytes of arrived[0] already handed out
        self.receiving: Posted | None = None
        self.expected = 0                      # the next data frame to hand on
        self.held: dict[int, tuple[int, int]] = {}  # seq -> (slot, length), after a gap
        self.seen = 0                          # the newest message number received
        self.free = SLOTS                      # receives posted and empty
        self.reported = (0, SLOTS)             # (expected, free) last told to the peer
        self.urgent = 0                        # flags of a report owed at once (NAK, POKE)
        self.naked: int | None = None          # the gap last reported
        self.counts: collections.Counter[str] = collections.Counter()
        self.failure: tuple[int, int] | None = None  # (kind, status) of the first failed request

    def describe(self) -> str:
        return f"{self.side.name.lower()}[{self.index}] on {self.device}"


class Budget:
    """What one process holds on its devices, shared by the ring's set-up and the direct
    links' (the limits are per device and per process, not per set-up)."""

    def __init__(self) -> None:
        self.qps: collections.Counter[str] = collections.Counter()  # per device name

    def registered(self) -> int:
        return sum(self.qps.values()) * (REGION_BYTES + QP_EXTRA_BYTES)


def locked_memory_limit() -> int | None:
    """RLIMIT_MEMLOCK's soft limit in bytes, or None where it does not bind (unlimited, or
    a process with CAP_IPC_LOCK, as root usually is)."""
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
        if int(caps.split()[1], 16) >> 14 & 1:  # CAP_IPC_LOCK
            return None
    except (OSError, StopIteration, ValueError):  # not Linux: root is exempt
        if os.geteuid() == 0:
            return None
    return soft


def check_locked_memory(rank: int, budget: Budget, more: int) -> None:
    """ConfigError, before any queue pair exists, unless ``more`` queue pairs fit the
    locked-memory limit (registered memory is pinned, and counts against it)."""
    limit = locked_memory_limit()
    need = budget.registered() + more * (REGION_BYTES + QP_EXTRA_BYTES)
    if limit is None or need <= limit:
        return
    count = sum(budget.qps.values()) + more
    raise ConfigError(
        f"rank {rank}: the RDMA transport must register about {need // 1024} KiB of memory "
        f"({count} queue pairs x {(REGION_BYTES + QP_EXTRA_BYTES) // 1024} KiB), but this "
        f"process may lock only {limit // 1024} KiB (RLIMIT_MEMLOCK). Raise the limit where "
        f"the ranks start: `ulimit -l unlimited` (or `ulimit -l {-(-need // 1024)}`) in that "
        "shell, or for good a line `<user> - memlock unlimited` in "
        "/etc/security/limits.conf (then log in again); systemd services: "
        "LimitMEMLOCK=infinity; containers: --ulimit memlock=-1")


class RdmaSetup:
    """The verbs objects of one rank: opened devices (shared by their links) and links."""

    def __init__(self, api: SimpleNamespace | ModuleType, rank: int, connections: int,
                 gid_index: int | None = None, budget: Budget | None = None,
                 qp_type: str = "uc") -> None:
        self.api, self.rank, self.connections, self.gid_index = api, rank, connections, gid_index
        # "rc" (RINGCOMM_RDMA_QP) where UC misbehaves under loss: Soft-RoCE's UC responder
        # drops every later message once the last packet of one was lost (Linux 6.1)
        self.qp_type = qp_type
        self.budget = budget or Budget()
        self.contexts: dict[str, SimpleNamespace] = {}
        self.links: tuple[list[Link], list[Link]] = ([], [])
        self.by_number: list[Link] = []

    def check_limits(self, names: list[str]) -> None:
        """ConfigError, before any queue pair exists, unless queue pairs on ``names`` (a
        device per queue pair) stay within the devices' limit and the locked-memory limit."""
        wanted = collections.Counter(names)
        for name, count in wanted.items():
            if self.budget.qps[name] + count > MAX_QPS_PER_DEVICE:
                raise ConfigError(
                    f"rank {self.rank}: {self.budget.qps[name] + count} queue pairs on device "
                    f"{name!r}, but Thunderbolt devices (and ringcomm, everywhere) allow at "
                    f"most {MAX_QPS_PER_DEVICE} per device, counting the ring's (2 per "
                    "connection per neighbour) and direct links'; name fewer devices per "
                    "neighbour in the device file, or spread the links over more devices")
        check_locked_memory(self.rank, self.budget, len(names))

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
        self.by_number.append(link)  # first: release() closes what open() made if it fails
        self.open(link)
        if side is not None:
            self.links[side].append(link)
        return link

    def context(self, name: str) -> SimpleNamespace:
        """The opened device ``name`` with its protection domain, completion queue and GID."""
        ctx = self.contexts.get(name)
        if ctx is None:
            api = self.api
            opened = api.Context(name=name)
            port = opened.query_port(PORT)
            index, gid = self.find_gid(opened, port, name)
            ctx = SimpleNamespace(ctx=opened, pd=api.PD(opened), cq=None, port=port,
                                  gid_index=index, gid=gid)
            # every link on this device shares the queue: room for all their requests
            ctx.cq = api.CQ(opened, 2 * (SLOTS + 2 * SEND_SLOTS) * MAX_QPS_PER_DEVICE)
            self.contexts[name] = ctx
        return ctx

    def find_gid(self, opened, port, name: str) -> tuple[int, str]:
        """The GID table entry to use, as JACCL picks it: the IPv4-mapped one
        (``::ffff:a.b.c.d``, which macOS and RoCE v2 make for an interface with an IPv4
        address), unless ``RINGCOMM_GID_INDEX`` names another; else entry 0 where it is set
        (InfiniBand, or RoCE on an interface with IPv6 only)."""
        api = self.api
        if self.gid_index is not None:
            try:
                return self.gid_index, opened.query_gid(PORT, self.gid_index).gid
            except api.PyverbsError as e:
                raise ConfigError(f"rank {self.rank}: device {name!r} has no GID at index "
                                  f"{self.gid_index} (RINGCOMM_GID_INDEX): {e}") from None
        found = []
        for index in range(min(int(getattr(port, "gid_tbl_len", 1) or 1), 256)):
            try:
                gid = opened.query_gid(PORT, index).gid
            except api.PyverbsError:
                continue
            raw = bytes.fromhex(str(gid).replace(":", ""))
            if raw[:12] == bytes(10) + b"\xff\xff" and any(raw[12:]):
                return index, gid
            found.append((index, gid, any(raw)))
        if found and found[0][0] == 0 and found[0][2]:
            return 0, found[0][1]
        raise ConfigError(f"rank {self.rank}: device {name!r} has no usable GID (no IPv4-mapped "
                          "entry ::ffff:a.b.c.d and entry 0 is empty): give its network "
                          "interface an IPv4 address (on a Mac: the Thunderbolt interface, "
                          "as mlx.distributed_config does), or name an entry with "
                          "RINGCOMM_GID_INDEX (`ibv_devinfo -v` lists them)")

    def open(self, link: Link) -> None:
        """Create the queue pair and its memory, post every receive frame, move to INIT; what
        the device refuses is a ConfigError naming it."""
        try:
            self._open(link)
        except self.api.PyverbsError as err:
            hint = ("RINGCOMM_RDMA_QP=uc: Thunderbolt devices, and the emulation, refuse RC"
                    if self.qp_type == "rc" else
                    "RINGCOMM_RDMA_QP=rc where a device offers no UC queue pairs")
            raise ConfigError(f"rank {self.rank}: device {link.device!r} refused a "
                              f"{self.qp_type.upper()} queue pair toward rank {link.peer} or "
                              f"its memory ({err}); see `ulimit -l` for memory, {hint}") from None

    def _open(self, link: Link) -> None:
        api, e = self.api, self.api.enums
        ctx = self.context(link.device)
        link.context = ctx
        access = e.IBV_ACCESS_LOCAL_WRITE  # sends and receives only: no remote access
        link.mr = api.MR(ctx.pd, REGION_BYTES, access)
        base = link.mr.buf
        link.mem = memoryview((ctypes.c_char * REGION_BYTES).from_address(base)).cast("B")
        cap = api.QPCap(max_send_wr=2 * SEND_SLOTS, max_recv_wr=SLOTS, max_send_sge=1,
                        max_recv_sge=1)
        qp_type = e.IBV_QPT_RC if self.qp_type == "rc" else e.IBV_QPT_UC
        link.qp = api.QP(ctx.pd, api.QPInitAttr(qp_type=qp_type, scq=ctx.cq, rcq=ctx.cq,
                                                 cap=cap, sq_sig_all=0))
        self.budget.qps[link.device] += 1
        attr = api.QPAttr(qp_state=e.IBV_QPS_INIT, port_num=PORT)
        attr.pkey_index = 0
        attr.qp_access_flags = access
        link.qp.to_init(attr)
        wr_base = link.number << 16
        lkey = link.mr.lkey
        link.recv_wrs = [api.RecvWR(wr_id=wr_base | RECV << 8 | s, num_sge=1,
                                    sg=[api.SGE(base + s * FRAME_BYTES, FRAME_BYTES, lkey)])
                         for s in range(SLOTS)]
        link.send_base = SLOTS * FRAME_BYTES
        link.send_wrs = [api.SendWR(wr_id=wr_base | SEND << 8 | s, num_sge=1, opcode=e.IBV_WR_SEND,
                                    sg=[api.SGE(base + link.send_base + s * FRAME_BYTES,
                                                FRAME_BYTES, lkey)],
                                    send_flags=e.IBV_SEND_SIGNALED)
                         for s in range(SEND_SLOTS)]
        for wr in link.recv_wrs:
            link.qp.post_recv(wr)

    def describe(self) -> dict:
        """What a peer needs to connect to each of this rank's queue pairs."""
        return {f"{link.side.name}{link.index}": self.describe_link(link)
                for link in self.by_number}

    @staticmethod
    def describe_link(link: Link) -> dict:
        """What a peer needs to connect to ``link``'s queue pair, and the frames it uses."""
        return {"qpn": link.qp.qp_num, "psn": link.psn, "lid": link.context.port.lid,
                "gid": str(link.context.gid), "mtu": int(link.context.port.active_mtu),
                "frame": FRAME_BYTES, "slots": SLOTS}

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
        if (theirs.get("frame"), theirs.get("slots")) != (FRAME_BYTES, SLOTS):
            raise ConfigError(f"rank {self.rank}: rank {link.peer} uses frames of "
                              f"{theirs.get('frame')} bytes x {theirs.get('slots')} and this "
                              f"rank {FRAME_BYTES} x {SLOTS}: run the same ringcomm version")
        attr = api.QPAttr(qp_state=e.IBV_QPS_RTR, port_num=PORT)
        attr.path_mtu = path_mtu(link.context.port.active_mtu, theirs.get("mtu"))
        attr.dest_qp_num = theirs["qpn"]
        attr.rq_psn = theirs["psn"]
        attr.ah_attr = api.AHAttr(port_num=PORT, is_global=1, dlid=theirs["lid"], sl=0,
                                  gr=api.GlobalRoute(dgid=api.GID(theirs["gid"]),
                                                     sgid_index=link.context.gid_index,
                                                     hop_limit=1))
        if self.qp_type == "rc":  # the adapter retries; a missing receive is waited for
            attr.max_dest_rd_atomic, attr.min_rnr_timer = 1, 12
        link.qp.to_rtr(attr)
        attr.qp_state = e.IBV_QPS_RTS
        attr.sq_psn = link.psn
        if self.qp_type == "rc":
            attr.timeout, attr.retry_cnt, attr.rnr_retry, attr.max_rd_atomic = 14, 7, 7, 1
        link.qp.to_rts(attr)
        link.path_mtu = attr.path_mtu

    def release(self) -> None:
        """Destroy every queue pair, memory region and device context (after the data path
        dropped its views of registered memory)."""
        for link in self.by_number:
            link.mem = None
            if link.qp is not None:
                self.budget.qps[link.device] -= 1
            for obj in (link.qp, link.mr):
                _close(obj)
            link.qp = link.mr = None
        for ctx in self.contexts.values():
            for obj in (ctx.cq, ctx.pd, ctx.ctx):
                _close(obj)
        self.contexts.clear()


def path_mtu(mine: int, theirs: object) -> int:
    """The smaller of the two ports' active MTUs; 1024 where either is not a known value."""
    if isinstance(theirs, int) and int(mine) in MTU_ENUMS and theirs in MTU_ENUMS:
        return min(int(mine), theirs)
    return MTU_1024


def _close(obj: object) -> None:
    if obj is not None:
        try:
            obj.close()
        except Exception:  # noqa: BLE001 - closing after a failure must not mask it
            pass
