"""The RDMA transport's own paths, mostly over the EMULATED verbs provider.

``transports/emulated_verbs.py`` is an emulation of verbs over Unix sockets: every test here
whose name says "emulated" proves the emulation's or the transport's logic, never anything
about RDMA hardware.  (The collective suite over the emulation is in test_collectives.py;
the same tests on Soft-RoCE in a guest: tests/test_rxe.py.)

1. The emulation itself, two queue pairs in this process: the queue-pair state machine and
   what a Thunderbolt device refuses (RC, RDMA WRITE, an 11th queue pair, over-long messages,
   sends that span other 4 KiB units than their receive), UC's silent loss, the GID table,
   the injected faults.
2. The transport over the emulation, ranks as processes: long messages that recycle the
   frames many times, credits against a late receiver, every collective right under injected
   loss, duplicates and damage, an error completion, a dead rank, a silent one, the limits
   checked before any queue pair (devices, locked memory), wrong device files, a missing
   pyverbs, the launcher.
3. The verbs objects ``transports/rdma_setup.py`` builds, constructed the same way on real
   pyverbs (skipped when it does not import) and on the emulation, so the emulation's
   signatures stay those of pyverbs.
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
from ringcomm.transports import emulated_verbs, emulated_wire, rdma_frames
from ringcomm.transports.rdma import FRAME_BYTES, PAYLOAD_BYTES, SLOTS

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
    """Two emulated UC queue pairs, ``a`` on emulated0 and ``b`` on emulated1, each with its
    own context, protection domain, completion queue and one registered region."""

    def __init__(self, mr_bytes: int = 1 << 16) -> None:
        self.a = self._endpoint("emulated0", mr_bytes)
        self.b = self._endpoint("emulated1", mr_bytes)

    @staticmethod
    def _endpoint(device: str, mr_bytes: int) -> SimpleNamespace:
        ctx = EV.Context(name=device)
        pd = EV.PD(ctx)
        cq = EV.CQ(ctx, 4096)
        mr = EV.MR(pd, mr_bytes, E.IBV_ACCESS_LOCAL_WRITE)
        cap = EV.QPCap(max_send_wr=64, max_recv_wr=64, max_send_sge=1, max_recv_sge=1)
        qp = EV.QP(pd, EV.QPInitAttr(qp_type=E.IBV_QPT_UC, scq=cq, rcq=cq, cap=cap,
                                     sq_sig_all=0))
        return SimpleNamespace(ctx=ctx, pd=pd, cq=cq, mr=mr, qp=qp, wcs=[])

    def to_init(self) -> None:
        for end in (self.a, self.b):
            attr = EV.QPAttr(qp_state=E.IBV_QPS_INIT, port_num=1)
            attr.pkey_index = 0
            attr.qp_access_flags = E.IBV_ACCESS_LOCAL_WRITE
            end.qp.to_init(attr)

    def to_rtr(self, mtu: int = E.IBV_MTU_1024, sgid_index: int = 1) -> None:
        for end, other in ((self.a, self.b), (self.b, self.a)):
            attr = EV.QPAttr(qp_state=E.IBV_QPS_RTR, port_num=1)
            attr.path_mtu = mtu
            attr.dest_qp_num = other.qp.qp_num
            attr.rq_psn = 100 if other is self.a else 200
            attr.ah_attr = EV.AHAttr(port_num=1, is_global=1, dlid=0, sl=0, gr=EV.GlobalRoute(
                dgid=other.ctx.query_gid(1, 1), sgid_index=sgid_index, hop_limit=1))
            end.qp.to_rtr(attr)

    def to_rts(self) -> None:
        for end in (self.a, self.b):
            attr = EV.QPAttr(qp_state=E.IBV_QPS_RTS, port_num=1)
            attr.sq_psn = 100 if end is self.a else 200
            end.qp.to_rts(attr)

    def connect(self) -> "Pair":
        self.to_init()
        self.to_rtr()
        self.to_rts()
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
def test_what_thunderbolt_refuses_the_emulation_refuses(pair):
    a = pair.a
    # RC (errno 102 on macOS, EOPNOTSUPP), more than 4095 work requests, an 11th queue pair
    with pytest.raises(EV.PyverbsRDMAError, match="unreliable connected only") as refused:
        EV.QP(a.pd, EV.QPInitAttr(qp_type=E.IBV_QPT_RC, scq=a.cq, rcq=a.cq))
    assert refused.value.error_code == 95
    with pytest.raises(EV.PyverbsRDMAError, match="4095"):
        EV.QP(a.pd, EV.QPInitAttr(qp_type=E.IBV_QPT_UC, scq=a.cq, rcq=a.cq,
                                  cap=EV.QPCap(max_send_wr=4096)))
    more = [EV.QP(a.pd, EV.QPInitAttr(qp_type=E.IBV_QPT_UC, scq=a.cq, rcq=a.cq))
            for _ in range(9)]  # with pair.a's: 10 on emulated0
    try:
        with pytest.raises(EV.PyverbsRDMAError, match="at most 10 queue pairs on emulated0"):
            EV.QP(a.pd, EV.QPInitAttr(qp_type=E.IBV_QPT_UC, scq=a.cq, rcq=a.cq))
    finally:
        for qp in more:
            qp.close()
    EV.QP(a.pd, EV.QPInitAttr(qp_type=E.IBV_QPT_UC, scq=a.cq, rcq=a.cq)).close()  # room again
    # a path MTU above the port's, a GID index past the table
    pair.to_init()
    with pytest.raises(EV.PyverbsRDMAError, match="path MTU 6"):
        pair.to_rtr(mtu=6)
    with pytest.raises(EV.PyverbsRDMAError, match="no GID 2"):
        pair.to_rtr(sgid_index=2)
    pair.to_rtr()
    pair.to_rts()
    # two-sided only, and at most 16,773,120 bytes a message
    with pytest.raises(EV.PyverbsRDMAError, match="SEND only"):
        a.qp.post_send(send_wr(a, 1, 0, 8, opcode=E.IBV_WR_RDMA_WRITE))
    with pytest.raises(EV.PyverbsRDMAError, match="longer than 16773120"):
        a.qp.post_send(send_wr(a, 1, 0, 16_773_121))


@pytest.mark.timeout(30)
def test_the_gid_table_has_an_ipv4_mapped_entry_emulated(pair):
    port = pair.a.ctx.query_port(1)
    gids = [pair.a.ctx.query_gid(1, i).gid for i in range(port.gid_tbl_len)]
    assert gids[0].startswith("fe80:") and gids[1].startswith("0000:0000:0000:0000:0000:ffff:7f")
    with pytest.raises(EV.PyverbsRDMAError):
        pair.a.ctx.query_gid(1, port.gid_tbl_len)


@pytest.mark.timeout(30)
def test_a_send_without_a_receive_is_lost_without_a_word_emulated(pair):
    # UC: no receiver-not-ready, no acknowledgement: the sender completes, the message is gone
    a, b = pair.connect().a, pair.b
    a.mr.write(b"lost", 4, 0)
    a.qp.post_send(send_wr(a, 1, 0, 4))
    pair.poll(lambda: a.wcs)
    assert pair.describe(a.wcs) == [(1, "IBV_WC_SUCCESS")]
    pair.settle(0.1)
    b.qp.post_recv(recv_wr(b, 9, 0, 64))
    a.mr.write(b"next", 4, 64)
    a.qp.post_send(send_wr(a, 2, 64, 4))
    pair.poll(lambda: b.wcs)
    assert [(w.wr_id, w.status, w.byte_len) for w in b.wcs] == [(9, E.IBV_WC_SUCCESS, 4)]
    assert b.mr.read(4, 0) == b"next"          # the next message took the receive
    assert b.qp.qp_state == a.qp.qp_state == E.IBV_QPS_RTS


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sent,room,ok", [(4096, 8192, False), (4097, 8192, True),
                                          (8192, 8192, True), (8193, 16384, False),
                                          (1, 4096, True), (100, 64, False)])
def test_a_send_must_span_as_many_4k_units_as_its_receive_emulated(sent, room, ok):
    p = Pair(mr_bytes=1 << 16).connect()
    try:
        a, b = p.a, p.b
        b.qp.post_recv(recv_wr(b, 5, 0, room))
        a.qp.post_send(send_wr(a, 1, 0, sent))
        p.poll(lambda: a.wcs and b.wcs)
        assert p.describe(a.wcs) == [(1, "IBV_WC_SUCCESS")]     # the sender hears nothing
        want = "IBV_WC_SUCCESS" if ok else "IBV_WC_LOC_LEN_ERR"
        assert p.describe(b.wcs) == [(5, want)]
        assert b.qp.qp_state == (E.IBV_QPS_RTS if ok else E.IBV_QPS_ERR)
    finally:
        p.close()


@pytest.mark.timeout(30)
def test_err_flushes_every_posted_receive_in_order_emulated(pair):
    a = pair.connect().a
    for i in range(3):
        a.qp.post_recv(recv_wr(a, 10 + i, 64 * i, 64))
    a.qp.modify(EV.QPAttr(qp_state=E.IBV_QPS_ERR), 0)
    a.qp.post_send(send_wr(a, 20, 0, 8))       # a queue pair in ERR flushes what is posted
    pair.poll(lambda: len(a.wcs) == 4)
    assert pair.describe(a.wcs) == [(i, "IBV_WC_WR_FLUSH_ERR") for i in (10, 11, 12, 20)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loss", ["drop=0.1,seed=4", "duplicate=0.1,seed=5",
                                  "corrupt=0.1,seed=6"])
def test_injected_faults_happen_at_their_rates_emulated(monkeypatch, loss):
    monkeypatch.setenv("RINGCOMM_EMULATED_LOSS", loss)
    p = Pair(mr_bytes=1 << 16).connect()
    try:
        a, b = p.a, p.b
        count, got = 1000, []
        for slot in range(16):                   # receive slots, reposted as they fill
            b.qp.post_recv(recv_wr(b, slot, slot * 64, 64))
        for i in range(count + 1):
            for wc in b.cq.poll(32)[1]:
                got.append(b.mr.read(64, wc.wr_id * 64))
                b.qp.post_recv(recv_wr(b, wc.wr_id, wc.wr_id * 64, 64))
            a.cq.poll(32)
            if i < count:
                a.mr.write(i.to_bytes(4, "big") * 16, 64, 0)
                a.qp.post_send(send_wr(a, i, 0, 64))
        time.sleep(0.05)
        got += [b.mr.read(64, wc.wr_id * 64) for wc in b.cq.poll(32)[1]]
        faults = dict(a.qp.faults)
    finally:
        p.close()
    kind = loss.split("=")[0]
    assert set(faults) == {{"drop": "dropped", "duplicate": "duplicated",
                            "corrupt": "corrupted"}[kind]}, faults
    assert 60 < sum(faults.values()) < 140, faults        # 10% of 1000, give or take
    damaged = [g for g in got if g[:4] * 16 != g]
    if kind == "corrupt":
        assert len(damaged) == faults["corrupted"], (len(damaged), faults)
    else:
        assert not damaged


# A process that makes one emulated queue pair (whose socket it prints), then waits for stdin.
QUEUE_PAIR = """
import os, sys
from ringcomm.transports import emulated_verbs as EV, emulated_wire
from ringcomm.transports.emulated_base import e as E
ctx = EV.Context(name="emulated0")
pd, cq = EV.PD(ctx), EV.CQ(ctx, 16)
qp = EV.QP(pd, EV.QPInitAttr(qp_type=E.IBV_QPT_UC, scq=cq, rcq=cq, cap=EV.QPCap()))
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
        lengths = rng.integers(4097, 8193, 500)   # a send spans the units of its receive
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
from ringcomm.transports.rdma import SLOTS, PAYLOAD_BYTES

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
count = 3 * (1 << 20) + 12345            # int64: 24 MiB + 96 KiB, ~48 x SLOTS frames
x = np.arange(count, dtype=np.int64) * (r + 1) + r
y = ringcomm.all_sum(x)
want = np.arange(count, dtype=np.int64) * (n * (n + 1) // 2) + n * (n - 1) // 2
wrong_sum = int(np.count_nonzero(y != want))

nbytes = (20 << 20) + 7                   # 20 MiB + 7 B, not a multiple of a frame
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
       sent=sum(link.next_seq for link in t._by_number),
       failures=[link.failure for link in t._by_number])
