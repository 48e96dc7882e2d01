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
from ctypes import POINTER, byref, c_int

from .verbs_abi import (PyverbsError, PyverbsRDMAError, enums, ibv_context, ibv_cq,
                        ibv_device_attr, ibv_gid, ibv_mr, ibv_port_attr, ibv_qp,
                        ibv_qp_init_attr, ibv_recv_wr, ibv_send_wr, ibv_wc, open_library)
from .verbs_requests import (GID, SGE, AHAttr, GlobalRoute, QPAttr, QPCap, QPInitAttr, RecvWR,
                             SendWR, qp_attr_mask)

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
                self.modify(qp_attr, qp_attr_mask(self.qp_type, state))

    @property
    def qp_state(self) -> int:
        return self._fields.state

    def modify(self, attr: QPAttr, comp_mask: int) -> None:
        rc = _lib.ibv_modify_qp(self.qp, byref(attr._to_c()), comp_mask)
        if rc:
            raise _fail(f"Failed to modify QP state to {attr.qp_state}", rc)

    def to_init(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_INIT
        self.modify(attr, qp_attr_mask(self.qp_type, e.IBV_QPS_INIT))

    def to_rtr(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_RTR
        self.modify(attr, qp_attr_mask(self.qp_type, e.IBV_QPS_RTR))

    def to_rts(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_RTS
        self.modify(attr, qp_attr_mask(self.qp_type, e.IBV_QPS_RTS))

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
