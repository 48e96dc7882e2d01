"""NULL verbs: a verbs provider whose posts cost (almost) nothing, for measuring the RDMA
transport's own Python cost per frame (``benchmarks/rdma_frames.py``).  Not RDMA, not an
emulation of a network: every queue pair lives in this process, and a posted send is delivered
at once, inside the post, into the receive its peer queue pair posted first (one ``memmove``,
the copy a NIC's DMA would make), with a completion on each side.  Ranks using it must be
threads of one process.

It offers the provider namespace of ``transports.verbs`` (pyverbs' names and arguments).
Delivery follows the queue-pair type: on RC a send that finds no receive completes with
``IBV_WC_RNR_RETRY_EXC_ERR``, on UC it is dropped silently (as Apple's Thunderbolt UC would);
``IBV_WR_RDMA_WRITE`` copies to the target address.  Nothing is ever lost otherwise.
"""
from __future__ import annotations

import collections
import ctypes
import itertools
import mmap
import threading
from types import SimpleNamespace

from ringcomm.transports.verbs_abi import PyverbsError, PyverbsRDMAError, enums  # noqa: F401
from ringcomm.transports.verbs_plain import GID, SGE, QPCap  # noqa: F401 (the provider namespace)

EMULATED = True  # not RDMA: nothing may pass it off as such
e = enums
_lock = threading.Lock()              # the "wire": one post at a time
_qps: dict[tuple[bytes, int], QP] = {}  # (gid, qp number) -> queue pair
_ids = itertools.count(1)
stats = collections.Counter()         # posts by kind, for the benchmark


class Device:
    def __init__(self, name: str) -> None:
        self.name = name.encode()


def get_device_list() -> list[Device]:
    return [Device(f"null{i}") for i in range(4)]


class Context:
    """A device; its GID table: a link-local entry and an IPv4-mapped one, unique to it."""

    def __init__(self, name: str | None = None, **_: object) -> None:
        self.name, n = name, next(_ids)
        self._gids = [bytes.fromhex("fe80" + "00" * 10) + n.to_bytes(4, "big"),
                      bytes(10) + b"\xff\xff" + bytes([127, 0, n >> 8 & 255, n & 255])]

    def query_port(self, port_num: int = 1) -> SimpleNamespace:
        return SimpleNamespace(state=e.IBV_PORT_ACTIVE, lid=0, active_mtu=e.IBV_MTU_4096,
                               max_mtu=e.IBV_MTU_4096, gid_tbl_len=len(self._gids),
                               link_layer=e.IBV_LINK_LAYER_ETHERNET, max_msg_sz=1 << 31,
                               port_num=port_num)

    def query_gid(self, port_num: int, index: int) -> GID:
        if not 0 <= index < len(self._gids):
            raise PyverbsRDMAError(f"Failed to query gid {index} of port {port_num}", 22)
        gid = GID()
        gid._raw = self._gids[index]
        return gid

    def query_gid_type(self, port_num: int, index: int) -> int:
        return e.IBV_GID_TYPE_ROCE_V2

    def query_device(self) -> SimpleNamespace:
        return SimpleNamespace(max_qp=1024, max_qp_wr=16384, max_cqe=1 << 20, max_sge=16,
                               max_mr=1024, max_mr_size=1 << 40, max_pd=64, phys_port_cnt=1,
                               max_qp_rd_atom=16, max_qp_init_rd_atom=16)

    def close(self) -> None:
        pass


class PD:
    def __init__(self, context: Context) -> None:
        self.ctx = context

    def close(self) -> None:
        pass


class MR:
    def __init__(self, pd: PD, length: int, access: int, **_: object) -> None:
        self.pd, self.length = pd, length
        self._map = mmap.mmap(-1, max(length, 1))
        self._array = (ctypes.c_char * max(length, 1)).from_buffer(self._map)
        self.buf = ctypes.addressof(self._array)
        self.lkey = self.rkey = next(_ids)

    def write(self, data: bytes, length: int, offset: int = 0) -> None:
        ctypes.memmove(self.buf + offset, data, length)

    def read(self, length: int, offset: int = 0) -> bytes:
        return ctypes.string_at(self.buf + offset, length)

    def close(self) -> None:
        pass  # the memory goes with the object (views of it may outlive close)