g.close()
"""


@pytest.mark.timeout(120)
def test_long_messages_recycle_the_slots_many_times_emulated(tmp_path):
    with emulated_ranks(tmp_path, 3, LONG) as procs:
        got = results(procs, timeout=100)
    # each rank sends 2(n-1)/n of the all_sum's 24 MiB, plus 20 MiB to its neighbour
    messages = (2 * 2 / 3 * 24 * (1 << 20) + 20 * (1 << 20)) / PAYLOAD_BYTES
    for rank, res in enumerate(got):
        assert res["wrong_sum"] == 0 and res["wrong_p2p"] == 0, (rank, res)
        assert res["failures"] == [None, None], (rank, res)
        assert res["sent"] >= 0.95 * messages > 20 * SLOTS, (rank, res)  # frames reused >20x


FLOW = """
if os.environ.get("NO_CREDITS") and r == 0:
    type(t)._credit = lambda self, link, reserve: True   # send into receives never posted
sizes = [1 + (i * 7919) % 70000 for i in range(300)]    # 300 messages of 1 B to 68 KiB
def counted(name):
    return sum(link.counts[name] for link in t._by_number)
try:
    if r == 0:
        start = time.monotonic()
        for i, size in enumerate(sizes):
            ringcomm.send(np.full(size, i % 251, np.uint8), 1)
        sent_in = time.monotonic() - start
        ringcomm.barrier()
        report(seconds=sent_in, resent=counted("resent"))
    else:
        time.sleep(1.5)         # every receive is posted late
        bad = [i for i, size in enumerate(sizes)
               if not np.array_equal(ringcomm.recv((size,), np.uint8, 0),
                                     np.full(size, i % 251, np.uint8))]
        ringcomm.barrier()
        report(bad=bad, out_of_order=counted("out_of_order"))
