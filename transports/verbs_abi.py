"""The verbs C ABI that ``transports.verbs_ctypes`` calls: the library, its structures and enums.

The structures follow rdma-core's ``<infiniband/verbs.h>`` (which Apple's SDK header is, by
JACCL's use of it, compatible with).  Where a C structure holds a ``pthread_mutex_t`` (64 bytes
on macOS, 40 on Linux) only the fields before it are declared: ``ibv_context`` up to its
operations table, ``ibv_qp`` up to ``qp_type``, ``ibv_cq`` up to ``cqe``, so no size that
differs between the two systems enters the binding.  Output structures the library fills
(``ibv_port_attr``, ``ibv_device_attr``) are read from a buffer with room to spare, as newer
libraries may write fields an older header lacks.  ``tests/test_verbs_abi.py`` compiles a C
program against the real header and checks every size and offset declared here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from ctypes import (CFUNCTYPE, POINTER, Structure, Union, c_char, c_char_p, c_int, c_size_t,
                    c_uint, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p)
from types import SimpleNamespace

# Apple ships the verbs API as librdma.dylib (what JACCL dlopens); Linux has rdma-core's.
LIBRARIES = ("librdma.dylib", "/usr/lib/librdma.dylib") if sys.platform == "darwin" \
    else ("libibverbs.so.1", "libibverbs.so")


class PyverbsError(Exception):
    """As pyverbs' ``PyverbsError``: a verbs call was refused."""


class PyverbsRDMAError(PyverbsError):
    """As pyverbs' ``PyverbsRDMAError``: a verbs call failed with ``error_code`` (an errno)."""

    def __init__(self, msg: str, error_code: int = -1) -> None:
        super().__init__(f"{msg}. Errno: {error_code}, {os.strerror(error_code)}"
                         if error_code > 0 else msg)
        self.error_code = error_code


# -- structures ---------------------------------------------------------------------------------

class ibv_gid(Union):
    _fields_ = [("raw", c_uint8 * 16), ("global_", c_uint64 * 2)]


class ibv_sge(Structure):
    _fields_ = [("addr", c_uint64), ("length", c_uint32), ("lkey", c_uint32)]


class _rdma(Structure):
    _fields_ = [("remote_addr", c_uint64), ("rkey", c_uint32)]


class _atomic(Structure):
    _fields_ = [("remote_addr", c_uint64), ("compare_add", c_uint64), ("swap", c_uint64),
                ("rkey", c_uint32)]


class _ud(Structure):
    _fields_ = [("ah", c_void_p), ("remote_qpn", c_uint32), ("remote_qkey", c_uint32)]


class _wr(Union):
    _fields_ = [("rdma", _rdma), ("atomic", _atomic), ("ud", _ud)]


class ibv_send_wr(Structure):
    pass


ibv_send_wr._fields_ = [
    ("wr_id", c_uint64), ("next", POINTER(ibv_send_wr)), ("sg_list", POINTER(ibv_sge)),
    ("num_sge", c_int), ("opcode", c_int), ("send_flags", c_uint), ("imm_data", c_uint32),
    ("wr", _wr), ("qp_type", c_uint32),
    # the union of bind_mw (a pointer, a key, struct ibv_mw_bind_info) and tso: 48 bytes
    ("_bind_mw_tso", c_uint64 * 6)]


class ibv_recv_wr(Structure):
    pass


ibv_recv_wr._fields_ = [("wr_id", c_uint64), ("next", POINTER(ibv_recv_wr)),
                        ("sg_list", POINTER(ibv_sge)), ("num_sge", c_int)]


class ibv_wc(Structure):
    _fields_ = [("wr_id", c_uint64), ("status", c_int), ("opcode", c_int),
                ("vendor_err", c_uint32), ("byte_len", c_uint32), ("imm_data", c_uint32),
                ("qp_num", c_uint32), ("src_qp", c_uint32), ("wc_flags", c_uint),
                ("pkey_index", c_uint16), ("slid", c_uint16), ("sl", c_uint8),
                ("dlid_path_bits", c_uint8)]


class ibv_qp_cap(Structure):
    _fields_ = [("max_send_wr", c_uint32), ("max_recv_wr", c_uint32),
                ("max_send_sge", c_uint32), ("max_recv_sge", c_uint32),
                ("max_inline_data", c_uint32)]


class ibv_qp_init_attr(Structure):
    _fields_ = [("qp_context", c_void_p), ("send_cq", c_void_p), ("recv_cq", c_void_p),
                ("srq", c_void_p), ("cap", ibv_qp_cap), ("qp_type", c_int),
                ("sq_sig_all", c_int)]


