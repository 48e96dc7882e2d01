"""EMULATED verbs: the subset of pyverbs that ``transports.rdma`` uses, in userspace, no RDMA.

This module is an emulation, not RDMA.  It exists so the RDMA transport's protocol logic
(set-up, queue-pair states, registered buffers, credits, completions, errors) runs and is
tested on machines with no RDMA device and no kernel support for one.  It proves that logic,
never hardware behaviour or speed.  Select it with ``RINGCOMM_VERBS=emulated`` (or
``ringcomm.init(backend="rdma", verbs="emulated")``); ``transports.verbs`` hands the transport
either this module or the real pyverbs, and the transport code is the same for both.

What is emulated, with the same names, arguments and semantics as pyverbs:

- ``get_device_list()``: devices ``emulated0`` ... ``emulated7`` (or the comma-separated
  names in ``RINGCOMM_EMULATED_DEVICES``).  ``Context``, ``PD``, ``MR`` (page-aligned memory
  at ``mr.buf`` with ``lkey``/``rkey``), ``CQ`` and ``WC``.
- ``QP`` of type RC with the RESET -> INIT -> RTR -> RTS state machine; a QP moved to ERR
  flushes every outstanding request with ``IBV_WC_WR_FLUSH_ERR``.
- ``post_recv``; ``post_send`` with ``IBV_WR_SEND``, ``IBV_WR_SEND_WITH_IMM`` and
  ``IBV_WR_RDMA_WRITE`` (checked against the target's memory regions and keys:
  ``IBV_WC_REM_ACCESS_ERR``, and the target queue pair enters ERR too, as a responder error
  does on real RC); a send longer than the receive it lands in fails with
  ``IBV_WC_LOC_LEN_ERR`` on the receiver and ``IBV_WC_REM_INV_REQ_ERR`` on the sender.
- Receiver not ready: a send that finds no posted receive is refused (an RNR NAK) and
  retried ``rnr_retry`` times (7 = forever), then completes with ``IBV_WC_RNR_RETRY_EXC_ERR``.
- In-order, reliable delivery per queue pair (go-back-N after an RNR NAK), cumulative ACKs;
  a send completes once the peer acknowledged it.  A peer whose queue pair is in ERR answers
  nothing: the outstanding sends fail with ``IBV_WC_RETRY_EXC_ERR`` when the retries would
  have run out (``4.096 us * 2**timeout * (retry_cnt + 1)``, never with ``timeout`` 0).  A peer
  whose process is gone, or whose queue pair is destroyed, fails them the same way at once
  (the emulation sees its socket close).  Like real RC, a receive waiting for a dead peer
  just never completes.

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
import socket
import struct
from types import SimpleNamespace

from .emulated_base import WC, PyverbsError, PyverbsRDMAError, e, enums  # noqa: F401
from . import settings
from .emulated_wire import QPWire, open_qps

EMULATED = True  # transports.verbs reports this, so nothing passes the emulation off as RDMA
DEFAULT_DEVICES = tuple(f"emulated{i}" for i in range(8))


class Device:
    def __init__(self, name: str) -> None:
        self.name = name.encode()


def get_device_list() -> list[Device]:
    return [Device(n) for n in settings.load().emulated_devices or DEFAULT_DEVICES]


class PortAttr(SimpleNamespace):
    pass


class GID:
    """A 16-byte global identifier, printed as eight groups of four hex digits."""

    def __init__(self, val: str | None = None) -> None:
        self._raw = bytes(16) if val is None else bytes.fromhex(val.replace(":", ""))

    @property
    def gid(self) -> str:
        h = self._raw.hex()
        return ":".join(h[i:i + 4] for i in range(0, 32, 4))

    @gid.setter
    def gid(self, val: str) -> None:
        self._raw = bytes.fromhex(val.replace(":", ""))

    def __str__(self) -> str:
        return self.gid


class Context:
    """An opened (emulated) device.  Its GID is unique to this process and device."""

    def __init__(self, name: str | None = None, **_: object) -> None:
        known = [d.name.decode() for d in get_device_list()]
        if name not in known:
            raise PyverbsRDMAError(f"Failed to open device {name}", errno.ENODEV)
        self.name = name
        self._gid = GID((b"\xfe\x80" + bytes(6) + struct.pack("!II", os.getpid(),
                                                               known.index(name)))
                        .hex())
        self._closed = False

    def query_port(self, port_num: int = 1) -> PortAttr:
        return PortAttr(state=e.IBV_PORT_ACTIVE, lid=0, active_mtu=e.IBV_MTU_4096,
                        max_mtu=e.IBV_MTU_4096, gid_tbl_len=1, port_num=port_num)

    def query_gid(self, port_num: int, index: int) -> GID:
        if port_num != 1 or index != 0:
            raise PyverbsRDMAError(f"Failed to query gid {index} of port {port_num}",
                                   errno.EINVAL)
        return GID(self._gid.gid)

    def close(self) -> None:
        self._closed = True


class PD:
    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.mrs: dict[int, MR] = {}  # by lkey

    def close(self) -> None:
        for mr in list(self.mrs.values()):
            mr.close()


_next_key = itertools.count(0x1001)  # next() is atomic: threads may register memory


class MR:
    """Registered memory: page-aligned, ``length`` bytes at address ``buf``."""

    def __init__(self, pd: PD, length: int, access: int, **_: object) -> None:
        self.pd, self.length, self.access = pd, length, access
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
        if self.pd.mrs.pop(self.lkey, None) is not None:
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


# -- work requests ---------------------------------------------------------------------------

class SGE:
    def __init__(self, addr: int, length: int, lkey: int) -> None:
        self.addr, self.length, self.lkey = addr, length, lkey


class RecvWR:
    def __init__(self, wr_id: int = 0, num_sge: int = 0, sg: list[SGE] | None = None,
                 next_wr: object = None) -> None:
        self.wr_id, self.num_sge, self.sg = wr_id, num_sge, sg or []


class SendWR:
    def __init__(self, wr_id: int = 0, opcode: int = e.IBV_WR_SEND, num_sge: int = 0,
                 imm_data: int = 0, sg: list[SGE] | None = None,
                 send_flags: int = e.IBV_SEND_SIGNALED, next_wr: object = None) -> None:
        self.wr_id, self.num_sge, self.sg = wr_id, num_sge, sg or []
        self.opcode, self.send_flags = opcode, send_flags
        self.imm_data = imm_data
        self._rkey = self._remote_addr = 0

    def set_wr_rdma(self, rkey: int, addr: int) -> None:
        self._rkey, self._remote_addr = rkey, addr


# -- queue pairs -----------------------------------------------------------------------------

class QPCap:
    def __init__(self, max_send_wr: int = 1, max_recv_wr: int = 10, max_send_sge: int = 1,
                 max_recv_sge: int = 1, max_inline_data: int = 0) -> None:
        self.max_send_wr, self.max_recv_wr = max_send_wr, max_recv_wr
        self.max_send_sge, self.max_recv_sge = max_send_sge, max_recv_sge
        self.max_inline_data = max_inline_data


class QPInitAttr:
    def __init__(self, qp_type: int = e.IBV_QPT_RC, qp_context: object = None,
                 scq: CQ | None = None, rcq: CQ | None = None, srq: object = None,
                 cap: QPCap | None = None, sq_sig_all: int = 1) -> None:
        self.qp_type, self.scq, self.rcq, self.srq = qp_type, scq, rcq, srq
        self.cap, self.sq_sig_all = cap or QPCap(), sq_sig_all


class GlobalRoute:
    def __init__(self, dgid: GID | None = None, flow_label: int = 0, sgid_index: int = 0,
                 hop_limit: int = 1, traffic_class: int = 0) -> None:
        self.dgid, self.flow_label, self.sgid_index = dgid, flow_label, sgid_index
        self.hop_limit, self.traffic_class = hop_limit, traffic_class


class AHAttr:
    def __init__(self, port_num: int = 1, is_global: int = 0, dlid: int = 0, sl: int = 0,
                 src_path_bits: int = 0, static_rate: int = 0,
                 gr: GlobalRoute | None = None) -> None:
        self.port_num, self.is_global, self.dlid, self.sl = port_num, is_global, dlid, sl
        self.src_path_bits, self.static_rate, self.gr = src_path_bits, static_rate, gr


class QPAttr:
    """pyverbs' keywords and defaults (every other field is set as an attribute, and is 0)."""

    def __init__(self, qp_state: int = e.IBV_QPS_INIT, cur_qp_state: int = e.IBV_QPS_RESET,
                 port_num: int = 1, path_mtu: int = e.IBV_MTU_1024) -> None:
        self.qp_state, self.cur_qp_state, self.port_num = qp_state, cur_qp_state, port_num
        self.path_mtu, self.dest_qp_num, self.rq_psn, self.sq_psn = path_mtu, 0, 0, 0
        self.qp_access_flags, self.pkey_index = 0, 0
        self.max_rd_atomic = self.max_dest_rd_atomic = 0
        self.min_rnr_timer, self.timeout, self.retry_cnt, self.rnr_retry = 0, 0, 0, 0
        self.ah_attr: AHAttr | None = None