except ringcomm.RingcommError as e:
    report(**failure(e))
"""


@pytest.mark.timeout(60)
def test_many_messages_to_a_late_receiver_wait_for_credits_emulated(tmp_path):
    with emulated_ranks(tmp_path, 2, FLOW) as procs:
        sender, receiver = results(procs)
    assert receiver == {"bad": [], "out_of_order": 0}, receiver
    assert sender["resent"] == 0, sender   # no frame met a missing receive
    # the sender could not run ahead of the receiver's 1.5 s nap: credits held it back
    assert sender["seconds"] > 1.2, sender


@pytest.mark.timeout(60)
def test_without_credits_frames_that_meet_no_receive_are_lost_and_sent_again_emulated(
        tmp_path):
    # the control for the test above: with the credit check defeated, a sender runs ahead
    # of a receiver that posts its receives late; UC drops what finds no receive, without a
    # word, and the next frame lands where the lost one should have: the receiver sees the
    # gap, holds what came after it, and the sender sends the lost frames again
    with emulated_ranks(tmp_path, 2, FLOW, NO_CREDITS="1") as procs:
        sender, receiver = results(procs)
    assert receiver["bad"] == [], receiver
    assert sender["resent"] > 0 and receiver["out_of_order"] > 0, (sender, receiver)


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


# -- unreliable links: loss, repeats and damage injected by the emulation ----------------------

LOSSY = """
rng = np.random.default_rng(1234)
def data(rank, size, dtype=np.float32):
    return np.random.default_rng(rank).integers(-50, 50, size).astype(dtype)