class ibv_global_route(Structure):
    _fields_ = [("dgid", ibv_gid), ("flow_label", c_uint32), ("sgid_index", c_uint8),
                ("hop_limit", c_uint8), ("traffic_class", c_uint8)]


class ibv_ah_attr(Structure):
    _fields_ = [("grh", ibv_global_route), ("dlid", c_uint16), ("sl", c_uint8),
                ("src_path_bits", c_uint8), ("static_rate", c_uint8), ("is_global", c_uint8),
                ("port_num", c_uint8)]


class ibv_qp_attr(Structure):
    _fields_ = [("qp_state", c_int), ("cur_qp_state", c_int), ("path_mtu", c_int),
                ("path_mig_state", c_int), ("qkey", c_uint32), ("rq_psn", c_uint32),
                ("sq_psn", c_uint32), ("dest_qp_num", c_uint32), ("qp_access_flags", c_uint),
                ("cap", ibv_qp_cap), ("ah_attr", ibv_ah_attr), ("alt_ah_attr", ibv_ah_attr),
                ("pkey_index", c_uint16), ("alt_pkey_index", c_uint16),
                ("en_sqd_async_notify", c_uint8), ("sq_draining", c_uint8),
                ("max_rd_atomic", c_uint8), ("max_dest_rd_atomic", c_uint8),
                ("min_rnr_timer", c_uint8), ("port_num", c_uint8), ("timeout", c_uint8),
                ("retry_cnt", c_uint8), ("rnr_retry", c_uint8), ("alt_port_num", c_uint8),
                ("alt_timeout", c_uint8), ("rate_limit", c_uint32)]


class ibv_port_attr(Structure):
    _fields_ = [("state", c_int), ("max_mtu", c_int), ("active_mtu", c_int),
                ("gid_tbl_len", c_int), ("port_cap_flags", c_uint32), ("max_msg_sz", c_uint32),
                ("bad_pkey_cntr", c_uint32), ("qkey_viol_cntr", c_uint32),
                ("pkey_tbl_len", c_uint16), ("lid", c_uint16), ("sm_lid", c_uint16),
                ("lmc", c_uint8), ("max_vl_num", c_uint8), ("sm_sl", c_uint8),
                ("subnet_timeout", c_uint8), ("init_type_reply", c_uint8),
                ("active_width", c_uint8), ("active_speed", c_uint8), ("phys_state", c_uint8),
                ("link_layer", c_uint8), ("flags", c_uint8), ("port_cap_flags2", c_uint16)]


class ibv_device_attr(Structure):
    _fields_ = [("fw_ver", c_char * 64), ("node_guid", c_uint64), ("sys_image_guid", c_uint64),
                ("max_mr_size", c_uint64), ("page_size_cap", c_uint64),
                ("vendor_id", c_uint32), ("vendor_part_id", c_uint32), ("hw_ver", c_uint32)] + [
        (name, c_int) for name in (
            "max_qp", "max_qp_wr", "device_cap_flags", "max_sge", "max_sge_rd", "max_cq",
            "max_cqe", "max_mr", "max_pd", "max_qp_rd_atom", "max_ee_rd_atom",
            "max_res_rd_atom", "max_qp_init_rd_atom", "max_ee_init_rd_atom", "atomic_cap",
            "max_ee", "max_rdd", "max_mw", "max_raw_ipv6_qp", "max_raw_ethy_qp",
            "max_mcast_grp", "max_mcast_qp_attach", "max_total_mcast_qp_attach", "max_ah",
            "max_fmr", "max_map_per_fmr", "max_srq", "max_srq_wr", "max_srq_sge")] + [
        ("max_pkeys", c_uint16), ("local_ca_ack_delay", c_uint8), ("phys_port_cnt", c_uint8)]


class ibv_mr(Structure):
    _fields_ = [("context", c_void_p), ("pd", c_void_p), ("addr", c_void_p),
                ("length", c_size_t), ("handle", c_uint32), ("lkey", c_uint32),
                ("rkey", c_uint32)]


# verbs.h's inline ibv_post_send/ibv_post_recv/ibv_poll_cq call these through the context
POST_SEND = CFUNCTYPE(c_int, c_void_p, POINTER(ibv_send_wr), POINTER(POINTER(ibv_send_wr)))
POST_RECV = CFUNCTYPE(c_int, c_void_p, POINTER(ibv_recv_wr), POINTER(POINTER(ibv_recv_wr)))
POLL_CQ = CFUNCTYPE(c_int, c_void_p, c_int, POINTER(ibv_wc))

