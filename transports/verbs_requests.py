"""The plain objects of the ctypes verbs provider (``transports.verbs_ctypes``): GIDs, work
requests and queue-pair attributes with pyverbs' names, arguments and defaults, each turned
into its C structure (``transports.verbs_abi``) where the library needs one."""
from __future__ import annotations

import ctypes
from ctypes import POINTER, pointer
from typing import Sequence

from .verbs_abi import enums, ibv_qp_attr, ibv_recv_wr, ibv_send_wr, ibv_sge
from .verbs_plain import GID, SGE, GlobalRoute, QPCap  # noqa: F401 (the provider namespace)

e = enums


# -- work requests ------------------------------------------------------------------------------

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

class QPInitAttr:
    def __init__(self, qp_type: int = e.IBV_QPT_UD, qp_context: object = None,
                 scq: CQ | None = None, rcq: CQ | None = None, srq: object = None,
                 cap: QPCap | None = None, sq_sig_all: int = 1) -> None:
        self.qp_type, self.scq, self.rcq, self.srq = qp_type, scq, rcq, srq
        self.cap, self.sq_sig_all = cap or QPCap(), sq_sig_all


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


def qp_attr_mask(qp_type: int, state: int) -> int:
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