wrong = []
sizes = [1, 1000, 100_000, 700_001]   # under one frame, one, a few, dozens (with a tail)
for size in sizes:
    xs = [data(k, size) for k in range(n)]
    checks = {
        "all_sum": (ringcomm.all_sum(xs[r]), sum(xs)),
        "all_max": (ringcomm.all_max(xs[r]), np.max(xs, axis=0)),
        "all_min": (ringcomm.all_min(xs[r]), np.min(xs, axis=0)),
        "all_gather": (ringcomm.all_gather(xs[r]), np.concatenate(xs)),
        "broadcast": (ringcomm.broadcast(xs[r].copy(), size % n), xs[size % n]),
    }
    if size % n == 0:
        checks["sum_scatter"] = (ringcomm.sum_scatter(xs[r]),
                                 np.split(sum(xs), n)[r])
    whole = np.concatenate([np.full(size, 10 * k + j, np.int64) for j in range(n)
                            for k in [r]])
    got = ringcomm.all_to_all(whole)
    checks["all_to_all"] = (got, np.concatenate([np.full(size, 10 * j + r, np.int64)
                                                 for j in range(n)]))
    for src in range(n):                 # send/recv between every pair (direct links too)
        for dst in range(n):
            if src == dst:
                continue
            if r == src:
                ringcomm.send(xs[r] + dst, dst)
            elif r == dst:
                checks[f"recv {src}->{dst}"] = (ringcomm.recv((size,), np.float32, src),
                                                xs[src] + dst)
    ringcomm.barrier()
    wrong += [f"{name} of {size}" for name, (got, want) in checks.items()
              if got.shape != want.shape or not np.array_equal(got, want)]
