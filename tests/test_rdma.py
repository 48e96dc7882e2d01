"""The RDMA transport's own paths, mostly over the EMULATED verbs provider.

``transports/emulated_verbs.py`` is an emulation of verbs over Unix sockets: every test here
whose name says "emulated" proves the emulation's or the transport's logic, never anything
about RDMA hardware.  (The collective suite over the emulation is in test_collectives.py.)

1. The emulation itself, two queue pairs in this process: the queue-pair state machine,
   receiver-not-ready, remote access and length errors, flushes, in-order delivery.
2. The transport over the emulation, ranks as processes: long messages that recycle the slots
   many times, flow control against a late receiver, an error completion, a dead rank, wrong
   device files, a missing pyverbs, the launcher.
3. The verbs objects ``transports/rdma.py`` builds, constructed the same way on real pyverbs
   (skipped when it does not import) and on the emulation, so the emulation's signatures stay
   those of pyverbs.
4. A 2-rank all_sum on real RDMA whenever pyverbs imports and lists a device.
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ringcomm.launch import rdma_env
from ringcomm.ports import free_ports
from tests.procs import ROOT, env, launch, start_ranks
from ringcomm.transports import emulated_verbs, emulated_wire
from ringcomm.transports.rdma import SLOT_BYTES, SLOTS

EV = emulated_verbs
E = EV.enums

# -- 1. the emulation: two queue pairs in this process ---------------------------------------


def _own_sockets() -> list[str]:
    """Queue-pair sockets of this process left in the emulation's directory."""
    mine = f"{os.getpid():08x}"
    try:
        return [n for n in os.listdir(emulated_wire._SOCKET_DIR) if n.startswith(mine)]
    except FileNotFoundError:
        return []


class Pair:
    """Two emulated RC queue pairs, ``a`` on emulated0 and ``b`` on emulated1, each with its
    own context, protection domain, completion queue and one registered region."""

    def __init__(self, mr_bytes: int = 1 << 16, b_access: int | None = None) -> None:
        self.a = self._endpoint("emulated0", mr_bytes, None)
        self.b = self._endpoint("emulated1", mr_bytes, b_access)

    @staticmethod
    def _endpoint(device: str, mr_bytes: int, access: int | None) -> SimpleNamespace:
        ctx = EV.Context(name=device)
        pd = EV.PD(ctx)
        cq = EV.CQ(ctx, 1024)
        access = E.IBV_ACCESS_LOCAL_WRITE | E.IBV_ACCESS_REMOTE_WRITE if access is None \
            else access
        mr = EV.MR(pd, mr_bytes, access)
        cap = EV.QPCap(max_send_wr=64, max_recv_wr=64, max_send_sge=1, max_recv_sge=1)
        qp = EV.QP(pd, EV.QPInitAttr(qp_type=E.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap,
                                     sq_sig_all=0))
        return SimpleNamespace(ctx=ctx, pd=pd, cq=cq, mr=mr, qp=qp, wcs=[])

    def to_init(self) -> None:
        for end in (self.a, self.b):
            attr = EV.QPAttr(qp_state=E.IBV_QPS_INIT, port_num=1)
            attr.pkey_index = 0
            attr.qp_access_flags = E.IBV_ACCESS_LOCAL_WRITE | E.IBV_ACCESS_REMOTE_WRITE
            end.qp.to_init(attr)

    def to_rtr(self) -> None:
        for end, other in ((self.a, self.b), (self.b, self.a)):
            attr = EV.QPAttr(qp_state=E.IBV_QPS_RTR, port_num=1)
            attr.path_mtu = E.IBV_MTU_4096
            attr.dest_qp_num = other.qp.qp_num
            attr.rq_psn = 100 if other is self.a else 200
            attr.max_dest_rd_atomic, attr.min_rnr_timer = 1, 12
            attr.ah_attr = EV.AHAttr(port_num=1, is_global=1, dlid=0, sl=0, gr=EV.GlobalRoute(
                dgid=other.ctx.query_gid(1, 0), sgid_index=0, hop_limit=1))
            end.qp.to_rtr(attr)

    def to_rts(self, rnr_retry: int = 0) -> None:
        for end in (self.a, self.b):
            attr = EV.QPAttr(qp_state=E.IBV_QPS_RTS, port_num=1)
            attr.sq_psn = 100 if end is self.a else 200
            attr.timeout, attr.retry_cnt, attr.rnr_retry, attr.max_rd_atomic = 14, 7, rnr_retry, 1
            end.qp.to_rts(attr)

    def connect(self, rnr_retry: int = 0) -> "Pair":
        self.to_init()
        self.to_rtr()
        self.to_rts(rnr_retry)
        return self

    def poll(self, until, seconds: float = 5.0) -> None:
        """Poll both completion queues (which progresses both queue pairs) until ``until()``."""
        deadline = time.monotonic() + seconds
        while not until():
            assert time.monotonic() < deadline, (
                f"no completion in {seconds} s: a={self.describe(self.a.wcs)} "
                f"b={self.describe(self.b.wcs)}")
            for end in (self.a, self.b):
                end.wcs.extend(end.cq.poll(16)[1])
            time.sleep(0.0005)

    def settle(self, seconds: float = 0.2) -> None:
        """Poll both sides for a while (to show that something does NOT complete)."""
        end_at = time.monotonic() + seconds
        self.poll(lambda: time.monotonic() >= end_at, seconds + 1)

    @staticmethod
    def describe(wcs) -> list[tuple[int, str]]:
        names = {v: k for k, v in vars(E).items() if k.startswith("IBV_WC_")
                 and not k.startswith("IBV_WC_RECV") and k not in ("IBV_WC_SEND",
                                                                   "IBV_WC_RDMA_WRITE",
                                                                   "IBV_WC_WITH_IMM")}
        return [(wc.wr_id, names.get(wc.status, str(wc.status))) for wc in wcs]

    def close(self) -> None:
        for end in (self.a, self.b):
            for obj in (end.qp, end.mr, end.cq, end.pd, end.ctx):
                obj.close()


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()
    assert _own_sockets() == [], "queue-pair sockets left behind"


def recv_wr(end, wr_id: int, offset: int, length: int):
    return EV.RecvWR(wr_id=wr_id, num_sge=1,
                     sg=[EV.SGE(end.mr.buf + offset, length, end.mr.lkey)])


