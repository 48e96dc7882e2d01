"""EMULATED verbs, the plain objects: work requests, scatter-gather entries, queue-pair and
address attributes, GIDs and port attributes, with pyverbs' keywords and defaults (so that
``tests/test_rdma.py`` can check them against real pyverbs).  An emulation, not RDMA: see
``transports.emulated_verbs``."""
from __future__ import annotations

from types import SimpleNamespace

from .emulated_base import e
from .verbs_plain import GID, SGE, GlobalRoute, QPCap  # noqa: F401 (the provider namespace)


class PortAttr(SimpleNamespace):
    pass


# -- work requests ---------------------------------------------------------------------------

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

class QPInitAttr:
    def __init__(self, qp_type: int = e.IBV_QPT_RC, qp_context: object = None,
                 scq: object = None, rcq: object = None, srq: object = None,
                 cap: QPCap | None = None, sq_sig_all: int = 1) -> None:
        self.qp_type, self.scq, self.rcq, self.srq = qp_type, scq, rcq, srq
        self.cap, self.sq_sig_all = cap or QPCap(), sq_sig_all


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