links = list(t._by_number) + (list(t._direct._setup.by_number) if t._direct else [])
counts = {}
for link in links:
    for k, v in link.counts.items():
        counts[k] = counts.get(k, 0) + v
faults = {}
for link in links:
    for k, v in link.qp.faults.items():
        faults[k] = faults.get(k, 0) + v
report(wrong=wrong, counts=counts, faults=faults)
g.close()
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("size,loss", [
    (3, "drop=0.01,seed=1"), (3, "drop=0.05,seed=2"), (4, "drop=0.03,seed=3"),
    (3, "duplicate=0.03,seed=4"), (4, "corrupt=0.03,seed=5"),
    (4, "drop=0.02,duplicate=0.02,corrupt=0.02,seed=6")])
def test_every_collective_is_right_over_a_lossy_link_emulated(tmp_path, size, loss):
    # every message a queue pair sends is dropped, repeated or damaged at these rates (UC
    # says nothing of it): the frames' sequence and checksums find it, the sender's copies
    # mend it; 4 ranks send to non-neighbours over direct queue pairs too
    with emulated_ranks(tmp_path, size, LOSSY, rank_timeout=120,
                        RINGCOMM_EMULATED_LOSS=loss) as procs:
        got = results(procs, timeout=220)
    faults = {k: sum(res["faults"].get(k, 0) for res in got) for k in
              ("dropped", "duplicated", "corrupted")}
    counts = {k: sum(res["counts"].get(k, 0) for res in got) for k in
              ("resent", "duplicates", "damaged", "out_of_order")}
    print(f"\n{size} ranks, {loss}: injected {faults}, seen {counts}")
    for rank, res in enumerate(got):
        assert res["wrong"] == [], (rank, res)
    for kind, seen in (("dropped", "resent"), ("duplicated", "duplicates"),
                       ("corrupted", "damaged")):
        if kind[:4] in loss:
            assert faults[kind] > 10 and counts[seen] > 0, (faults, counts)


