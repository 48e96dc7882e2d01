"""EMULATED verbs, the part its objects and its wire share: pyverbs' constants, error types
and the completion record.  An emulation, not RDMA: see ``transports.emulated_verbs``."""
from __future__ import annotations

import ctypes
import os
from types import SimpleNamespace

# -- enums (the values of <infiniband/verbs.h>, names as in pyverbs.enums) -----------------
enums = SimpleNamespace(
    IBV_QPT_RC=2, IBV_QPT_UC=3, IBV_QPT_UD=4,
    IBV_QPS_RESET=0, IBV_QPS_INIT=1, IBV_QPS_RTR=2, IBV_QPS_RTS=3, IBV_QPS_SQD=4,
    IBV_QPS_SQE=5, IBV_QPS_ERR=6,
    IBV_WR_RDMA_WRITE=0, IBV_WR_RDMA_WRITE_WITH_IMM=1, IBV_WR_SEND=2, IBV_WR_SEND_WITH_IMM=3,
    IBV_SEND_FENCE=1, IBV_SEND_SIGNALED=2, IBV_SEND_SOLICITED=4, IBV_SEND_INLINE=8,
    IBV_ACCESS_LOCAL_WRITE=1, IBV_ACCESS_REMOTE_WRITE=2, IBV_ACCESS_REMOTE_READ=4,
    IBV_WC_SUCCESS=0, IBV_WC_LOC_LEN_ERR=1, IBV_WC_LOC_QP_OP_ERR=2, IBV_WC_LOC_PROT_ERR=4,
    IBV_WC_WR_FLUSH_ERR=5, IBV_WC_REM_INV_REQ_ERR=9, IBV_WC_REM_ACCESS_ERR=10,
    IBV_WC_REM_OP_ERR=11, IBV_WC_RETRY_EXC_ERR=12, IBV_WC_RNR_RETRY_EXC_ERR=13,
    IBV_WC_SEND=0, IBV_WC_RDMA_WRITE=1, IBV_WC_RECV=128, IBV_WC_RECV_RDMA_WITH_IMM=129,
    IBV_WC_WITH_IMM=2,
    IBV_MTU_256=1, IBV_MTU_512=2, IBV_MTU_1024=3, IBV_MTU_2048=4, IBV_MTU_4096=5,
    IBV_PORT_DOWN=1, IBV_PORT_ACTIVE=4,
)
e = enums

# What the emulated device allows: Apple's documented limits for RDMA over Thunderbolt (TN3205,
# docs/rdma-protocol.md "Limits"), so that the emulation refuses what those devices refuse.
MAX_QPS_PER_DEVICE = 10          # unreliable-connected queue pairs per device
MAX_MESSAGE_BYTES = 16_773_120   # one send
MAX_WR = 4095                    # outstanding work requests per queue
FRAME_UNIT = 4096                # a send and its receive span the same number of these


class PyverbsError(Exception):
    pass


class PyverbsRDMAError(PyverbsError):
    def __init__(self, msg: str, error_code: int = -1) -> None:
        super().__init__(f"{msg}. Errno: {error_code}, {os.strerror(error_code)}"
                         if error_code > 0 else msg)
        self.error_code = error_code


def view(addr: int, length: int) -> memoryview:
    """Bytes of registered memory at ``addr``, without a copy."""
    return memoryview((ctypes.c_char * length).from_address(addr)).cast("B")



class WC:
    def __init__(self, wr_id: int = 0, status: int = 0, opcode: int = 0, byte_len: int = 0,
                 qp_num: int = 0, imm_data: int = 0, wc_flags: int = 0) -> None:
        self.wr_id, self.status, self.opcode, self.byte_len = wr_id, status, opcode, byte_len
        self.qp_num, self.imm_data, self.wc_flags, self.vendor_err = qp_num, imm_data, wc_flags, 0