def send_wr(end, wr_id: int, offset: int, length: int, opcode: int = E.IBV_WR_SEND):
    return EV.SendWR(wr_id=wr_id, num_sge=1, sg=[EV.SGE(end.mr.buf + offset, length,
                                                         end.mr.lkey)],
                     opcode=opcode, send_flags=E.IBV_SEND_SIGNALED)


@pytest.mark.timeout(30)
def test_queue_pair_state_machine_emulated(pair):
    a, b = pair.a, pair.b
    assert a.qp.qp_state == E.IBV_QPS_RESET
    with pytest.raises(EV.PyverbsRDMAError, match="not in RTS"):
        a.qp.post_send(send_wr(a, 1, 0, 8))                      # RESET
    with pytest.raises(EV.PyverbsRDMAError, match="RESET"):
        a.qp.post_recv(recv_wr(a, 1, 0, 8))
    with pytest.raises(EV.PyverbsRDMAError, match="from 0 to 2"):  # RESET -> RTR skips INIT
        a.qp.to_rtr(EV.QPAttr(qp_state=E.IBV_QPS_RTR))
    pair.to_init()
    assert (a.qp.qp_state, b.qp.qp_state) == (E.IBV_QPS_INIT, E.IBV_QPS_INIT)
    a.qp.post_recv(recv_wr(a, 7, 0, 8))                          # receives may go in INIT
    with pytest.raises(EV.PyverbsRDMAError, match="not in RTS"):
        a.qp.post_send(send_wr(a, 1, 0, 8))
    with pytest.raises(EV.PyverbsRDMAError, match="from 1 to 3"):  # INIT -> RTS skips RTR
        a.qp.to_rts(EV.QPAttr(qp_state=E.IBV_QPS_RTS))
    pair.to_rtr()
    assert a.qp.qp_state == E.IBV_QPS_RTR
    with pytest.raises(EV.PyverbsRDMAError, match="not in RTS"):  # RTR only receives
        a.qp.post_send(send_wr(a, 1, 0, 8))
    pair.to_rts()
    assert (a.qp.qp_state, b.qp.qp_state) == (E.IBV_QPS_RTS, E.IBV_QPS_RTS)
    # connected: a send from b lands in the receive a posted back in INIT
    b.mr.write(b"12345678", 8, 0)
    b.qp.post_send(send_wr(b, 2, 0, 8))
    pair.poll(lambda: a.wcs and b.wcs)
    assert [(w.wr_id, w.status, w.byte_len) for w in a.wcs] == [(7, E.IBV_WC_SUCCESS, 8)]
    assert a.mr.read(8, 0) == b"12345678"
    assert [(w.wr_id, w.status) for w in b.wcs] == [(2, E.IBV_WC_SUCCESS)]
    # ERR from any state, then RESET; RESET -> RTS is refused
    a.qp.modify(EV.QPAttr(qp_state=E.IBV_QPS_ERR), 0)
    assert a.qp.qp_state == E.IBV_QPS_ERR
    a.qp.modify(EV.QPAttr(qp_state=E.IBV_QPS_RESET), 0)
    assert a.qp.qp_state == E.IBV_QPS_RESET
    with pytest.raises(EV.PyverbsRDMAError):
        a.qp.to_rts(EV.QPAttr(qp_state=E.IBV_QPS_RTS))


@pytest.mark.timeout(30)
def test_send_without_a_receive_and_rnr_retry_0_is_rnr_retry_exc_err_emulated(pair):
    a, b = pair.connect(rnr_retry=0).a, pair.b
    a.qp.post_send(send_wr(a, 1, 0, 64))
    a.qp.post_send(send_wr(a, 2, 64, 64))  # behind the refused one: flushed
    pair.poll(lambda: len(a.wcs) == 2)
    assert pair.describe(a.wcs) == [(1, "IBV_WC_RNR_RETRY_EXC_ERR"), (2, "IBV_WC_WR_FLUSH_ERR")]
    assert a.qp.qp_state == E.IBV_QPS_ERR
    # the responder is not at fault: no completion, still ready to send and receive
    assert b.wcs == [] and b.qp.qp_state == E.IBV_QPS_RTS
    a.qp.post_send(send_wr(a, 3, 0, 8))    # a queue pair in ERR flushes what is posted
    a.qp.post_recv(recv_wr(a, 4, 0, 8))
    pair.poll(lambda: len(a.wcs) == 4)
    assert pair.describe(a.wcs[2:]) == [(3, "IBV_WC_WR_FLUSH_ERR"), (4, "IBV_WC_WR_FLUSH_ERR")]


@pytest.mark.timeout(30)
def test_rnr_retry_7_waits_for_a_late_receive_emulated(pair):
    a, b = pair.connect(rnr_retry=7).a, pair.b      # 7: retry for ever
    a.mr.write(b"late", 4, 0)
    a.qp.post_send(send_wr(a, 1, 0, 4))
    pair.settle(0.2)
    assert a.wcs == [] and b.wcs == []             # refused, retried, not failed
    b.qp.post_recv(recv_wr(b, 9, 0, 64))
    pair.poll(lambda: a.wcs and b.wcs)
    assert pair.describe(a.wcs) == [(1, "IBV_WC_SUCCESS")]
    assert [(w.wr_id, w.status, w.byte_len) for w in b.wcs] == [(9, E.IBV_WC_SUCCESS, 4)]
    assert b.mr.read(4, 0) == b"late"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fault", ["bad rkey", "past the region", "no remote write"])
def test_rdma_write_refused_by_the_target_is_rem_access_err_emulated(fault):
    access = E.IBV_ACCESS_LOCAL_WRITE if fault == "no remote write" else None
    p = Pair(b_access=access)
    try:
        a, b = p.connect().a, p.b
        b.qp.post_recv(recv_wr(b, 5, 0, 64))
        a.mr.write(b"\xff" * 16, 16, 0)
        wr = send_wr(a, 1, 0, 16, opcode=E.IBV_WR_RDMA_WRITE)
        addr = b.mr.buf + (b.mr.length - 8 if fault == "past the region" else 128)
        wr.set_wr_rdma(b.mr.rkey + 1 if fault == "bad rkey" else b.mr.rkey, addr)
        a.qp.post_send(wr)
        p.poll(lambda: a.wcs and b.wcs)
        assert p.describe(a.wcs) == [(1, "IBV_WC_REM_ACCESS_ERR")]
        assert a.qp.qp_state == E.IBV_QPS_ERR
        assert b.mr.read(b.mr.length, 0) == bytes(b.mr.length)   # nothing written
        # a remote access violation is a responder error too (IB spec, class C; rxe and
        # mlx5 alike): the target queue pair enters ERR and flushes its receives
        assert p.describe(b.wcs) == [(5, "IBV_WC_WR_FLUSH_ERR")]
        assert b.qp.qp_state == E.IBV_QPS_ERR
    finally:
        p.close()
    assert _own_sockets() == []