class WC:
    __slots__ = ("wr_id", "status", "opcode", "byte_len", "qp_num", "imm_data", "wc_flags",
                 "vendor_err", "src_qp")

    def __init__(self, wr_id, status, opcode, byte_len, qp_num, imm_data=0, wc_flags=0):
        self.wr_id, self.status, self.opcode, self.byte_len = wr_id, status, opcode, byte_len
        self.qp_num, self.imm_data, self.wc_flags = qp_num, imm_data, wc_flags
        self.vendor_err = self.src_qp = 0


class CQ:
    def __init__(self, context: Context, cqe: int, cq_context: object = None,
                 channel: object = None, comp_vector: int = 0) -> None:
        self.cqe, self._wcs = cqe, collections.deque()

    def poll(self, num_entries: int = 1) -> tuple[int, list[WC]]:
        wcs, out = self._wcs, []
        while wcs and len(out) < num_entries:
            out.append(wcs.popleft())
        return len(out), out

    def close(self) -> None:
        pass


class RecvWR:
    def __init__(self, wr_id: int = 0, num_sge: int = 0, sg: list | None = None,
                 next_wr: object = None) -> None:
        self.wr_id, self.num_sge, self.sg = wr_id, num_sge, sg or []


class SendWR:
    def __init__(self, wr_id: int = 0, opcode: int = e.IBV_WR_SEND, num_sge: int = 0,
                 imm_data: int = 0, sg: list | None = None,
                 send_flags: int = e.IBV_SEND_SIGNALED, next_wr: object = None) -> None:
        self.wr_id, self.opcode, self.num_sge, self.sg = wr_id, opcode, num_sge, sg or []
        self.imm_data, self.send_flags = imm_data, send_flags
        self.rkey = self.remote_addr = 0

    def set_wr_rdma(self, rkey: int, addr: int) -> None:
        self.rkey, self.remote_addr = rkey, addr


class QPInitAttr:
    def __init__(self, qp_type: int = e.IBV_QPT_UD, qp_context: object = None,
                 scq: CQ | None = None, rcq: CQ | None = None, srq: object = None,
                 cap: QPCap | None = None, sq_sig_all: int = 1) -> None:
        self.qp_type, self.scq, self.rcq, self.cap = qp_type, scq, rcq, cap or QPCap()
        self.sq_sig_all = sq_sig_all


class GlobalRoute:
    def __init__(self, dgid: GID | None = None, flow_label: int = 0, sgid_index: int = 0,
                 hop_limit: int = 1, traffic_class: int = 0) -> None:
        self.dgid, self.sgid_index, self.hop_limit = dgid, sgid_index, hop_limit
        self.flow_label, self.traffic_class = flow_label, traffic_class


class AHAttr:
    def __init__(self, dlid: int = 0, sl: int = 0, src_path_bits: int = 0,
                 static_rate: int = 0, is_global: int = 0, port_num: int = 1,
                 gr: GlobalRoute | None = None) -> None:
        self.dlid, self.sl, self.is_global, self.port_num, self.gr = dlid, sl, is_global, \
            port_num, gr
        self.src_path_bits, self.static_rate = src_path_bits, static_rate


class QPAttr:
    def __init__(self, qp_state: int = e.IBV_QPS_INIT, cur_qp_state: int = e.IBV_QPS_RESET,
                 port_num: int = 1, path_mtu: int = e.IBV_MTU_1024) -> None:
        self.qp_state, self.cur_qp_state, self.port_num, self.path_mtu = \
            qp_state, cur_qp_state, port_num, path_mtu
        self.dest_qp_num = self.rq_psn = self.sq_psn = self.qp_access_flags = 0
        self.pkey_index = self.max_rd_atomic = self.max_dest_rd_atomic = 0
        self.min_rnr_timer = self.timeout = self.retry_cnt = self.rnr_retry = 0
        self.ah_attr: AHAttr | None = None