# struct ibv_context_ops: 37 function pointers; the three the data path calls, by position
_OPS = ["_compat_query_device", "_compat_query_port", "_compat_alloc_pd", "_compat_dealloc_pd",
        "_compat_reg_mr", "_compat_rereg_mr", "_compat_dereg_mr", "alloc_mw", "bind_mw",
        "dealloc_mw", "_compat_create_cq", "poll_cq", "req_notify_cq", "_compat_cq_event",
        "_compat_resize_cq", "_compat_destroy_cq", "_compat_create_srq", "_compat_modify_srq",
        "_compat_query_srq", "_compat_destroy_srq", "post_srq_recv", "_compat_create_qp",
        "_compat_query_qp", "_compat_modify_qp", "_compat_destroy_qp", "post_send",
        "post_recv", "_compat_create_ah", "_compat_destroy_ah", "_compat_attach_mcast",
        "_compat_detach_mcast", "_compat_async_event"]
_TYPED = {"poll_cq": POLL_CQ, "post_send": POST_SEND, "post_recv": POST_RECV}


class ibv_context_ops(Structure):
    _fields_ = [(name, _TYPED.get(name, c_void_p)) for name in _OPS]


class ibv_context(Structure):  # a prefix: a pthread_mutex_t follows num_comp_vectors
    _fields_ = [("device", c_void_p), ("ops", ibv_context_ops), ("cmd_fd", c_int),
                ("async_fd", c_int), ("num_comp_vectors", c_int)]


class ibv_pd(Structure):
    _fields_ = [("context", c_void_p), ("handle", c_uint32)]


class ibv_cq(Structure):  # a prefix: a pthread_mutex_t follows cqe
    _fields_ = [("context", c_void_p), ("channel", c_void_p), ("cq_context", c_void_p),
                ("handle", c_uint32), ("cqe", c_int)]


class ibv_qp(Structure):  # a prefix: a pthread_mutex_t follows qp_type
    _fields_ = [("context", c_void_p), ("qp_context", c_void_p), ("pd", c_void_p),
                ("send_cq", c_void_p), ("recv_cq", c_void_p), ("srq", c_void_p),
                ("handle", c_uint32), ("qp_num", c_uint32), ("state", c_int),
                ("qp_type", c_int)]


# -- the library ----------------------------------------------------------------------------------

# name: (restype, argtypes); the 16 functions JACCL loads from librdma.dylib, then optional ones
FUNCTIONS = {
    "ibv_get_device_list": (POINTER(c_void_p), [POINTER(c_int)]),
    "ibv_free_device_list": (None, [POINTER(c_void_p)]),
    "ibv_get_device_name": (c_char_p, [c_void_p]),
    "ibv_open_device": (c_void_p, [c_void_p]),
    "ibv_close_device": (c_int, [c_void_p]),
    "ibv_alloc_pd": (c_void_p, [c_void_p]),
    "ibv_dealloc_pd": (c_int, [c_void_p]),
    "ibv_create_cq": (c_void_p, [c_void_p, c_int, c_void_p, c_void_p, c_int]),
    "ibv_destroy_cq": (c_int, [c_void_p]),
    "ibv_create_qp": (c_void_p, [c_void_p, POINTER(ibv_qp_init_attr)]),
    "ibv_destroy_qp": (c_int, [c_void_p]),
    "ibv_modify_qp": (c_int, [c_void_p, POINTER(ibv_qp_attr), c_int]),
    "ibv_query_port": (c_int, [c_void_p, c_uint8, c_void_p]),
    "ibv_query_gid": (c_int, [c_void_p, c_uint8, c_int, POINTER(ibv_gid)]),
    "ibv_reg_mr": (c_void_p, [c_void_p, c_void_p, c_size_t, c_int]),
    "ibv_dereg_mr": (c_int, [c_void_p]),
}
OPTIONAL = {"ibv_query_device": (c_int, [c_void_p, c_void_p])}  # not among JACCL's 16


