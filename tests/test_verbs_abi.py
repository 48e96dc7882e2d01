"""The ctypes verbs provider's view of the C ABI, checked against the real ``verbs.h``.

``transports/verbs_abi.py`` declares the structures and enums that ``transports/verbs_ctypes.py``
passes to the verbs library.  A wrong offset there would not fail loudly: the library would
read or write the wrong bytes.  So a small C program is compiled against rdma-core's
``<infiniband/verbs.h>`` (Debian's libibverbs-dev) and prints the size of every structure
and the offset and size of every field the binding declares, and the value of every enum it
names; they must all match.  Host-side: no RDMA device or guest needed.  (The binding on a real
verbs stack runs in tests/test_rxe.py.)
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from ringcomm.transports import verbs_abi as abi

HEADER = Path("/usr/include/infiniband/verbs.h")
# structures declared only up to a pthread_mutex_t (whose size differs on macOS)
PREFIXES = {"ibv_context", "ibv_cq", "ibv_qp"}
# a ctypes field whose C name differs: anonymous unions are named by a member
C_NAMES = {("ibv_gid", "global_"): "global", ("ibv_send_wr", "_bind_mw_tso"): "bind_mw"}
STRUCTS = ["ibv_gid", "ibv_sge", "ibv_send_wr", "ibv_recv_wr", "ibv_wc", "ibv_qp_cap",
           "ibv_qp_init_attr", "ibv_global_route", "ibv_ah_attr", "ibv_qp_attr",
           "ibv_port_attr", "ibv_device_attr", "ibv_mr", "ibv_context_ops", "ibv_context",
           "ibv_pd", "ibv_cq", "ibv_qp"]


def _c_type(name: str) -> str:
    return f"union {name}" if name == "ibv_gid" else f"struct {name}"


def c_program() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <infiniband/verbs.h>",
             "#define F(s, f) printf(\"%s.%s %zu %zu\\n\", #s, #f, offsetof(s, f), "
             "sizeof(((s *)0)->f))",
             "int main(void) {"]
    for name in STRUCTS:
        cls = getattr(abi, name)
        ct = _c_type(name)
        lines.append(f'printf("{name} %zu\\n", sizeof({ct}));')
        for field, _ in cls._fields_:
            c_field = C_NAMES.get((name, field), field)
            lines.append(f'printf("{name}.{field} %zu %zu\\n", offsetof({ct}, {c_field}), '
                         f'sizeof((({ct} *)0)->{c_field}));')
    # what the data path calls: the operations table inside the context, as verbs.h does
    for op in ("poll_cq", "post_send", "post_recv"):
        lines.append(f'printf("ibv_context.ops.{op} %zu\\n", '
                     f'offsetof(struct ibv_context, ops.{op}));')
    for enum in sorted(vars(abi.enums)):
        lines.append(f'printf("{enum} %lld\\n", (long long){enum});')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict[str, list[int]]:
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is missing (apt install libibverbs-dev; .ci/run does)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("abi")
    (d / "abi.c").write_text(c_program())
    subprocess.run([cc, "-std=gnu11", "-o", str(d / "abi"), str(d / "abi.c")], check=True,
                   capture_output=True, text=True)
    out = subprocess.run([str(d / "abi")], check=True, capture_output=True, text=True).stdout
    return {key: [int(v) for v in rest] for key, *rest in map(str.split, out.splitlines())}


@pytest.mark.timeout(60)
def test_every_structure_size_and_field_offset_matches_verbs_h(c_layout):
    wrong = []
    for name in STRUCTS:
        cls = getattr(abi, name)
        (c_size,) = c_layout[name]
        size = ctypes.sizeof(cls)
        if name in PREFIXES:
            if size > c_size:
                wrong.append(f"{name}: prefix of {size} bytes, longer than C's {c_size}")
        elif size != c_size:
            wrong.append(f"{name}: {size} bytes, C has {c_size}")
        for field, _ in cls._fields_:
            desc = getattr(cls, field)
            if [desc.offset, desc.size] != c_layout[f"{name}.{field}"]:
                wrong.append(f"{name}.{field}: offset, size {desc.offset}, {desc.size}; C has "
                             f"{c_layout[f'{name}.{field}']}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.timeout(60)
def test_posts_and_polls_are_read_from_the_contexts_operations_table(c_layout):
    ops = abi.ibv_context.ops.offset
    for op in ("poll_cq", "post_send", "post_recv"):
        assert [ops + getattr(abi.ibv_context_ops, op).offset] == \
            c_layout[f"ibv_context.ops.{op}"], op


@pytest.mark.timeout(60)
def test_every_enum_value_matches_verbs_h(c_layout):
    wrong = {name: (value, c_layout[name][0]) for name, value in vars(abi.enums).items()
             if c_layout[name][0] != value}
    assert not wrong


@pytest.mark.timeout(60)
def test_a_wrong_offset_would_be_caught(c_layout):
    """The check above can fail: a field moved by 4 bytes is told apart."""
    class shifted(ctypes.Structure):
        _fields_ = [("wr_id", ctypes.c_uint64), ("status", ctypes.c_int),
                    ("pad", ctypes.c_int), ("opcode", ctypes.c_int)]
    assert [shifted.opcode.offset, shifted.opcode.size] != c_layout["ibv_wc.opcode"]


# -- the ctypes provider's namespace, without a device ------------------------------------------

NAMESPACE = ("Context", "PD", "MR", "CQ", "QP", "QPCap", "QPInitAttr", "QPAttr", "AHAttr",
             "GlobalRoute", "GID", "SGE", "SendWR", "RecvWR", "get_device_list", "enums",
             "PyverbsError", "PyverbsRDMAError", "EMULATED")


@pytest.fixture(scope="module")
def vc():
    try:
        from ringcomm.transports import verbs_ctypes
    except ImportError as e:
        pytest.skip(f"no verbs library to load here ({e}); apt install libibverbs1")
    return verbs_ctypes


@pytest.mark.timeout(60)
def test_the_ctypes_provider_offers_the_pyverbs_namespace(vc):
    assert [n for n in NAMESPACE if not hasattr(vc, n)] == []
    assert vc.EMULATED is False
    assert issubclass(vc.PyverbsRDMAError, vc.PyverbsError)
    err = vc.PyverbsRDMAError("Failed to register a MR", 12)
    assert err.error_code == 12 and "Errno: 12" in str(err)  # pyverbs' wording
    defaults = vc.QPAttr()  # pyverbs' QPAttr() defaults (tests/test_rdma.py's QPATTR_DEFAULTS)
    assert (defaults.qp_state, defaults.cur_qp_state, defaults.port_num, defaults.path_mtu,
            defaults.rnr_retry, defaults.timeout) == (1, 0, 1, 3, 0, 0)
    for cls in ("QPCap", "QPInitAttr", "QPAttr", "AHAttr", "GlobalRoute", "RecvWR"):
        with pytest.raises(TypeError):
            getattr(vc, cls)(not_a_pyverbs_keyword=1)


@pytest.mark.timeout(60)
def test_work_requests_and_attributes_land_in_the_c_structures(vc):
    e = vc.enums
    sge = vc.SGE(0x10000, 4096, 0x1234)
    wr = vc.SendWR(wr_id=7, num_sge=1, sg=[sge], opcode=e.IBV_WR_SEND,
                   send_flags=e.IBV_SEND_SIGNALED)
    wr.wr_id = 9  # pyverbs lets fields be set after construction
    c = wr._c
    assert (c.wr_id, c.num_sge, c.opcode, c.send_flags) == (9, 1, e.IBV_WR_SEND, 2)
    assert (c.sg_list[0].addr, c.sg_list[0].length, c.sg_list[0].lkey) == (0x10000, 4096, 0x1234)
    attr = vc.QPAttr(qp_state=e.IBV_QPS_RTR)
    attr.dest_qp_num, attr.rq_psn = 0x1234, 0xABCDEF
    gid = "0000:0000:0000:0000:0000:ffff:0a00:0001"  # IPv4-mapped, as Thunderbolt's
    attr.ah_attr = vc.AHAttr(port_num=1, is_global=1,
                             gr=vc.GlobalRoute(dgid=vc.GID(gid), sgid_index=1, hop_limit=1))
    c = attr._to_c()
    assert (c.qp_state, c.dest_qp_num, c.rq_psn, c.ah_attr.is_global,
            c.ah_attr.grh.sgid_index) == (e.IBV_QPS_RTR, 0x1234, 0xABCDEF, 1, 1)
    assert bytes(c.ah_attr.grh.dgid.raw) == bytes.fromhex(gid.replace(":", ""))


@pytest.mark.timeout(60)
def test_unreliable_connected_moves_set_only_what_uc_takes(vc):
    """Apple offers UC only: RTR and RTS without the RDMA-read, retry and RNR attributes
    (a UC queue pair refuses them with EINVAL)."""
    e, mask = vc.enums, vc.qp_attr_mask
    rc_only = (e.IBV_QP_MAX_DEST_RD_ATOMIC | e.IBV_QP_MIN_RNR_TIMER | e.IBV_QP_TIMEOUT
               | e.IBV_QP_RETRY_CNT | e.IBV_QP_RNR_RETRY | e.IBV_QP_MAX_QP_RD_ATOMIC)
    for state in (e.IBV_QPS_INIT, e.IBV_QPS_RTR, e.IBV_QPS_RTS):
        assert mask(e.IBV_QPT_UC, state) & rc_only == 0
    assert mask(e.IBV_QPT_RC, e.IBV_QPS_RTR) & e.IBV_QP_MAX_DEST_RD_ATOMIC
    assert mask(e.IBV_QPT_RC, e.IBV_QPS_RTS) & e.IBV_QP_RETRY_CNT