class QP:
    def __init__(self, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None) -> None:
        self.qp_num, self.qp_type = next(_ids), init_attr.qp_type
        self.scq, self.rcq, self.sig_all = init_attr.scq, init_attr.rcq, init_attr.sq_sig_all
        self.qp_state, self._peer = e.IBV_QPS_RESET, None
        self._rq: collections.deque = collections.deque()
        for gid in pd.ctx._gids:
            _qps[(gid, self.qp_num)] = self

    def modify(self, attr: QPAttr, comp_mask: int = 0) -> None:
        if attr.qp_state == e.IBV_QPS_RTR:
            self._peer = (attr.ah_attr.gr.dgid._raw, attr.dest_qp_num)
        self.qp_state = attr.qp_state

    def to_init(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_INIT
        self.modify(attr)

    def to_rtr(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_RTR
        self.modify(attr)

    def to_rts(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_RTS
        self.modify(attr)

    def post_recv(self, wr: RecvWR, bad_wr: object = None) -> None:
        stats["recv"] += 1
        self._rq.append(wr)

    def post_send(self, wr: SendWR, bad_wr: object = None) -> None:
        if self.qp_state != e.IBV_QPS_RTS:
            raise PyverbsRDMAError("Failed to post send (QP not in RTS)", 22)
        status, op = e.IBV_WC_SUCCESS, wr.opcode
        with _lock:
            peer = _qps.get(self._peer)
            length = sum(s.length for s in wr.sg)
            if op in (e.IBV_WR_RDMA_WRITE, e.IBV_WR_RDMA_WRITE_WITH_IMM):
                stats["write"] += 1
                ctypes.memmove(wr.remote_addr, wr.sg[0].addr, length)
            if op != e.IBV_WR_RDMA_WRITE:
                stats["send" if op != e.IBV_WR_RDMA_WRITE_WITH_IMM else "write_imm"] += 1
                status = self._deliver(peer, wr, op, length)
        if status != e.IBV_WC_SUCCESS or self.sig_all or wr.send_flags & e.IBV_SEND_SIGNALED:
            opcode = e.IBV_WC_RDMA_WRITE if op == e.IBV_WR_RDMA_WRITE else e.IBV_WC_SEND
            self.scq._wcs.append(WC(wr.wr_id, status, opcode, length, self.qp_num))

    def _deliver(self, peer: QP | None, wr: SendWR, op: int, length: int) -> int:
        """Into the peer's oldest posted receive: the status of the send."""
        if peer is None or not peer._rq:
            stats["dropped"] += 1
            return e.IBV_WC_SUCCESS if self.qp_type == e.IBV_QPT_UC \
                else e.IBV_WC_RNR_RETRY_EXC_ERR
        recv = peer._rq.popleft()
        if op == e.IBV_WR_SEND or op == e.IBV_WR_SEND_WITH_IMM:
            room = sum(s.length for s in recv.sg)
            if length > room:
                peer.rcq._wcs.append(WC(recv.wr_id, e.IBV_WC_LOC_LEN_ERR, e.IBV_WC_RECV, 0,
                                        peer.qp_num))
                return e.IBV_WC_REM_INV_REQ_ERR
            if length:
                ctypes.memmove(recv.sg[0].addr, wr.sg[0].addr, length)
        imm = op in (e.IBV_WR_SEND_WITH_IMM, e.IBV_WR_RDMA_WRITE_WITH_IMM)
        opcode = e.IBV_WC_RECV_RDMA_WITH_IMM if op == e.IBV_WR_RDMA_WRITE_WITH_IMM \
            else e.IBV_WC_RECV
        peer.rcq._wcs.append(WC(recv.wr_id, e.IBV_WC_SUCCESS, opcode,
                                length if op != e.IBV_WR_RDMA_WRITE_WITH_IMM else 0,
                                peer.qp_num, wr.imm_data if imm else 0,
                                e.IBV_WC_WITH_IMM if imm else 0))
        return e.IBV_WC_SUCCESS

    def close(self) -> None:
        for key in [k for k, v in _qps.items() if v is self]:
            del _qps[key]