def open_library(names: tuple[str, ...] = LIBRARIES) -> SimpleNamespace:
    """The verbs library's functions, typed; ImportError when no library or function is there
    (so that ``transports.verbs`` can fall through to the next provider)."""
    found = [ctypes.util.find_library("ibverbs")] if sys.platform != "darwin" else []
    last = None
    for name in (*names, *filter(None, found)):
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as e:
            last = e
    else:
        raise ImportError(f"no verbs library: tried {', '.join(names)} ({last})")
    fns = SimpleNamespace(library=lib._name)
    for name, (restype, argtypes) in {**FUNCTIONS, **OPTIONAL}.items():
        fn = getattr(lib, name, None)
        if fn is None:
            if name in OPTIONAL:
                setattr(fns, name, None)
                continue
            raise ImportError(f"{lib._name} lacks {name}")
        fn.restype, fn.argtypes = restype, argtypes
        setattr(fns, name, fn)
    return fns


# -- enums: <infiniband/verbs.h>'s values, pyverbs.enums' names ------------------------------------

WC_STATUSES = ("SUCCESS", "LOC_LEN_ERR", "LOC_QP_OP_ERR", "LOC_EEC_OP_ERR", "LOC_PROT_ERR",
               "WR_FLUSH_ERR", "MW_BIND_ERR", "BAD_RESP_ERR", "LOC_ACCESS_ERR",
               "REM_INV_REQ_ERR", "REM_ACCESS_ERR", "REM_OP_ERR", "RETRY_EXC_ERR",
               "RNR_RETRY_EXC_ERR", "LOC_RDD_VIOL_ERR", "REM_INV_RD_REQ_ERR", "REM_ABORT_ERR",
               "INV_EECN_ERR", "INV_EEC_STATE_ERR", "FATAL_ERR", "RESP_TIMEOUT_ERR",
               "GENERAL_ERR", "TM_ERR", "TM_RNDV_INCOMPLETE")
enums = SimpleNamespace(
    IBV_QPT_RC=2, IBV_QPT_UC=3, IBV_QPT_UD=4,
    IBV_QPS_RESET=0, IBV_QPS_INIT=1, IBV_QPS_RTR=2, IBV_QPS_RTS=3, IBV_QPS_SQD=4,
    IBV_QPS_SQE=5, IBV_QPS_ERR=6, IBV_QPS_UNKNOWN=7,
    IBV_WR_RDMA_WRITE=0, IBV_WR_RDMA_WRITE_WITH_IMM=1, IBV_WR_SEND=2, IBV_WR_SEND_WITH_IMM=3,
    IBV_WR_RDMA_READ=4,
    IBV_SEND_FENCE=1, IBV_SEND_SIGNALED=2, IBV_SEND_SOLICITED=4, IBV_SEND_INLINE=8,
    IBV_ACCESS_LOCAL_WRITE=1, IBV_ACCESS_REMOTE_WRITE=2, IBV_ACCESS_REMOTE_READ=4,
    IBV_ACCESS_REMOTE_ATOMIC=8,
    IBV_WC_SEND=0, IBV_WC_RDMA_WRITE=1, IBV_WC_RDMA_READ=2, IBV_WC_RECV=128,
    IBV_WC_RECV_RDMA_WITH_IMM=129, IBV_WC_GRH=1, IBV_WC_WITH_IMM=2,
    IBV_MTU_256=1, IBV_MTU_512=2, IBV_MTU_1024=3, IBV_MTU_2048=4, IBV_MTU_4096=5,
    IBV_PORT_NOP=0, IBV_PORT_DOWN=1, IBV_PORT_INIT=2, IBV_PORT_ARMED=3, IBV_PORT_ACTIVE=4,
    IBV_PORT_ACTIVE_DEFER=5,
    IBV_LINK_LAYER_UNSPECIFIED=0, IBV_LINK_LAYER_INFINIBAND=1, IBV_LINK_LAYER_ETHERNET=2,
    IBV_GID_TYPE_IB=0, IBV_GID_TYPE_ROCE_V1=1, IBV_GID_TYPE_ROCE_V2=2,
    **{f"IBV_WC_{name}": value for value, name in enumerate(WC_STATUSES)},
    **{f"IBV_QP_{name}": 1 << bit for bit, name in enumerate((
        "STATE", "CUR_STATE", "EN_SQD_ASYNC_NOTIFY", "ACCESS_FLAGS", "PKEY_INDEX", "PORT",
        "QKEY", "AV", "PATH_MTU", "TIMEOUT", "RETRY_CNT", "RNR_RETRY", "RQ_PSN",
        "MAX_QP_RD_ATOMIC", "ALT_PATH", "MIN_RNR_TIMER", "SQ_PSN", "MAX_DEST_RD_ATOMIC",
        "PATH_MIG_STATE", "CAP", "DEST_QPN"))},
)
