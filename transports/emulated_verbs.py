"""EMULATED verbs: the subset of pyverbs that ``transports.rdma`` uses, in userspace, no RDMA.

This module is an emulation, not RDMA.  It exists so the RDMA transport's protocol logic
(set-up, queue-pair states, registered buffers, credits, completions, errors) runs and is
tested on machines with no RDMA device and no kernel support for one.  It proves that logic,
never hardware behaviour or speed.  Select it with ``RINGCOMM_VERBS=emulated`` (or
``ringcomm.init(backend="rdma", verbs="emulated")``); ``transports.verbs`` hands the transport
either this module or the real pyverbs, and the transport code is the same for both.

What is emulated, with the same names, arguments and semantics as pyverbs, and the rules of
Apple's RDMA over Thunderbolt (``docs/rdma-protocol.md``, "Limits"), so that the emulation
refuses what those devices refuse:

- ``get_device_list()``: devices ``emulated0`` ... ``emulated7`` (or the comma-separated
  names in ``RINGCOMM_EMULATED_DEVICES``).  ``Context`` (port 1; a GID table of two entries,
  0 the link-local ``fe80::`` one and 1 the IPv4-mapped ``::ffff:127.a.b.c``, as macOS makes
  for an interface with an IPv4 address), ``PD``, ``MR`` (page-aligned memory at ``mr.buf``
  with ``lkey``/``rkey``; a process without CAP_IPC_LOCK may register no more than its
  RLIMIT_MEMLOCK, as the kernel pins it: ENOMEM), ``CQ`` and ``WC``.
- ``QP`` of type UC only (RC fails with EOPNOTSUPP, as Apple's does), at most 10 per device
  and process, at most 4095 work requests per queue, with the RESET -> INIT -> RTR -> RTS
  state machine (a path MTU above the port's, or a GID index past the table, is EINVAL); a QP
  moved to ERR flushes every outstanding request with ``IBV_WC_WR_FLUSH_ERR``.
- ``post_recv``; ``post_send`` with ``IBV_WR_SEND`` and ``IBV_WR_SEND_WITH_IMM`` only (an
  RDMA WRITE is refused: EINVAL), of at most 16,773,120 bytes.  A send completes once it is
  on the wire; nothing is acknowledged.  A send that finds no receive posted is dropped
  without a word to either side; one that spans another number of 4 KiB units than the
  receive it lands in fails that receive with ``IBV_WC_LOC_LEN_ERR`` (the QP enters ERR).
  A peer that is gone swallows sends: they complete as if delivered.
- Faults, for tests only (``RINGCOMM_EMULATED_LOSS``: a drop rate, or
  ``drop=R,duplicate=R,corrupt=R,seed=N``): each send is dropped, delivered twice, or
  delivered with one byte changed, at those rates, from a generator seeded with ``seed`` and
  the process id; ``QP.faults`` counts what was done.

The inter-process wire that carries the queue pairs' traffic is ``transports.emulated_wire``;
the constants, errors and completion record both use are ``transports.emulated_base``.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import itertools
import mmap
import os
import resource
import socket
import struct

from .emulated_base import (MAX_MESSAGE_BYTES, MAX_QPS_PER_DEVICE, MAX_WR, WC, PyverbsError,  # noqa: F401
                            PyverbsRDMAError, e, enums)
from .emulated_objects import (GID, SGE, AHAttr, GlobalRoute, PortAttr, QPAttr,  # noqa: F401
                               QPCap, QPInitAttr, RecvWR, SendWR)
from . import settings
from .emulated_wire import QPWire, ipv4_mapped, open_qps, socket_path

EMULATED = True  # transports.verbs reports this, so nothing passes the emulation off as RDMA
DEFAULT_DEVICES = tuple(f"emulated{i}" for i in range(8))


class Device:
    def __init__(self, name: str) -> None:
        self.name = name.encode()


def get_device_list() -> list[Device]:
    return [Device(n) for n in settings.load().emulated_devices or DEFAULT_DEVICES]


class Context:
    """An opened (emulated) device.  Its GIDs are unique to this process: entry 0 holds the
    process id and device index, entry 1 (IPv4-mapped) the process id."""

    def __init__(self, name: str | None = None, **_: object) -> None:
        known = [d.name.decode() for d in get_device_list()]
        if name not in known:
            raise PyverbsRDMAError(f"Failed to open device {name}", errno.ENODEV)
        self.name = name
        pid = os.getpid()
        self._gids = [GID((b"\xfe\x80" + bytes(6) + struct.pack("!II", pid, known.index(name)))
                          .hex()), GID(ipv4_mapped(pid))]
        self._gid = self._gids[0]
        self._closed = False

    def query_port(self, port_num: int = 1) -> PortAttr:
        return PortAttr(state=e.IBV_PORT_ACTIVE, lid=0, active_mtu=e.IBV_MTU_4096,
                        max_mtu=e.IBV_MTU_4096, gid_tbl_len=len(self._gids),
                        port_num=port_num)

    def query_gid(self, port_num: int, index: int) -> GID:
        if port_num != 1 or not 0 <= index < len(self._gids):
            raise PyverbsRDMAError(f"Failed to query gid {index} of port {port_num}",
                                   errno.EINVAL)
        return GID(self._gids[index].gid)

    def close(self) -> None:
        self._closed = True


class PD:
    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.mrs: dict[int, MR] = {}  # by lkey

    def close(self) -> None:
        for mr in list(self.mrs.values()):
            mr.close()


_pinned = 0  # bytes this process registered, against RLIMIT_MEMLOCK as the kernel counts


def _can_lock() -> bool:
    """Whether this process may pin memory past RLIMIT_MEMLOCK (CAP_IPC_LOCK, bit 14)."""
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
        return bool(int(caps.split()[1], 16) >> 14 & 1)
    except (OSError, StopIteration, ValueError):
        return os.geteuid() == 0


_next_key = itertools.count(0x1001)  # next() is atomic: threads may register memory


class MR:
    """Registered memory: page-aligned, ``length`` bytes at address ``buf``."""

    def __init__(self, pd: PD, length: int, access: int, **_: object) -> None:
        global _pinned
        self.pd, self.length, self.access = pd, length, access
        pages = -(-max(length, 1) // mmap.PAGESIZE) * mmap.PAGESIZE
        limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
        if limit != resource.RLIM_INFINITY and not _can_lock() and _pinned + pages > limit:
            raise PyverbsRDMAError(f"Failed to register a MR. length: {length} (emulated: "
                                   f"RLIMIT_MEMLOCK is {limit} bytes)", errno.ENOMEM)
        _pinned += pages
        self._pages = pages
        self._map = mmap.mmap(-1, max(length, 1))  # anonymous, page-aligned, zeroed
        self._array = (ctypes.c_char * max(length, 1)).from_buffer(self._map)
        self.buf = ctypes.addressof(self._array)
        self.lkey = self.rkey = next(_next_key)
        pd.mrs[self.lkey] = self

    def write(self, data: bytes, length: int, offset: int = 0) -> None:
        ctypes.memmove(self.buf + offset, data, length)

    def read(self, length: int, offset: int = 0) -> bytes:
        return ctypes.string_at(self.buf + offset, length)

    def covers(self, addr: int, length: int) -> bool:
        return self.buf <= addr and addr + length <= self.buf + self.length

    def close(self) -> None:
        global _pinned
        if self.pd.mrs.pop(self.lkey, None) is not None:
            _pinned -= self._pages
            del self._array
            try:
                self._map.close()
            except BufferError:  # a view is still alive; the memory goes with it
                pass



class CQ:
    def __init__(self, context: Context, cqe: int, cq_context: object = None,
                 channel: object = None, comp_vector: int = 0) -> None:
        self.ctx, self.cqe = context, cqe
        self._wcs: collections.deque[WC] = collections.deque()
        self._qps: list[QP] = []

    def _push(self, wc: WC) -> None:
        if len(self._wcs) >= self.cqe:
            raise PyverbsRDMAError("CQ overrun (emulated: more completions than cqe)",
                                   errno.EOVERFLOW)
        self._wcs.append(wc)

    def poll(self, num_entries: int = 1) -> tuple[int, list[WC]]:
        for qp in self._qps:
            qp._progress()
        out = [self._wcs.popleft() for _ in range(min(num_entries, len(self._wcs)))]
        return len(out), out

    def close(self) -> None:
        self._qps.clear()


_used_qpns: set[int] = set()
_qps_on: collections.Counter[str] = collections.Counter()  # open queue pairs per device


class QP(QPWire):
    """An emulated unreliable-connected queue pair (Thunderbolt offers no other)."""

    def __init__(self, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None) -> None:
        if init_attr.qp_type != e.IBV_QPT_UC:
            raise PyverbsRDMAError("Failed to create QP (emulated Thunderbolt device: "
                                   "unreliable connected only)", errno.EOPNOTSUPP)
        cap = init_attr.cap
        if max(cap.max_send_wr, cap.max_recv_wr) > MAX_WR:
            raise PyverbsRDMAError(f"Failed to create QP (at most {MAX_WR} work requests per "
                                   "queue)", errno.EINVAL)
        device = pd.ctx.name
        if _qps_on[device] >= MAX_QPS_PER_DEVICE:
            raise PyverbsRDMAError(f"Failed to create QP (at most {MAX_QPS_PER_DEVICE} queue "
                                   f"pairs on {device})", errno.ENOMEM)
        _qps_on[device] += 1
        self._device = device
        self.pd, self.cap = pd, cap
        self.scq, self.rcq = init_attr.scq, init_attr.rcq
        self.sq_sig_all = init_attr.sq_sig_all
        qpn = int.from_bytes(os.urandom(3), "big") | 1
        while qpn in _used_qpns:
            qpn = int.from_bytes(os.urandom(3), "big") | 1
        _used_qpns.add(qpn)
        self.qp_num, self.qp_state = qpn, e.IBV_QPS_RESET
        self._gid = pd.ctx._gid.gid
        self._listen()
        self._sock: socket.socket | None = None
        self._peer: tuple[str, int] | None = None
        self._peer_gone = False
        self._out: collections.deque[memoryview] = collections.deque()
        self._stalled = False  # the peer read nothing during the last hand-over
        self._faults = self._fault_source()
        self.faults = collections.Counter()  # what the fault injection did to sends
        self._rq: collections.deque[RecvWR] = collections.deque()
        self._head = bytearray()
        self._in: tuple | None = None  # (frame fields, target view or None, position)
        self._closed = False
        # last: another thread's verbs calls progress every queue pair of open_qps and of
        # its completion queues (as a NIC serves every queue pair), so it must see only whole
        # ones (a poll that met a half-made one raised AttributeError: '_closed')
        for cq in {id(self.scq): self.scq, id(self.rcq): self.rcq}.values():
            cq._qps.append(self)
        open_qps.append(self)

    # -- state machine ------------------------------------------------------------------

    def to_init(self, attr: QPAttr) -> None:
        self._move(attr, e.IBV_QPS_INIT)

    def to_rtr(self, attr: QPAttr) -> None:
        self._move(attr, e.IBV_QPS_RTR)

    def to_rts(self, attr: QPAttr) -> None:
        self._move(attr, e.IBV_QPS_RTS)

    def modify(self, attr: QPAttr, comp_mask: int = 0) -> None:
        self._move(attr, attr.qp_state)

    def _move(self, attr: QPAttr, state: int) -> None:
        allowed = {e.IBV_QPS_INIT: (e.IBV_QPS_RESET, e.IBV_QPS_INIT),
                   e.IBV_QPS_RTR: (e.IBV_QPS_INIT,), e.IBV_QPS_RTS: (e.IBV_QPS_RTR,
                                                                     e.IBV_QPS_RTS),
                   e.IBV_QPS_RESET: tuple(range(7)), e.IBV_QPS_ERR: tuple(range(7))}
        if self.qp_state not in allowed.get(state, ()):
            raise PyverbsRDMAError(f"Failed to modify QP state from {self.qp_state} to "
                                   f"{state}", errno.EINVAL)
        if state == e.IBV_QPS_RTR:
            self._check_path(attr)
            self._peer = (attr.ah_attr.gr.dgid.gid, attr.dest_qp_num)
            if self._path < socket_path(*self._peer):  # the lower one connects
                self._connect()
        elif state == e.IBV_QPS_ERR:
            self.qp_state = state
            self._flush()
        elif state == e.IBV_QPS_RESET:
            self._flush()
        self.qp_state = state

    def _check_path(self, attr: QPAttr) -> None:
        """What a device checks at RTR: a route by GID, a known source GID, a path MTU the
        port can carry."""
        ah, port = attr.ah_attr, self.pd.ctx.query_port(1)
        if ah is None or ah.gr is None or ah.gr.dgid is None:
            raise PyverbsRDMAError("Failed to modify QP to RTR: no destination GID (the "
                                   "emulation routes by GID)", errno.EINVAL)
        if not 0 <= ah.gr.sgid_index < port.gid_tbl_len:
            raise PyverbsRDMAError(f"Failed to modify QP to RTR: no GID {ah.gr.sgid_index}",
                                   errno.EINVAL)
        if not e.IBV_MTU_256 <= attr.path_mtu <= port.active_mtu:
            raise PyverbsRDMAError(f"Failed to modify QP to RTR: path MTU {attr.path_mtu} "
                                   f"(the port's is {port.active_mtu})", errno.EINVAL)

    # -- posting --------------------------------------------------------------------------

    def post_recv(self, wr: RecvWR, bad_wr: object = None) -> None:
        self._check_open("recv")
        if self.qp_state == e.IBV_QPS_RESET:
            raise PyverbsRDMAError("Failed to post recv (QP in RESET)", errno.EINVAL)
        if len(self._rq) >= self.cap.max_recv_wr:
            raise PyverbsRDMAError("Failed to post recv (receive queue full)", errno.ENOMEM)
        if not all(self._local_ok(s) for s in wr.sg):
            raise PyverbsRDMAError("Failed to post recv (memory not registered)", errno.EINVAL)
        if self.qp_state == e.IBV_QPS_ERR:
            self.rcq._push(WC(wr.wr_id, e.IBV_WC_WR_FLUSH_ERR, e.IBV_WC_RECV, 0, self.qp_num))
            return
        self._rq.append(wr)

    def post_send(self, wr: SendWR, bad_wr: object = None) -> None:
        self._check_open("send")
        if self.qp_state not in (e.IBV_QPS_RTS, e.IBV_QPS_ERR):
            raise PyverbsRDMAError("Failed to post send (QP not in RTS)", errno.EINVAL)
        if wr.opcode not in (e.IBV_WR_SEND, e.IBV_WR_SEND_WITH_IMM):
            raise PyverbsRDMAError("Failed to post send (emulated Thunderbolt device: SEND "
                                   "only, no RDMA WRITE or READ)", errno.EINVAL)
        if sum(s.length for s in wr.sg) > MAX_MESSAGE_BYTES:
            raise PyverbsRDMAError(f"Failed to post send (longer than {MAX_MESSAGE_BYTES} "
                                   "bytes)", errno.EINVAL)
        if self.qp_state == e.IBV_QPS_ERR:
            self._complete(wr, e.IBV_WC_WR_FLUSH_ERR)
            return
        if not all(self._local_ok(s) for s in wr.sg):
            self._complete(wr, e.IBV_WC_LOC_PROT_ERR)
            self._error()
            return
        if self._waiting_for_peer():
            self._accept()  # the peer connected at its RTR: the wire is up
        self._transmit(wr)
        self._hand_over()
        self._complete(wr, e.IBV_WC_SUCCESS)  # on the wire: UC acknowledges nothing

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise PyverbsRDMAError(f"Failed to post {what} (the QP was destroyed)", errno.EINVAL)

    def _local_ok(self, sge: SGE) -> bool:
        mr = self.pd.mrs.get(sge.lkey)
        return mr is not None and mr.covers(sge.addr, sge.length)

    def _complete(self, wr: SendWR, status: int) -> None:
        if status != e.IBV_WC_SUCCESS or self.sq_sig_all or \
                wr.send_flags & e.IBV_SEND_SIGNALED:
            length = sum(s.length for s in wr.sg)
            self.scq._push(WC(wr.wr_id, status, e.IBV_WC_SEND, length, self.qp_num))

    # -- failure --------------------------------------------------------------------------

    def _error(self) -> None:
        self.qp_state = e.IBV_QPS_ERR
        self._flush()

    def _flush(self) -> None:
        while self._rq:
            wr = self._rq.popleft()
            self.rcq._push(WC(wr.wr_id, e.IBV_WC_WR_FLUSH_ERR, e.IBV_WC_RECV, 0, self.qp_num))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _used_qpns.discard(self.qp_num)
        _qps_on[self._device] -= 1
        if self in open_qps:
            open_qps.remove(self)
        for cq in (self.scq, self.rcq):
            if self in cq._qps:
                cq._qps.remove(self)
        if self._sock is not None:
            self._sock.close()
        self._listener.close()
        self._remove_path()
