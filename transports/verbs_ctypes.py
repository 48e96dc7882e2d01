"""A verbs provider in pure Python over the verbs C ABI (``ctypes``): for macOS, where no
pyverbs exists, and on Linux as a second check of the first.

It loads Apple's ``librdma.dylib`` on macOS (the library MLX's JACCL dlopens) and rdma-core's
``libibverbs.so.1`` on Linux, and offers the same names as the pyverbs provider of
``transports.verbs`` (``Context``, ``PD``, ``MR``, ``CQ``, ``QP``, ``QPCap``, ``QPInitAttr``,
``QPAttr``, ``AHAttr``, ``GlobalRoute``, ``GID``, ``SGE``, ``SendWR``, ``RecvWR``,
``get_device_list``, ``enums``, ``PyverbsError``, ``PyverbsRDMAError``, ``EMULATED``), with
pyverbs' arguments and attributes, so ``transports.rdma`` drives it unchanged.
``RINGCOMM_VERBS=ctypes`` picks it.

Status: run on Linux against rdma-core 44 on Soft-RoCE (rxe) in a QEMU guest
(``tests/test_rxe.py``), and its structures checked against ``<infiniband/verbs.h>``
(``tests/test_verbs_abi.py``).  **On macOS it is untried: no Mac was available.**  What it
does for Apple's documented differences (``docs/rdma.md``; Apple's TN3205, JACCL's code):

- ``ibv_post_send``, ``ibv_post_recv`` and ``ibv_poll_cq`` are inline in ``verbs.h`` and not
  exported by ``librdma.dylib``: they are called through the context's operations table
  (``qp->context->ops.post_send``), as the header does, on Linux too.
- Only the 16 functions JACCL loads are required; ``ibv_query_device`` is used where present
  (``Context.query_device`` raises ``PyverbsError`` otherwise).
- Structures that hold a ``pthread_mutex_t`` (whose size differs on macOS) are declared only
  up to it (``transports.verbs_abi``).
- Queue-pair types and transitions are passed through: a UC queue pair gets the attribute
  mask UC takes (no RDMA-read or RNR fields), so UC, the only type Apple offers, works; an RC
  queue pair there fails with the library's errno (102), as a ``PyverbsRDMAError``.
- Memory is page-aligned anonymous memory registered with LOCAL_WRITE or what the caller
  asks; nothing here needs RDMA WRITE or READ.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
from ctypes import POINTER, byref, c_int, pointer
from typing import Sequence

from .verbs_abi import (PyverbsError, PyverbsRDMAError, enums, ibv_context, ibv_cq,
                        ibv_device_attr, ibv_gid, ibv_mr, ibv_port_attr, ibv_qp, ibv_qp_attr,
                        ibv_qp_init_attr, ibv_recv_wr, ibv_send_wr, ibv_sge, ibv_wc,
                        open_library)

__all__ = ["Context", "PD", "MR", "CQ", "QP", "QPCap", "QPInitAttr", "QPAttr", "AHAttr",
           "GlobalRoute", "GID", "SGE", "SendWR", "RecvWR", "WC", "get_device_list", "enums",
           "PyverbsError", "PyverbsRDMAError", "EMULATED"]

EMULATED = False
_lib = open_library()  # ImportError where there is no verbs library
LIBRARY = _lib.library
e = enums
_SLACK = 256  # bytes of room after an output structure the library fills


def _fail(what: str, code: int | None = None) -> PyverbsRDMAError:
    return PyverbsRDMAError(what, ctypes.get_errno() if code is None else code)


def _filled(cls: type[ctypes.Structure]) -> ctypes.Structure:
    """A zeroed ``cls`` inside a larger buffer, for the library to fill."""
    buf = (ctypes.c_char * (ctypes.sizeof(cls) + _SLACK))()
    out = cls.from_buffer(buf)
    out._buf = buf
    return out


class Device:
    def __init__(self, name: bytes) -> None:
        self.name = name


def _devices() -> list[tuple[bytes, int]]:
    """(name, index) of each device the library lists now."""
    count = c_int(0)
    listed = _lib.ibv_get_device_list(byref(count))
    if not listed:
        raise _fail("Failed to get devices list")
    try:
        return [(_lib.ibv_get_device_name(listed[i]), i) for i in range(count.value)]
    finally:
        _lib.ibv_free_device_list(listed)


def get_device_list() -> list[Device]:
    return [Device(name) for name, _ in _devices()]


class GID:
    """A 16-byte global identifier, printed as eight groups of four hex digits (pyverbs')."""

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
    """An opened device, by ``name``."""

    def __init__(self, name: str | bytes | None = None, **_: object) -> None:
        want = name.encode() if isinstance(name, str) else name
        count = c_int(0)
        listed = _lib.ibv_get_device_list(byref(count))
        if not listed:
            raise _fail("Failed to get devices list")
        try:
            for i in range(count.value):
                if want is None or _lib.ibv_get_device_name(listed[i]) == want:
                    self.ctx = _lib.ibv_open_device(listed[i])
                    if not self.ctx:
                        raise _fail(f"Failed to open device {name}")
                    break
            else:
                raise PyverbsRDMAError(f"Failed to open device {name} (not listed)",
                                       errno.ENODEV)
        finally:
            _lib.ibv_free_device_list(listed)
        self.name = name
        ops = ibv_context.from_address(self.ctx).ops  # verbs.h's inline functions call these
        self._post_send, self._post_recv, self._poll_cq = ops.post_send, ops.post_recv, \
            ops.poll_cq

    def query_port(self, port_num: int = 1) -> ibv_port_attr:
        attr = _filled(ibv_port_attr)
        rc = _lib.ibv_query_port(self.ctx, port_num, byref(attr))
        if rc:
            raise _fail(f"Failed to query port {port_num}", rc)
        return attr

    def query_gid(self, port_num: int, index: int) -> GID:
        raw = ibv_gid()
        if _lib.ibv_query_gid(self.ctx, port_num, index, byref(raw)):
            raise _fail(f"Failed to query gid {index} of port {port_num}")
        gid = GID()
        gid._raw = bytes(raw.raw)
        return gid

    def query_device(self) -> ibv_device_attr:
        if _lib.ibv_query_device is None:
            raise PyverbsError(f"{LIBRARY} has no ibv_query_device")
        attr = _filled(ibv_device_attr)
        rc = _lib.ibv_query_device(self.ctx, byref(attr))
        if rc:
            raise _fail("Failed to query device", rc)
        return attr

    def close(self) -> None:
        if self.ctx:
            _lib.ibv_close_device(self.ctx)
            self.ctx = None


class PD:
    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.pd = _lib.ibv_alloc_pd(context.ctx)
        if not self.pd:
            raise _fail("Failed to allocate PD")

    def close(self) -> None:
        if self.pd:
            _lib.ibv_dealloc_pd(self.pd)
            self.pd = None


class MR:
    """``length`` bytes of page-aligned memory at ``buf``, registered with ``access``."""

    def __init__(self, pd: PD, length: int, access: int, **_: object) -> None:
        self.pd, self.length = pd, length
        self._map = mmap.mmap(-1, max(length, 1))
        self._array = (ctypes.c_char * max(length, 1)).from_buffer(self._map)
        self.buf = ctypes.addressof(self._array)
        self.mr = _lib.ibv_reg_mr(pd.pd, self.buf, length, access)
        if not self.mr:
            code = ctypes.get_errno()
            self._unmap()
            raise PyverbsRDMAError(f"Failed to register a MR. length: {length}, access flags: "
                                   f"{access}", code)
        fields = ibv_mr.from_address(self.mr)
        self.lkey, self.rkey, self.handle = fields.lkey, fields.rkey, fields.handle

    def write(self, data: bytes, length: int, offset: int = 0) -> None:
        ctypes.memmove(self.buf + offset, data, length)

    def read(self, length: int, offset: int = 0) -> bytes:
        return ctypes.string_at(self.buf + offset, length)

    def _unmap(self) -> None:
        del self._array
        try:
            self._map.close()
        except BufferError:  # a view is still alive; the memory goes with it
            pass

    def close(self) -> None:
        if self.mr:
            _lib.ibv_dereg_mr(self.mr)
            self.mr = None
            self._unmap()


class WC:
    """One completion, with pyverbs' attribute names."""

    __slots__ = ("wr_id", "status", "opcode", "vendor_err", "byte_len", "imm_data", "qp_num",
                 "src_qp", "wc_flags", "pkey_index", "slid", "sl", "dlid_path_bits")

    def __init__(self, c: ibv_wc) -> None:
        for name in WC.__slots__:
            setattr(self, name, getattr(c, name))


class CQ:
    def __init__(self, context: Context, cqe: int, cq_context: object = None,
                 channel: object = None, comp_vector: int = 0) -> None:
        self.ctx = context
        self.cq = _lib.ibv_create_cq(context.ctx, cqe, None, None, comp_vector)
        if not self.cq:
            raise _fail(f"Failed to create CQ of {cqe} entries")
        self.cqe = ibv_cq.from_address(self.cq).cqe
        self._poll_cq = context._poll_cq
        self._wcs = (ibv_wc * 16)()

    def poll(self, num_entries: int = 1) -> tuple[int, list[WC]]:
        if num_entries > len(self._wcs):
            self._wcs = (ibv_wc * num_entries)()
        n = self._poll_cq(self.cq, num_entries, self._wcs)
        if n < 0:
            raise PyverbsRDMAError("Failed to poll CQ", -n if n < -1 else errno.EIO)
        return n, [WC(self._wcs[i]) for i in range(n)]

    def close(self) -> None:
        if self.cq:
            _lib.ibv_destroy_cq(self.cq)
            self.cq = None


# -- work requests ------------------------------------------------------------------------------

class SGE:
    def __init__(self, addr: int, length: int, lkey: int) -> None:
        self.addr, self.length, self.lkey = addr, length, lkey


def _sg_list(sg: Sequence[SGE] | None) -> ctypes.Array:
    sg = sg or []
    return (ibv_sge * max(len(sg), 1))(*(ibv_sge(s.addr, s.length, s.lkey) for s in sg))


class _WR:
    """A work request's C structure, its fields read and written through pyverbs' names."""

    _C: type
    _NAMES: tuple[str, ...]

    def __getattr__(self, name: str):
        if name in self._NAMES:
            return getattr(self._c, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value) -> None:
        if name in self._NAMES:
            setattr(self._c, name, value)
        else:
            object.__setattr__(self, name, value)


class RecvWR(_WR):
    _NAMES = ("wr_id", "num_sge")

    def __init__(self, wr_id: int = 0, num_sge: int = 0, sg: Sequence[SGE] | None = None,
                 next_wr: RecvWR | None = None) -> None:
        self._sg = _sg_list(sg)
        self._c = ibv_recv_wr(wr_id=wr_id, num_sge=num_sge,
                              sg_list=ctypes.cast(self._sg, POINTER(ibv_sge)))
        self.next_wr = next_wr
        if next_wr is not None:
            self._c.next = pointer(next_wr._c)


class SendWR(_WR):
    _NAMES = ("wr_id", "num_sge", "opcode", "send_flags", "imm_data")

    def __init__(self, wr_id: int = 0, opcode: int = e.IBV_WR_SEND, num_sge: int = 0,
                 imm_data: int = 0, sg: Sequence[SGE] | None = None,
                 send_flags: int = e.IBV_SEND_SIGNALED, next_wr: SendWR | None = None) -> None:
        self._sg = _sg_list(sg)
        self._c = ibv_send_wr(wr_id=wr_id, opcode=opcode, num_sge=num_sge, imm_data=imm_data,
                              send_flags=send_flags,
                              sg_list=ctypes.cast(self._sg, POINTER(ibv_sge)))
        self.next_wr = next_wr
        if next_wr is not None:
            self._c.next = pointer(next_wr._c)

    def set_wr_rdma(self, rkey: int, addr: int) -> None:
        self._c.wr.rdma.rkey, self._c.wr.rdma.remote_addr = rkey, addr


# -- queue pairs ----------------------------------------------------------------------------------

class QPCap:
    def __init__(self, max_send_wr: int = 1, max_recv_wr: int = 10, max_send_sge: int = 1,
                 max_recv_sge: int = 1, max_inline_data: int = 0) -> None:
        self.max_send_wr, self.max_recv_wr = max_send_wr, max_recv_wr
        self.max_send_sge, self.max_recv_sge = max_send_sge, max_recv_sge
        self.max_inline_data = max_inline_data


class QPInitAttr:
    def __init__(self, qp_type: int = e.IBV_QPT_UD, qp_context: object = None,
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
    def __init__(self, dlid: int = 0, sl: int = 0, src_path_bits: int = 0,
                 static_rate: int = 0, is_global: int = 0, port_num: int = 1,
                 gr: GlobalRoute | None = None) -> None:
        self.port_num, self.is_global, self.dlid, self.sl = port_num, is_global, dlid, sl
        self.src_path_bits, self.static_rate, self.gr = src_path_bits, static_rate, gr


_ATTR_FIELDS = ("qp_state", "cur_qp_state", "path_mtu", "qkey", "rq_psn", "sq_psn",
                "dest_qp_num", "qp_access_flags", "pkey_index", "max_rd_atomic",
                "max_dest_rd_atomic", "min_rnr_timer", "port_num", "timeout", "retry_cnt",
                "rnr_retry")


class QPAttr:
    """pyverbs' keywords and defaults; every other field is set as an attribute (0)."""

    def __init__(self, qp_state: int = e.IBV_QPS_INIT, cur_qp_state: int = e.IBV_QPS_RESET,
                 port_num: int = 1, path_mtu: int = e.IBV_MTU_1024) -> None:
        for name in _ATTR_FIELDS:
            setattr(self, name, 0)
        self.qp_state, self.cur_qp_state, self.port_num = qp_state, cur_qp_state, port_num
        self.path_mtu = path_mtu
        self.ah_attr: AHAttr | None = None

    def _to_c(self) -> ibv_qp_attr:
        c = ibv_qp_attr()
        for name in _ATTR_FIELDS:
            setattr(c, name, int(getattr(self, name)))
        ah = self.ah_attr
        if ah is not None:
            c.ah_attr.dlid, c.ah_attr.sl, c.ah_attr.is_global = ah.dlid, ah.sl, ah.is_global
            c.ah_attr.src_path_bits, c.ah_attr.static_rate = ah.src_path_bits, ah.static_rate
            c.ah_attr.port_num = ah.port_num
            if ah.gr is not None:
                g = c.ah_attr.grh
                g.dgid.raw[:] = ah.gr.dgid._raw if ah.gr.dgid is not None else bytes(16)
                g.flow_label, g.sgid_index = ah.gr.flow_label, ah.gr.sgid_index
                g.hop_limit, g.traffic_class = ah.gr.hop_limit, ah.gr.traffic_class
        return c


def _mask(qp_type: int, state: int) -> int:
    """The attributes a move to ``state`` sets, per queue-pair type (as pyverbs' to_* do)."""
    Q, rc = e, qp_type == e.IBV_QPT_RC
    if state == e.IBV_QPS_INIT:
        extra = Q.IBV_QP_QKEY if qp_type == e.IBV_QPT_UD else Q.IBV_QP_ACCESS_FLAGS
        return Q.IBV_QP_STATE | Q.IBV_QP_PKEY_INDEX | Q.IBV_QP_PORT | extra
    if state == e.IBV_QPS_RTR:
        if qp_type == e.IBV_QPT_UD:
            return Q.IBV_QP_STATE
        return (Q.IBV_QP_STATE | Q.IBV_QP_AV | Q.IBV_QP_PATH_MTU | Q.IBV_QP_DEST_QPN
                | Q.IBV_QP_RQ_PSN | (Q.IBV_QP_MAX_DEST_RD_ATOMIC | Q.IBV_QP_MIN_RNR_TIMER
                                     if rc else 0))
    if state == e.IBV_QPS_RTS:
        return Q.IBV_QP_STATE | Q.IBV_QP_SQ_PSN | (
            Q.IBV_QP_TIMEOUT | Q.IBV_QP_RETRY_CNT | Q.IBV_QP_RNR_RETRY
            | Q.IBV_QP_MAX_QP_RD_ATOMIC if rc else 0)
    return Q.IBV_QP_STATE


class QP:
    """A queue pair; its posts go through the device's operations table."""

    def __init__(self, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None) -> None:
        a, cap = init_attr, init_attr.cap
        c = ibv_qp_init_attr(send_cq=a.scq.cq if a.scq else None,
                             recv_cq=a.rcq.cq if a.rcq else None, qp_type=a.qp_type,
                             sq_sig_all=a.sq_sig_all)
        c.cap.max_send_wr, c.cap.max_recv_wr = cap.max_send_wr, cap.max_recv_wr
        c.cap.max_send_sge, c.cap.max_recv_sge = cap.max_send_sge, cap.max_recv_sge
        c.cap.max_inline_data = cap.max_inline_data
        self.qp = _lib.ibv_create_qp(pd.pd, byref(c))
        if not self.qp:
            raise _fail(f"Failed to create QP of type {a.qp_type}")
        self.pd, self.qp_type, self.cap = pd, a.qp_type, c.cap
        self._fields = ibv_qp.from_address(self.qp)
        self.qp_num = self._fields.qp_num
        self._post_send, self._post_recv = pd.ctx._post_send, pd.ctx._post_recv
        self._bad_send, self._bad_recv = POINTER(ibv_send_wr)(), POINTER(ibv_recv_wr)()
        if qp_attr is not None:
            for state in (e.IBV_QPS_INIT, e.IBV_QPS_RTR, e.IBV_QPS_RTS):
                qp_attr.qp_state = state
                self.modify(qp_attr, _mask(self.qp_type, state))

    @property
    def qp_state(self) -> int:
        return self._fields.state

    def modify(self, attr: QPAttr, comp_mask: int) -> None:
        rc = _lib.ibv_modify_qp(self.qp, byref(attr._to_c()), comp_mask)
        if rc:
            raise _fail(f"Failed to modify QP state to {attr.qp_state}", rc)

    def to_init(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_INIT
        self.modify(attr, _mask(self.qp_type, e.IBV_QPS_INIT))

    def to_rtr(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_RTR
        self.modify(attr, _mask(self.qp_type, e.IBV_QPS_RTR))

    def to_rts(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_RTS
        self.modify(attr, _mask(self.qp_type, e.IBV_QPS_RTS))

    def post_send(self, wr: SendWR, bad_wr: object = None) -> None:
        rc = self._post_send(self.qp, byref(wr._c), byref(self._bad_send))
        if rc:
            raise PyverbsRDMAError("Failed to post send", rc)

    def post_recv(self, wr: RecvWR, bad_wr: object = None) -> None:
        rc = self._post_recv(self.qp, byref(wr._c), byref(self._bad_recv))
        if rc:
            raise PyverbsRDMAError("Failed to post recv", rc)

    def close(self) -> None:
        if self.qp:
            _lib.ibv_destroy_qp(self.qp)
            self.qp = None