@pytest.mark.timeout(60)
def test_a_dead_rank_is_named_in_time_over_a_lossy_link_emulated(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGCOMM_EMULATED_LOSS", "drop=0.03,corrupt=0.01,seed=8")
    got = run_fault(tmp_path, 4, "exit", culprit=2)
    died = got[2]["injected"]
    for rank in (0, 1, 3):
        assert got[rank]["type"] == "PeerLostError", got[rank]
        assert "rank 2" in got[rank]["message"], got[rank]
        assert got[rank]["at"] - died < 3, got[rank]


AWAY = """
x = np.arange(1 << 20, dtype=np.float32)          # 4 MiB: 65 frames
if r == 0:
    ringcomm.send(x, 1)                             # complete once in send frames
    time.sleep(10)                                  # away from ringcomm: its keeper resends
    report(resent=sum(link.counts["resent"] for link in t._by_number), back=time.monotonic())
else:
    ok = bool(np.array_equal(ringcomm.recv(x.shape, x.dtype, 0), x))
    report(ok=ok, done=time.monotonic())  # (CLOCK_MONOTONIC: one clock for every process)
ringcomm.barrier()
g.close()
"""


@pytest.mark.timeout(60)
def test_frames_lost_while_the_sender_is_away_are_sent_again_at_once_emulated(tmp_path):
    # rank 0's send is complete (its bytes are in send frames) and it computes for 10 s; a
    # tenth of its frames are lost: its keeper thread resends them, so rank 1 has them all
    # before rank 0 is back (not at its next call)
    with emulated_ranks(tmp_path, 2, AWAY, RINGCOMM_EMULATED_LOSS="drop=0.1,seed=11") as procs:
        sender, receiver = results(procs)
    assert sender["resent"] > 0, sender
    assert receiver["ok"] and receiver["done"] < sender["back"], (sender, receiver)


def test_the_path_mtu_is_the_smaller_and_1024_where_unsure():
    from ringcomm.transports.rdma_setup import path_mtu
    assert path_mtu(E.IBV_MTU_4096, E.IBV_MTU_2048) == E.IBV_MTU_2048
    assert path_mtu(E.IBV_MTU_1024, E.IBV_MTU_4096) == E.IBV_MTU_1024
    for unsure in (None, 0, 7, "5"):
        assert path_mtu(E.IBV_MTU_4096, unsure) == E.IBV_MTU_1024
    assert path_mtu(0, E.IBV_MTU_4096) == E.IBV_MTU_1024


SILENT = """
import signal
x = np.ones(1 << 20, np.float32)
ringcomm.all_sum(x)
if r == 1:
    os.kill(os.getpid(), signal.SIGSTOP)   # frozen: its process and sockets stay
start = time.monotonic()
try:
    ringcomm.all_sum(x)
    report(finished=True)
except ringcomm.RingcommError as e:
    report(seconds=time.monotonic() - start, **failure(e))
"""


@pytest.mark.timeout(60)
def test_a_silent_peer_is_a_timeout_naming_it_at_the_deadline_emulated(tmp_path):
    # UC acknowledges nothing: a frozen peer is heard of only by its silence; frames to it
    # are sent again until the call's deadline, which then names it
    with emulated_ranks(tmp_path, 3, SILENT, rank_timeout=3,
                        RINGCOMM_EMULATED_LOSS="drop=0.02,seed=9") as procs:
        got = {}
        for rank in (0, 2):
            out, err = procs[rank].communicate(timeout=40)
            rows = [json.loads(line[7:]) for line in out.splitlines()
                    if line.startswith("RESULT ")]
            assert rows, (rank, out, err)
            got[rank] = rows[-1]
    for rank, res in got.items():
        assert res["type"] in ("CommTimeoutError", "PeerLostError"), (rank, res)
        assert "rank 1" in res["message"], (rank, res)
        assert 2.5 < res["seconds"] < 10, (rank, res)


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


LOCKED = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_MEMLOCK, (2 << 20, 2 << 20))   # 2 MiB, as `ulimit -l 2048`
exec(CONFIG)
from ringcomm.transports import emulated_verbs as EV
try:   # the emulation pins what it registers, as the kernel does
    EV.MR(EV.PD(EV.Context(name="emulated0")), 4 << 20, 1)
    print("RESULT", json.dumps({"mr": None}))
except EV.PyverbsRDMAError as e:
    print("RESULT", json.dumps({"mr": str(e)}))