@pytest.mark.timeout(30)
def test_rdma_write_lands_in_order_before_a_later_send_emulated(pair):
    a, b = pair.connect().a, pair.b
    b.qp.post_recv(recv_wr(b, 5, 0, 64))
    a.mr.write(b"written", 7, 0)
    a.mr.write(b"sent", 4, 64)
    wr = send_wr(a, 1, 0, 7, opcode=E.IBV_WR_RDMA_WRITE)
    wr.set_wr_rdma(b.mr.rkey, b.mr.buf + 1000)
    a.qp.post_send(wr)
    a.qp.post_send(send_wr(a, 2, 64, 4))
    pair.poll(lambda: len(a.wcs) == 2 and b.wcs)
    assert pair.describe(a.wcs) == [(1, "IBV_WC_SUCCESS"), (2, "IBV_WC_SUCCESS")]
    assert [(w.wr_id, w.byte_len) for w in b.wcs] == [(5, 4)]   # a write completes nothing
    assert b.mr.read(7, 1000) == b"written" and b.mr.read(4, 0) == b"sent"


@pytest.mark.timeout(30)
def test_message_longer_than_the_receive_is_loc_len_err_emulated(pair):
    # ibv_poll_cq(3): a receive too small for the incoming message completes with
    # IBV_WC_LOC_LEN_ERR; the sender's request gets the NAK "invalid request",
    # IBV_WC_REM_INV_REQ_ERR; both queue pairs enter ERR
    a, b = pair.connect().a, pair.b
    b.qp.post_recv(recv_wr(b, 5, 0, 64))
    b.qp.post_recv(recv_wr(b, 6, 64, 64))
    a.qp.post_send(send_wr(a, 1, 0, 65))
    pair.poll(lambda: a.wcs and len(b.wcs) == 2)
    assert pair.describe(b.wcs) == [(5, "IBV_WC_LOC_LEN_ERR"), (6, "IBV_WC_WR_FLUSH_ERR")]
    assert pair.describe(a.wcs) == [(1, "IBV_WC_REM_INV_REQ_ERR")]
    assert a.qp.qp_state == b.qp.qp_state == E.IBV_QPS_ERR


@pytest.mark.timeout(30)
def test_err_flushes_every_outstanding_request_in_order_emulated(pair):
    a, b = pair.connect(rnr_retry=7).a, pair.b   # b posts no receive: a's sends stay queued
    for i in range(3):
        a.qp.post_recv(recv_wr(a, 10 + i, 64 * i, 64))
    for i in range(4):
        a.qp.post_send(send_wr(a, 20 + i, 64 * i, 64))
    pair.settle(0.1)
    assert a.wcs == []
    a.qp.modify(EV.QPAttr(qp_state=E.IBV_QPS_ERR), 0)
    pair.poll(lambda: len(a.wcs) == 7)
    assert sorted(pair.describe(a.wcs)) == [(i, "IBV_WC_WR_FLUSH_ERR")
                                            for i in (10, 11, 12, 20, 21, 22, 23)]
    # each queue flushes in the order it was posted
    assert [w.wr_id for w in a.wcs if w.wr_id >= 20] == [20, 21, 22, 23]
    assert [w.wr_id for w in a.wcs if w.wr_id < 20] == [10, 11, 12]
    assert all(w.opcode == E.IBV_WC_RECV for w in a.wcs if w.wr_id < 20)
    assert b.wcs == []          # b had nothing posted, and nothing reached it


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["ERR", "destroyed"])
def test_sends_to_a_failed_queue_pair_end_in_retry_exc_err_emulated(pair, how):
    # A queue pair in ERR answers nothing: the requester's retries run out after
    # 4.096 us * 2^timeout * (retry_cnt + 1) = 0.54 s (timeout 14, retry_cnt 7), then
    # IBV_WC_RETRY_EXC_ERR and it enters ERR itself.  A destroyed one (its socket closes,
    # as when its process dies) fails the requester at once.
    a, b = pair.connect().a, pair.b
    b.qp.post_recv(recv_wr(b, 5, 0, 64))
    if how == "ERR":
        b.qp.modify(EV.QPAttr(qp_state=E.IBV_QPS_ERR), 0)
    else:
        b.qp.close()
    start = time.monotonic()
    a.qp.post_send(send_wr(a, 1, 0, 8))
    a.qp.post_send(send_wr(a, 2, 8, 8))
    pair.poll(lambda: len(a.wcs) == 2)
    took = time.monotonic() - start
    assert pair.describe(a.wcs) == [(1, "IBV_WC_RETRY_EXC_ERR"), (2, "IBV_WC_WR_FLUSH_ERR")]
    assert a.qp.qp_state == E.IBV_QPS_ERR
    if how == "ERR":
        assert pair.describe(b.wcs) == [(5, "IBV_WC_WR_FLUSH_ERR")]
        assert 0.5 < took < 3, took
    else:
        assert b.wcs == [] and took < 0.5, took


@pytest.mark.timeout(30)
def test_entering_err_while_a_message_arrives_drops_it_emulated():
    p = Pair(mr_bytes=4 << 20).connect()
    try:
        a, b = p.a, p.b
        a.qp.post_recv(recv_wr(a, 5, 0, 4 << 20))
        b.qp.post_send(send_wr(b, 1, 0, 4 << 20))
        # post_send returns once the whole frame is in the kernel's socket buffer, reading
        # for a (same process, progressed first) meanwhile: a is part-way through it
        assert a.qp._in is not None, "a is not in the middle of the message"
        a.qp.modify(EV.QPAttr(qp_state=E.IBV_QPS_ERR), 0)
        p.poll(lambda: a.wcs and b.wcs)
        assert p.describe(b.wcs) == [(1, "IBV_WC_RETRY_EXC_ERR")]
        assert p.describe(a.wcs) == [(5, "IBV_WC_WR_FLUSH_ERR")]
    finally:
        p.close()
    assert _own_sockets() == []