_used_qpns: set[int] = set()


class QP(QPWire):
    """An emulated reliable-connected queue pair."""

    def __init__(self, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None) -> None:
        if init_attr.qp_type != e.IBV_QPT_RC:
            raise PyverbsRDMAError("Failed to create QP (emulation supports RC only)",
                                   errno.EOPNOTSUPP)
        self.pd, self.cap = pd, init_attr.cap
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
        self._rnr_retry = 7
        self._retry_seconds: float | None = None  # ACK timeout x tries; None: for ever
        self._fail_at: float | None = None        # when unanswered requests fail
        # requester side
        self._sq: collections.deque[list] = collections.deque()  # [psn, wr, sent, rnr_count]
        self._next_psn = 0
        self._resend_at: float | None = None
        self._out: collections.deque[memoryview] = collections.deque()
        # responder side
        self._rq: collections.deque[RecvWR] = collections.deque()
        self._expected_psn = 0
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
            ah = attr.ah_attr
            if ah is None or ah.gr is None or ah.gr.dgid is None:
                raise PyverbsRDMAError("Failed to modify QP to RTR: no destination GID "
                                       "(the emulation routes by GID)", errno.EINVAL)
            self._peer = (ah.gr.dgid.gid, attr.dest_qp_num)
            self._expected_psn = attr.rq_psn
            if (self._gid, self.qp_num) < self._peer:
                self._connect()
        elif state == e.IBV_QPS_RTS:
            self._next_psn = attr.sq_psn
            self._rnr_retry = attr.rnr_retry
            # IB's local ACK timeout is 4.096 us * 2^timeout (0: none), tried retry_cnt + 1 times
            self._retry_seconds = (4.096e-6 * 2 ** attr.timeout * (attr.retry_cnt + 1)
                                   if attr.timeout else None)
        elif state == e.IBV_QPS_ERR:
            self.qp_state = state
            self._flush()
        elif state == e.IBV_QPS_RESET:
            self._flush()
            self._sq.clear()
            self._rq.clear()
        self.qp_state = state

    # -- posting --------------------------------------------------------------------------

    def post_recv(self, wr: RecvWR, bad_wr: object = None) -> None:
        self._check_open("recv")
        if self.qp_state == e.IBV_QPS_RESET:
            raise PyverbsRDMAError("Failed to post recv (QP in RESET)", errno.EINVAL)
        if len(self._rq) >= self.cap.max_recv_wr:
            raise PyverbsRDMAError("Failed to post recv (receive queue full)", errno.ENOMEM)
        if self.qp_state == e.IBV_QPS_ERR:
            self.rcq._push(WC(wr.wr_id, e.IBV_WC_WR_FLUSH_ERR, e.IBV_WC_RECV, 0, self.qp_num))
            return
        self._rq.append(wr)

    def post_send(self, wr: SendWR, bad_wr: object = None) -> None:
        self._check_open("send")
        if self.qp_state not in (e.IBV_QPS_RTS, e.IBV_QPS_ERR):
            raise PyverbsRDMAError("Failed to post send (QP not in RTS)", errno.EINVAL)
        if len(self._sq) >= self.cap.max_send_wr:
            raise PyverbsRDMAError("Failed to post send (send queue full)", errno.ENOMEM)
        if self.qp_state == e.IBV_QPS_ERR:
            self._complete(wr, e.IBV_WC_WR_FLUSH_ERR)
            return
        if wr.opcode not in (e.IBV_WR_SEND, e.IBV_WR_SEND_WITH_IMM, e.IBV_WR_RDMA_WRITE):
            raise PyverbsRDMAError("Failed to post send (opcode not emulated)", errno.EINVAL)
        if not all(self._local_ok(s) for s in wr.sg):
            self._complete(wr, e.IBV_WC_LOC_PROT_ERR)
            self._error()
            return
        entry = [self._next_psn, wr, 0]
        self._next_psn = (self._next_psn + 1) & 0xFFFFFF
        self._sq.append(entry)
        if self._peer_gone:
            self._fail_sends(e.IBV_WC_RETRY_EXC_ERR)
            return
        self._transmit(entry)
        self._hand_over()

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise PyverbsRDMAError(f"Failed to post {what} (the QP was destroyed)", errno.EINVAL)

    def _local_ok(self, sge: SGE) -> bool:
        mr = self.pd.mrs.get(sge.lkey)
        return mr is not None and mr.covers(sge.addr, sge.length)

    def _complete(self, wr: SendWR, status: int) -> None:
        if status != e.IBV_WC_SUCCESS or self.sq_sig_all or \
                wr.send_flags & e.IBV_SEND_SIGNALED:
            opcode = e.IBV_WC_RDMA_WRITE if wr.opcode == e.IBV_WR_RDMA_WRITE else e.IBV_WC_SEND
            length = sum(s.length for s in wr.sg)
            self.scq._push(WC(wr.wr_id, status, opcode, length, self.qp_num))

    # -- failure --------------------------------------------------------------------------

    def _error(self) -> None:
        self.qp_state = e.IBV_QPS_ERR
        self._flush()

    def _flush(self) -> None:
        while self._sq:
            self._complete(self._sq.popleft()[1], e.IBV_WC_WR_FLUSH_ERR)
        while self._rq:
            wr = self._rq.popleft()
            self.rcq._push(WC(wr.wr_id, e.IBV_WC_WR_FLUSH_ERR, e.IBV_WC_RECV, 0, self.qp_num))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _used_qpns.discard(self.qp_num)
        if self in open_qps:
            open_qps.remove(self)
        for cq in (self.scq, self.rcq):
            if self in cq._qps:
                cq._qps.remove(self)
        if self._sock is not None:
            self._sock.close()
        self._listener.close()
        self._remove_path()