"""


@pytest.mark.timeout(60)
def test_a_locked_memory_limit_too_small_is_a_config_error_saying_how_to_raise_it(tmp_path):
    # an ordinary user's RLIMIT_MEMLOCK (root passes it by CAP_IPC_LOCK: dropped here)
    drop = [] if os.geteuid() else ["setpriv", "--bounding-set=-ipc_lock",
                                    "--inh-caps=-ipc_lock"]
    if drop and subprocess.run(["which", "setpriv"], capture_output=True).returncode:
        pytest.skip("running as root without setpriv: CAP_IPC_LOCK cannot be dropped")
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(TWO))
    environment = env(MLX_RANK="0", MLX_IBV_DEVICES=str(path),
                      MLX_JACCL_COORDINATOR=f"127.0.0.1:{free_ports(1)[0]}",
                      RINGCOMM_BACKEND="rdma", RINGCOMM_VERBS="emulated", RINGCOMM_TIMEOUT="60")
    done = subprocess.run([*drop, sys.executable, "-c", LOCKED.replace("CONFIG", repr(CONFIG))],
                          env=environment, cwd=ROOT, capture_output=True, text=True, timeout=30)
    rows = [json.loads(line[7:]) for line in done.stdout.splitlines()
            if line.startswith("RESULT ")]
    assert len(rows) == 2, (done.stdout, done.stderr)
    res, mr = rows
    assert res["type"] == "ConfigError", res
    for fragment in ("rank 0: the RDMA transport must register about 2176 KiB", "2 queue pairs",
                     "may lock only 2048 KiB (RLIMIT_MEMLOCK)", "ulimit -l unlimited",
                     "/etc/security/limits.conf"):
        assert fragment in res["message"], res
    assert res["seconds"] < 10, res          # at once: before the side channel or a queue pair
    assert mr["mr"] is not None and "Errno: 12" in mr["mr"], mr


@pytest.mark.timeout(60)
def test_more_than_10_queue_pairs_on_a_device_is_a_config_error_emulated(tmp_path):
    six = ["emulated0"] * 6   # 6 connections to each neighbour: 12 queue pairs on emulated0
    res = init_one_rank(tmp_path, [[None, six], [six, None]], 0)
    assert res["type"] == "ConfigError", res
    assert "12 queue pairs on device 'emulated0'" in res["message"], res
    assert "at most 10 per device" in res["message"], res


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index,ok", [("0", True), ("1", True), ("2", False), ("x", False)])
def test_rdma_gid_index_picks_the_gid_or_is_a_config_error_emulated(tmp_path, index, ok):
    script = """
link = t._by_number[0]
report(index=link.context.gid_index, gid=str(link.context.gid), sum=float(ringcomm.all_sum(
    np.ones(3, np.float32))[0]))
g.close()
"""
    if ok:
        with emulated_ranks(tmp_path, 2, script, RINGCOMM_GID_INDEX=index) as procs:
            got = results(procs)
        for res in got:
            assert res["index"] == int(index) and res["sum"] == 2.0, res
            assert res["gid"].startswith("fe80:" if index == "0" else "0000:0000:"), res
    else:
        res = init_one_rank(tmp_path, TWO, 0, RINGCOMM_GID_INDEX=index)
        assert res["type"] == "ConfigError", res
        assert ("no GID at index 2" if index == "2" else "RINGCOMM_GID_INDEX must be") \
            in res["message"], res


@pytest.mark.timeout(60)
def test_the_ipv4_mapped_gid_is_found_as_jaccl_finds_it_emulated(tmp_path):
    script = """