# A process that makes one emulated queue pair (whose socket it prints), then waits for stdin.
QUEUE_PAIR = """
import os, sys
from ringcomm.transports import emulated_verbs as EV, emulated_wire
from ringcomm.transports.emulated_base import e as E
ctx = EV.Context(name="emulated0")
pd, cq = EV.PD(ctx), EV.CQ(ctx, 16)
qp = EV.QP(pd, EV.QPInitAttr(qp_type=E.IBV_QPT_RC, scq=cq, rcq=cq, cap=EV.QPCap()))
print(os.path.basename(qp._path), flush=True)
sys.stdin.readline()
for obj in (qp, cq, pd, ctx):
    obj.close()
"""


@pytest.mark.timeout(60)
def test_sockets_of_a_killed_process_are_swept_by_the_next_emulated():
    """A SIGKILLed process cannot remove its queue pairs' sockets; the next process that makes
    a queue pair removes them, and keeps those of a process that is still running."""
    def start() -> tuple[subprocess.Popen, str]:
        p = subprocess.Popen([sys.executable, "-c", QUEUE_PAIR], env=env(), text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return p, os.path.join(emulated_wire._SOCKET_DIR, p.stdout.readline().strip())

    running, running_socket = start()
    try:
        killed, killed_socket = start()
        killed.kill()
        killed.wait()
        assert os.path.exists(killed_socket), "the killed process's socket should be left"
        sweeper, sweeper_socket = start()
        sweeper.communicate("\n", timeout=30)
        assert sweeper.returncode == 0
        assert not os.path.exists(killed_socket), "the killed process's socket is still there"
        assert os.path.exists(running_socket), "a running process's socket was removed"
        assert not os.path.exists(sweeper_socket)
    finally:
        running.communicate("\n", timeout=30)
    assert not os.path.exists(running_socket)


@pytest.mark.timeout(60)
def test_in_order_delivery_of_many_messages_emulated():
    rng = np.random.default_rng(7)
    p = Pair(mr_bytes=64 * 8192).connect()
    try:
        a, b = p.a, p.b
        lengths = rng.integers(0, 8192, 500)
        payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
        received: list[tuple[int, int, bytes]] = []
        next_send = next_recv = 0
        for slot in range(64):                      # 64 receive slots, reposted as used
            b.qp.post_recv(recv_wr(b, next_recv, slot * 8192, 8192))
            next_recv += 1
        in_flight = 0
        deadline = time.monotonic() + 30
        while len(received) < len(payloads):
            assert time.monotonic() < deadline, f"{len(received)} of {len(payloads)} arrived"
            while next_send < len(payloads) and in_flight < 32:
                slot = next_send % 32
                a.mr.write(payloads[next_send], len(payloads[next_send]), slot * 8192)
                a.qp.post_send(send_wr(a, next_send, slot * 8192, len(payloads[next_send])))
                next_send += 1
                in_flight += 1
            for wc in a.cq.poll(16)[1]:
                assert wc.status == E.IBV_WC_SUCCESS, wc.status
                in_flight -= 1
            for wc in b.cq.poll(16)[1]:
                assert wc.status == E.IBV_WC_SUCCESS, wc.status
                slot = wc.wr_id % 64
                received.append((wc.wr_id, wc.byte_len, b.mr.read(wc.byte_len, slot * 8192)))
                b.qp.post_recv(recv_wr(b, next_recv, slot * 8192, 8192))
                next_recv += 1
        assert [r[0] for r in received] == list(range(len(payloads)))   # receive order
        assert [r[1] for r in received] == [len(x) for x in payloads]
        assert [r[2] for r in received] == payloads                      # send order
    finally:
        p.close()
    assert _own_sockets() == []


# -- 2. the transport over the emulation, ranks as processes ---------------------------------

PRELUDE = """
import json, os, sys, time
import numpy as np
import ringcomm
from ringcomm.transports import Side
from ringcomm.transports.rdma import SLOTS, SLOT_BYTES

def report(**kw):
    print("RESULT", json.dumps(kw), flush=True)

def failure(e):
    return {"type": type(e).__name__, "message": str(e), "at": time.time(),
            "typed": isinstance(e, ringcomm.RingcommError)}

g = ringcomm.init(strict=True, timeout=float(os.environ["RANK_TIMEOUT"]))
r, n, t = g.rank(), g.size(), g._transport
assert type(t).__name__ == "RdmaTransport" and t.emulated, t

def on_wait(call, action):
    # run action() inside this rank's wait() number ``call``: mid-operation
    real, calls = t.wait, [0]
    def wait(deadline):
        calls[0] += 1
        if calls[0] == call:
            action()
        return real(deadline)
    t.wait = wait
"""


@contextlib.contextmanager
def emulated_ranks(tmp_path: Path, size: int, script: str, connections: int = 1,
                   rank_timeout: float = 60, **extra: str):
    """``size`` rank processes running PRELUDE + ``script`` on the RDMA transport over the
    verbs emulation (device file and coordinator as ``ringcomm-launch --backend rdma``
    writes them); whatever still runs at the end is killed, and no socket may be left."""
    config = rdma_env(str(tmp_path), size, connections, "emulated")
    before = _sockets()  # a killed rank of an earlier test leaves its own, and pids come again
    procs = start_ranks(tmp_path, size, PRELUDE + script, connections,
                        RANK_TIMEOUT=str(rank_timeout), **config, **extra)
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        left = [name for name in _sockets() - before for p in procs
                if name.startswith(f"{p.pid:08x}")]
        assert not left, f"queue-pair sockets left behind: {left}"


def _sockets() -> set[str]:
    folder = emulated_wire._SOCKET_DIR
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def results(procs, timeout: float = 60, expect_exit: int | None = 0) -> list[dict]:
    """The last RESULT line of every rank (the rank's stderr in the assertion if none)."""
    out = []
    for rank, p in enumerate(procs):
        stdout, stderr = p.communicate(timeout=timeout)
        lines = [line[7:] for line in stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, f"rank {rank} reported nothing (exit {p.returncode}):\n{stdout}\n{stderr}"
        if expect_exit is not None:
            assert p.returncode == expect_exit, f"rank {rank} exit {p.returncode}:\n{stderr}"
        out.append(json.loads(lines[-1]))
    return out


LONG = """
count = 3 * (1 << 20) + 12345            # int64: 24 MiB + 96 KiB, 12 x SLOTS * SLOT_BYTES
x = np.arange(count, dtype=np.int64) * (r + 1) + r
y = ringcomm.all_sum(x)
want = np.arange(count, dtype=np.int64) * (n * (n + 1) // 2) + n * (n - 1) // 2
wrong_sum = int(np.count_nonzero(y != want))

nbytes = (20 << 20) + 7                   # 20 MiB + 7 B, not a multiple of a slot
def pattern(rank):
    return np.random.default_rng(rank).integers(0, 256, nbytes, dtype=np.uint8)
left, right = (r - 1) % n, (r + 1) % n
if r % 2 == 0:
    ringcomm.send(pattern(r), right)
    got = ringcomm.recv((nbytes,), np.uint8, left)
else:
    got = ringcomm.recv((nbytes,), np.uint8, left)
    ringcomm.send(pattern(r), right)
wrong_p2p = int(np.count_nonzero(got != pattern(left)))
ringcomm.barrier()
report(wrong_sum=wrong_sum, wrong_p2p=wrong_p2p,
       sent=sum(link.messages_sent for link in t._by_number),
       failures=[link.failure for link in t._by_number])
g.close()
"""


@pytest.mark.timeout(120)
def test_long_messages_recycle_the_slots_many_times_emulated(tmp_path):
    with emulated_ranks(tmp_path, 3, LONG) as procs:
        got = results(procs, timeout=100)
    # each rank sends 2(n-1)/n of the all_sum's 24 MiB, plus 20 MiB to its neighbour
    messages = (2 * 2 / 3 * 24 * (1 << 20) + 20 * (1 << 20)) / SLOT_BYTES
    for rank, res in enumerate(got):
        assert res["wrong_sum"] == 0 and res["wrong_p2p"] == 0, (rank, res)
        assert res["failures"] == [None, None], (rank, res)
        assert res["sent"] >= 0.95 * messages > 20 * SLOTS, (rank, res)  # slots reused >20x


FLOW = """
rnr = []
from ringcomm.transports import emulated_verbs as ev
real_on_rnr = ev.QP._on_rnr
def on_rnr(self, psn):          # count receiver-not-ready NAKs reaching this rank
    rnr.append(psn)
    real_on_rnr(self, psn)
ev.QP._on_rnr = on_rnr
if os.environ.get("NO_CREDITS") and r == 0:
    real_push = type(t)._push
    def push(self, link):       # ignore the peer's credits: send into receives never posted
        link.credit_in.value = 1 << 40
        return real_push(self, link)
    type(t)._push = push
sizes = [1 + (i * 7919) % 70000 for i in range(300)]    # 300 messages of 1 B to 68 KiB
try:
    if r == 0:
        start = time.monotonic()
        for i, size in enumerate(sizes):
            ringcomm.send(np.full(size, i % 251, np.uint8), 1)
        sent_in = time.monotonic() - start
        ringcomm.barrier()
        report(seconds=sent_in, rnr=len(rnr))
    else:
        time.sleep(1.5)         # every receive is posted late
        if os.environ.get("NO_CREDITS"):
            # the emulated adapter moves only when polled: let it land what came (every
            # receive slot is used then), take nothing, and nap while the sender, ignoring
            # credits, sends more; the adapter then finds no receive for them
            t._poll()
            time.sleep(0.5)
            t._poll()
        bad = [i for i, size in enumerate(sizes)
               if not np.array_equal(ringcomm.recv((size,), np.uint8, 0),
                                     np.full(size, i % 251, np.uint8))]
        ringcomm.barrier()
        report(bad=bad, rnr=len(rnr))
except ringcomm.RingcommError as e:
    report(**failure(e))
"""


@pytest.mark.timeout(60)
def test_many_messages_to_a_late_receiver_wait_for_credits_emulated(tmp_path):
    with emulated_ranks(tmp_path, 2, FLOW) as procs:
        sender, receiver = results(procs)
    assert receiver == {"bad": [], "rnr": 0}, receiver
    assert sender["rnr"] == 0, sender
    # the sender could not run ahead of the receiver's 1.5 s nap: credits held it back
    assert sender["seconds"] > 1.2, sender


@pytest.mark.timeout(60)
def test_without_credits_a_late_receiver_is_a_receiver_not_ready_error_emulated(tmp_path):
    # the control for the test above: with the credit check defeated, a sender runs ahead
    # of a receiver that posts its receives late, and rnr_retry = 0 makes that an error
    # naming the peer
    with emulated_ranks(tmp_path, 2, FLOW, NO_CREDITS="1") as procs:
        sender, receiver = results(procs)
    assert sender["type"] == "CommError", sender
    assert "IBV_WC_RNR_RETRY_EXC_ERR" in sender["message"], sender
    assert "[peer rank 1" in sender["message"] and sender["message"].startswith("rank 0"), sender
    # the receiver hears the root cause from rank 0 (its own credit writes to rank 0's
    # failed queue pair would time out only after the retries, 0.5 s later)
    assert receiver["type"] == "PeerLostError", receiver
    assert receiver["message"].startswith("rank 1: recv: rank 0 failed first; rank 0 reported: "
                                          "send on "), receiver
    assert "IBV_WC_RNR_RETRY_EXC_ERR" in receiver["message"], receiver


FAULT = """
how, culprit = os.environ["HOW"], int(os.environ["CULPRIT"])
x = np.ones(4 << 20, np.float32)          # 16 MiB: dozens of waits per all_sum
ringcomm.all_sum(x)
print("ready", flush=True)

def fault():
    report(injected=time.time())
    if how == "exit":
        os._exit(1)                        # dies mid-collective, no goodbye
    qp = t._links[Side.RIGHT][0].qp
    if how == "ERR":
        qp.modify(t._api.QPAttr(qp_state=t._api.enums.IBV_QPS_ERR), 0)
    else:
        qp.close()

if r == culprit:
    on_wait(40, fault)
try:
    for _ in range(20):
        y = ringcomm.all_sum(x)
    report(finished=True)
except Exception as e:
    report(**failure(e))
try:
    ringcomm.all_sum(x)
except ringcomm.GroupBrokenError:
    print("then broken", flush=True)
"""


def run_fault(tmp_path, size: int, how: str, culprit: int) -> list[dict]:
    with emulated_ranks(tmp_path, size, FAULT, HOW=how, CULPRIT=str(culprit)) as procs:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        got = []
        for rank, p in enumerate(procs):
            out, err = p.communicate(timeout=30)
            rows = [json.loads(line[7:]) for line in out.splitlines()
                    if line.startswith("RESULT ")]
            assert rows, (rank, out, err)
            if rank != culprit or how != "exit":
                assert "then broken" in out, (rank, out, err)
            got.append({k: v for row in rows for k, v in row.items()})
    return got


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["ERR", "destroyed"])
def test_a_failed_queue_pair_mid_collective_is_a_typed_error_on_every_rank_emulated(
        tmp_path, how):
    # rank 1 moves its queue pair to rank 2 to ERR (or destroys it) inside an all_sum
    got = run_fault(tmp_path, 3, how, culprit=1)
    injected = got[1]["injected"]
    for rank, res in enumerate(got):
        assert "finished" not in res, (rank, res)
        assert res["typed"] and res["type"] in ("PeerLostError", "CommError"), (rank, res)
        assert res["at"] - injected < 5, (rank, res)           # no waiting for a deadline
        assert res["message"].startswith(f"rank {rank}: all_sum: "), res
        # the failed completion or post, seen on this rank or relayed, and its queue pair
        assert re.search(r"(left|right)\[0\] on emulated0 (completed with IBV_WC_\w+_ERR"
                         r"|failed: Failed to post (send|recv) \(the QP was destroyed\))",
                         res["message"]), (rank, res)
    # the others learn it from rank 1, or see their own queue pair to rank 1 fail; none is
    # told that it is the rank that failed
    for rank in (0, 2):
        assert "rank 1" in got[rank]["message"], got[rank]
        assert f"[peer rank {rank}]" not in got[rank]["message"], got[rank]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("victim", [0, 2])
def test_a_rank_that_dies_mid_collective_is_named_by_every_other_rank_emulated(
        tmp_path, victim):
    # 4 ranks: the victim's two neighbours and one rank that is not its neighbour;
    # rank 0 is also the side channel's coordinator
    got = run_fault(tmp_path, 4, "exit", culprit=victim)
    died = got[victim]["injected"]
    for rank, res in enumerate(got):
        if rank == victim:
            continue
        assert res["type"] == "PeerLostError", (rank, res)
        assert f"rank {victim}" in res["message"], (rank, res)
        assert res["at"] - died < 3, (rank, res)


# -- configuration errors: before any queue pair or socket ------------------------------------

CONFIG = """
import json, time, ringcomm
start = time.monotonic()
try:
    ringcomm.init(strict=True)
    print("RESULT", json.dumps({"type": None}))
except Exception as e:
    print("RESULT", json.dumps({"type": type(e).__name__, "message": str(e),
                                "config": isinstance(e, ringcomm.ConfigError),
                                "seconds": time.monotonic() - start}))
"""

TWO = [[None, "emulated0"], ["emulated0", None]]


def init_one_rank(tmp_path: Path, devices, rank: int = 0, unset: tuple[str, ...] = (),
                  **extra: str) -> dict:
    """``ringcomm.init(strict=True)`` in a fresh process configured as a JACCL rank with the
    device file ``devices`` (JSON data, or text written as is); what it raised."""
    path = tmp_path / "devices.json"
    path.write_text(devices if isinstance(devices, str) else json.dumps(devices))
    environment = env(MLX_RANK=str(rank), MLX_IBV_DEVICES=str(path),
                      MLX_JACCL_COORDINATOR=f"127.0.0.1:{free_ports(1)[0]}",
                      RINGCOMM_BACKEND="rdma", RINGCOMM_VERBS="emulated",
                      RINGCOMM_TIMEOUT="60")
    environment.update(extra)
    for name in unset:
        environment.pop(name, None)
    done = subprocess.run([sys.executable, "-c", CONFIG], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    lines = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, (done.stdout, done.stderr)
    return json.loads(lines[-1])


THREE_UNEQUAL = [[None, "emulated0", ["emulated0", "emulated1"]],
                 ["emulated0", None, "emulated0"],
                 [["emulated0", "emulated1"], "emulated0", None]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("devices,rank,extra,fragments", [
    (json.dumps([[None, "mlx5_0"], ["mlx5_0", None]]), 0, {"RINGCOMM_EMULATED_DEVICES": "emA,emB"},
     ["rank 0: the RDMA device file names 'mlx5_0', which the verbs emulation does not have; "
      "devices here: emA, emB"]),
    ([[None, "emulated0"], ["emulated0"]], 0, {},
     ["{path}: row 1 must list 2 entries (one per rank); got ['emulated0']"]),
    ({"0": "emulated0"}, 0, {}, ["{path}: expected a non-empty JSON list of rows, one per rank"]),
    ([["emulated0", "emulated0"], ["emulated0", None]], 0, {},
     ["{path}: entry [0][0] links rank 0 to itself; it must be null"]),
    ([[None, 5], ["emulated0", None]], 1, {},
     ["{path}: entry [0][1] must be null, a device name or a list of names; got 5"]),
    (THREE_UNEQUAL, 1, {},
     ["lists different numbers of devices between ring neighbours ([1, 2]): entry [0][2] "
      "names 2, entry [0][1] names 1", "the connections per neighbour"]),
    ([[None, None], ["emulated0", None]], 1, {},
     ["no device from rank 0 to its ring neighbour 1 (entry [0][1] is null)"]),
    ('[[null, "emulated0"],\n ["emulated0" null]]', 0, {},
     ["the RDMA device file {path!r} is not valid JSON", "line 2 column 15"]),
    (None, 0, {}, ["cannot read the RDMA device file {missing!r} (MLX_IBV_DEVICES)",
                   "No such file"]),
    (TWO, 2, {}, ["rank 2 is out of range", "(0 to 1)"]),
], ids=["unknown device", "short row", "not a list of rows", "device on the diagonal",
        "bad entry", "unequal connection counts", "no device toward a neighbour",
        "invalid JSON", "missing file", "rank out of range"])
def test_a_wrong_device_file_is_a_config_error_saying_what_to_fix_emulated(
        tmp_path, devices, rank, extra, fragments):
    missing = str(tmp_path / "nowhere.json")
    if devices is None:
        extra = dict(extra, MLX_IBV_DEVICES=missing)
    res = init_one_rank(tmp_path, devices if devices is not None else TWO, rank, **extra)
    assert res["type"] == "ConfigError" and res["config"], res
    for fragment in fragments:
        assert fragment.format(path=str(tmp_path / "devices.json"), missing=missing) \
            in res["message"], res
    assert res["seconds"] < 10, res   # at once: it did not wait for the coordinator


def pyverbs_here() -> tuple[object | None, list[str], str]:
    """(pyverbs provider or None, the devices it lists, why not) on this interpreter."""
    from ringcomm.transports import verbs
    try:
        import pyverbs  # noqa: F401
    except ImportError as e:
        return None, [], f"pyverbs not installed ({e})"
    api = verbs.load("pyverbs")
    names = verbs.device_names(api)
    return api, names, "" if names else "pyverbs imports but lists no RDMA device"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("setting", [None, "pyverbs"],
                         ids=["RINGCOMM_VERBS unset", "RINGCOMM_VERBS=pyverbs"])
def test_without_pyverbs_or_a_device_the_error_points_to_the_emulation(tmp_path, setting):
    api, names, _ = pyverbs_here()
    if names:
        pytest.skip(f"this machine has RDMA devices ({', '.join(names)})")
    extra = {"RINGCOMM_VERBS": setting} if setting else {}
    res = init_one_rank(tmp_path, [[None, "mlx5_0"], ["mlx5_0", None]],
                        unset=("RINGCOMM_VERBS",), **extra)
    assert res["type"] == "ConfigError", res
    assert "set RINGCOMM_VERBS=emulated" in res["message"], res
    if api is None:
        assert "the RDMA transport needs pyverbs, which is not importable here" \
            in res["message"], res
    else:
        assert "names 'mlx5_0', which this machine does not have; devices here: none" \
            in res["message"], res


@pytest.mark.timeout(60)
def test_the_launcher_without_pyverbs_says_to_add_verbs_emulated():
    api, names, _ = pyverbs_here()
    if names:
        pytest.skip(f"this machine has RDMA devices ({', '.join(names)})")
    environment = env()
    environment.pop("RINGCOMM_VERBS", None)
    done = subprocess.run([sys.executable, "-m", "ringcomm.launch", "-n", "2", "--backend",
                           "rdma", "examples/allsum.py"], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert done.stdout == "", done.stdout                # no rank was started
    hint = "RINGCOMM_VERBS=emulated" if api is None else "add --verbs emulated"
    assert done.stderr.startswith("ringcomm-launch: ") and hint in done.stderr, done.stderr


@pytest.mark.timeout(90)
def test_the_launcher_runs_allsum_on_three_ranks_emulated():
    result = launch("-n", "3", "--backend", "rdma", "--verbs", "emulated",
                    "examples/allsum.py", timeout=80)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = sorted(re.sub(r" in [\d.]+ ms$", "", line) for line in result.stdout.splitlines())
    assert lines == [f"[{r}] rank {r} of 3: all_sum of 16 MiB float32 = 6 (expected 6)"
                     for r in range(3)], result.stdout


# -- 3. the verbs objects rdma.py builds: the same on real pyverbs and on the emulation -------

# Every verbs constructor transports/rdma.py calls, as it calls it (number of positional
# arguments, keywords), the QPAttr fields it sets, and the methods it calls: checked against
# rdma.py's source, so a change there fails here until it is checked on real pyverbs again.
PINNED_CALLS = {
    "AHAttr": {(0, ("dlid", "gr", "is_global", "port_num", "sl"))},
    "CQ": {(2, ())},
    "Context": {(0, ("name",))},
    "GID": {(1, ())},
    "GlobalRoute": {(0, ("dgid", "hop_limit", "sgid_index"))},
    "MR": {(3, ())},
    "PD": {(1, ())},
    "QP": {(2, ())},
    "QPAttr": {(0, ("port_num", "qp_state"))},
    "QPCap": {(0, ("max_recv_sge", "max_recv_wr", "max_send_sge", "max_send_wr"))},
    "QPInitAttr": {(0, ("cap", "qp_type", "rcq", "scq", "sq_sig_all"))},
    "RecvWR": {(0, ("num_sge", "sg", "wr_id"))},
    "SGE": {(3, ())},
    "SendWR": {(0, ("num_sge", "opcode", "send_flags", "sg", "wr_id"))},
}
PINNED_QPATTR_FIELDS = {"ah_attr", "max_dest_rd_atomic", "max_rd_atomic", "min_rnr_timer",
                        "path_mtu", "pkey_index", "qp_access_flags", "qp_state", "rnr_retry",
                        "retry_cnt", "rq_psn", "sq_psn", "timeout", "dest_qp_num"}
PINNED_METHODS = {"QP": ("to_init", "to_rtr", "to_rts", "post_send", "post_recv", "close"),
                  "CQ": ("poll", "close"), "MR": ("close",), "PD": ("close",),
                  "Context": ("query_port", "query_gid", "close"), "SendWR": ("set_wr_rdma",)}


def rdma_py_usage() -> tuple[dict, set[str], set[str]]:
    """What transports/rdma.py and rdma_setup.py call on the provider: constructors (as PINNED_CALLS), the
    fields it sets on a QPAttr (always named ``attr``) and the enum names it reads."""
    tree = ast.parse("\n".join((ROOT / "transports" / name).read_text()
                               for name in ("rdma.py", "rdma_setup.py")))
    calls: dict[str, set] = {}
    fields, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "api":
            calls.setdefault(node.func.attr, set()).add(
                (len(node.args), tuple(sorted(k.arg for k in node.keywords))))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "attr" and isinstance(node.ctx, ast.Store):
                fields.add(node.attr)
            elif node.value.id == "e" and node.attr.startswith("IBV_"):
                names.add(node.attr)
    return calls, fields, names


@pytest.mark.timeout(30)
def test_rdma_py_builds_verbs_objects_only_as_pinned():
    calls, fields, names = rdma_py_usage()
    assert calls == PINNED_CALLS, "transports/rdma.py changed how it builds verbs objects: " \
        "update PINNED_CALLS and run this file on real pyverbs"
    assert fields == PINNED_QPATTR_FIELDS
    assert names and names <= set(vars(E)), names - set(vars(E))


def build_as_rdma_py(api) -> dict:
    """Every device-free object rdma.py builds, built the way it builds them (see
    ``_open``, ``_send_wr`` and ``_connect``), read back through pyverbs' attributes."""
    e = api.enums
    cap = api.QPCap(max_send_wr=SLOTS + 2, max_recv_wr=SLOTS, max_send_sge=1, max_recv_sge=1)
    init = api.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=None, rcq=None, cap=cap, sq_sig_all=0)
    attr = api.QPAttr(qp_state=e.IBV_QPS_INIT, port_num=1)
    attr.pkey_index = 0
    attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
    sge = api.SGE(0x10000 + 3 * SLOT_BYTES, SLOT_BYTES, 0x1234)
    recv = api.RecvWR(wr_id=2 << 16 | 0 << 8 | 3, num_sge=1, sg=[sge])
    send = api.SendWR(wr_id=2 << 16 | 1 << 8 | 3, num_sge=1, sg=[sge], opcode=e.IBV_WR_SEND,
                      send_flags=e.IBV_SEND_SIGNALED)
    rtr = api.QPAttr(qp_state=e.IBV_QPS_RTR, port_num=1)
    rtr.path_mtu = min(int(e.IBV_MTU_4096), int(e.IBV_MTU_1024))
    rtr.dest_qp_num, rtr.rq_psn = 0x1234, 0xABCDEF
    rtr.max_dest_rd_atomic, rtr.min_rnr_timer = 1, 12
    gid = api.GID("fe80:0000:0000:0000:0202:c9ff:fe00:0001")
    route = api.GlobalRoute(dgid=gid, sgid_index=0, hop_limit=1)
    rtr.ah_attr = api.AHAttr(port_num=1, is_global=1, dlid=0, sl=0, gr=route)
    rtr.qp_state = e.IBV_QPS_RTS
    rtr.sq_psn = 0x123456
    rtr.timeout, rtr.retry_cnt, rtr.rnr_retry = 14, 7, 0
    rtr.max_rd_atomic = 1
    credit = api.SendWR(wr_id=2 << 16 | 2 << 8, num_sge=1, sg=[api.SGE(0x9000, 8, 0x1234)],
                        opcode=e.IBV_WR_RDMA_WRITE, send_flags=e.IBV_SEND_SIGNALED)
    credit.set_wr_rdma(0x4321, 0x8000)
    return {
        "cap": [cap.max_send_wr, cap.max_recv_wr, cap.max_send_sge, cap.max_recv_sge],
        "init": [int(init.qp_type), init.sq_sig_all, init.cap.max_send_wr],
        "init_attr": [int(attr.qp_state), attr.port_num, attr.pkey_index, attr.qp_access_flags],
        "sge": [sge.addr, sge.length, sge.lkey],
        "recv": [recv.wr_id, recv.num_sge],
        "send": [send.wr_id, send.num_sge, int(send.opcode), send.send_flags],
        "credit": [credit.wr_id, int(credit.opcode), credit.send_flags],
        "gid": gid.gid, "dgid": str(route.dgid), "route": [route.sgid_index, route.hop_limit],
        "ah": [rtr.ah_attr.port_num, rtr.ah_attr.is_global, rtr.ah_attr.dlid, rtr.ah_attr.sl],
        "rts": [int(rtr.qp_state), int(rtr.path_mtu), rtr.dest_qp_num, rtr.rq_psn,
                rtr.max_dest_rd_atomic, rtr.min_rnr_timer, rtr.sq_psn, rtr.timeout,
                rtr.retry_cnt, rtr.rnr_retry, rtr.max_rd_atomic],
    }


BUILT = {
    "cap": [SLOTS + 2, SLOTS, 1, 1], "init": [2, 0, SLOTS + 2], "init_attr": [1, 1, 0, 3],
    "sge": [0x10000 + 3 * SLOT_BYTES, SLOT_BYTES, 0x1234], "recv": [0x20003, 1],
    "send": [0x20103, 1, 2, 2], "credit": [0x20200, 0, 2],
    "gid": "fe80:0000:0000:0000:0202:c9ff:fe00:0001",
    "dgid": "fe80:0000:0000:0000:0202:c9ff:fe00:0001", "route": [0, 1], "ah": [1, 1, 0, 0],
    "rts": [3, 3, 0x1234, 0xABCDEF, 1, 12, 0x123456, 14, 7, 0, 1],
}
# pyverbs' QPAttr() defaults (rdma-core 59), which the emulation must share: a field rdma.py
# stopped setting must not behave differently there (rnr_retry 0, not 7 = for ever)
QPATTR_DEFAULTS = {"qp_state": 1, "cur_qp_state": 0, "port_num": 1, "path_mtu": 3,
                   "pkey_index": 0, "qp_access_flags": 0, "timeout": 0, "retry_cnt": 0,
                   "rnr_retry": 0, "min_rnr_timer": 0, "max_rd_atomic": 0,
                   "max_dest_rd_atomic": 0, "rq_psn": 0, "sq_psn": 0, "dest_qp_num": 0}


def provider(name: str):
    if name == "pyverbs":
        pytest.importorskip("pyverbs", reason="pyverbs not installed: the construction "
                            "check against real pyverbs runs where it is (see README, RDMA)")
    from ringcomm.transports import verbs
    return verbs.load(name)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["pyverbs", "emulated"])
def test_verbs_objects_are_built_alike_on_pyverbs_and_on_the_emulation(name):
    api = provider(name)
    assert build_as_rdma_py(api) == BUILT
    defaults = api.QPAttr()
    assert {k: int(getattr(defaults, k)) for k in QPATTR_DEFAULTS} == QPATTR_DEFAULTS
    # keywords pyverbs does not take are refused: the emulation is no more lenient
    for cls in ("QPCap", "QPInitAttr", "QPAttr", "AHAttr", "GlobalRoute", "RecvWR"):
        with pytest.raises(TypeError):
            getattr(api, cls)(not_a_pyverbs_keyword=1)
    with pytest.raises(TypeError):
        api.QPAttr(dest_qp_num=1)  # a field, set as an attribute, not a keyword
    for cls, methods in PINNED_METHODS.items():
        missing = [m for m in methods if not callable(getattr(getattr(api, cls), m, None))]
        assert not missing, (cls, missing)
    _, _, names = rdma_py_usage()
    # the enum values rdma.py uses, and the emulation's, are <infiniband/verbs.h>'s
    for enum in sorted(names | set(n for n in vars(E) if hasattr(api.enums, n))):
        assert int(getattr(api.enums, enum)) == getattr(E, enum), enum


# -- 4. real RDMA ------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_all_sum_on_two_ranks_over_real_rdma():
    api, names, why = pyverbs_here()
    if not names:
        pytest.skip(why)
    result = launch("-n", "2", "--backend", "rdma", "--verbs", "pyverbs", "examples/allsum.py",
                    timeout=100)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = sorted(re.sub(r" in [\d.]+ ms$", "", line) for line in result.stdout.splitlines())
    assert lines == [f"[{r}] rank {r} of 2: all_sum of 16 MiB float32 = 3 (expected 3)"
                     for r in range(2)], result.stdout