link = t._by_number[0]
report(index=link.context.gid_index, mtu=link.path_mtu)
g.close()
"""
    with emulated_ranks(tmp_path, 2, script) as procs:
        got = results(procs)
    assert got == [{"index": 1, "mtu": E.IBV_MTU_4096}] * 2, got


@pytest.mark.timeout(60)
def test_rc_queue_pairs_on_the_emulation_are_a_config_error_naming_the_setting(tmp_path):
    res = init_one_rank(tmp_path, TWO, 0, RINGCOMM_RDMA_QP="rc")
    assert res["type"] == "ConfigError", res
    assert "device 'emulated0' refused a RC queue pair toward rank 1" in res["message"], res
    assert "unreliable connected only" in res["message"], res
    assert "RINGCOMM_RDMA_QP=uc" in res["message"], res


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
    if api is None and setting == "pyverbs":
        assert "the RDMA transport needs pyverbs, which is not importable here" \
            in res["message"], res
    elif api is None:  # auto: pyverbs, else the ctypes provider (libibverbs, if present)
        assert "which this machine does not have; devices here: none" in res["message"] \
            or "RINGCOMM_VERBS" in res["message"], res
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
PINNED_QPATTR_FIELDS = {"ah_attr", "path_mtu", "pkey_index", "qp_access_flags", "qp_state",
                        "rq_psn", "sq_psn", "dest_qp_num",
                        # RINGCOMM_RDMA_QP=rc only
                        "max_dest_rd_atomic", "min_rnr_timer", "timeout", "retry_cnt",
                        "rnr_retry", "max_rd_atomic"}
PINNED_METHODS = {"QP": ("to_init", "to_rtr", "to_rts", "post_send", "post_recv", "close"),
                  "CQ": ("poll", "close"), "MR": ("close",), "PD": ("close",),
                  "Context": ("query_port", "query_gid", "close")}


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
    """Every device-free object rdma_setup.py builds, built the way it builds them (see
    ``open`` and ``connect_to``), read back through pyverbs' attributes."""
    e = api.enums
    sends = rdma_frames.SEND_SLOTS
    cap = api.QPCap(max_send_wr=2 * sends, max_recv_wr=SLOTS, max_send_sge=1, max_recv_sge=1)
    init = api.QPInitAttr(qp_type=e.IBV_QPT_UC, scq=None, rcq=None, cap=cap, sq_sig_all=0)
    attr = api.QPAttr(qp_state=e.IBV_QPS_INIT, port_num=1)
    attr.pkey_index = 0
    attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE
    sge = api.SGE(0x10000 + 3 * FRAME_BYTES, FRAME_BYTES, 0x1234)
    recv = api.RecvWR(wr_id=2 << 16 | 0 << 8 | 3, num_sge=1, sg=[sge])
    send = api.SendWR(wr_id=2 << 16 | 1 << 8 | 3, num_sge=1, opcode=e.IBV_WR_SEND, sg=[sge],
                      send_flags=e.IBV_SEND_SIGNALED)
    rtr = api.QPAttr(qp_state=e.IBV_QPS_RTR, port_num=1)
    rtr.path_mtu = min(int(e.IBV_MTU_4096), int(e.IBV_MTU_1024))
    rtr.dest_qp_num, rtr.rq_psn = 0x1234, 0xABCDEF
    gid = api.GID("0000:0000:0000:0000:0000:ffff:0a00:0001")
    route = api.GlobalRoute(dgid=gid, sgid_index=1, hop_limit=1)
    rtr.ah_attr = api.AHAttr(port_num=1, is_global=1, dlid=0, sl=0, gr=route)
    rtr.qp_state = e.IBV_QPS_RTS
    rtr.sq_psn = 0x123456
    return {
        "cap": [cap.max_send_wr, cap.max_recv_wr, cap.max_send_sge, cap.max_recv_sge],
        "init": [int(init.qp_type), init.sq_sig_all, init.cap.max_send_wr],
        "init_attr": [int(attr.qp_state), attr.port_num, attr.pkey_index, attr.qp_access_flags],
        "sge": [sge.addr, sge.length, sge.lkey],
        "recv": [recv.wr_id, recv.num_sge],
        "send": [send.wr_id, send.num_sge, int(send.opcode), send.send_flags],
        "gid": gid.gid, "dgid": str(route.dgid), "route": [route.sgid_index, route.hop_limit],
        "ah": [rtr.ah_attr.port_num, rtr.ah_attr.is_global, rtr.ah_attr.dlid, rtr.ah_attr.sl],
        "rts": [int(rtr.qp_state), int(rtr.path_mtu), rtr.dest_qp_num, rtr.rq_psn,
                rtr.sq_psn],
    }


BUILT = {
    "cap": [2 * rdma_frames.SEND_SLOTS, SLOTS, 1, 1], "init": [3, 0, 2 * rdma_frames.SEND_SLOTS],
    "init_attr": [1, 1, 0, 1],
    "sge": [0x10000 + 3 * FRAME_BYTES, FRAME_BYTES, 0x1234], "recv": [0x20003, 1],
    "send": [0x20103, 1, 2, 2],
    "gid": "0000:0000:0000:0000:0000:ffff:0a00:0001",
    "dgid": "0000:0000:0000:0000:0000:ffff:0a00:0001", "route": [1, 1], "ah": [1, 1, 0, 0],
    "rts": [3, 3, 0x1234, 0xABCDEF, 0x123456],
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
