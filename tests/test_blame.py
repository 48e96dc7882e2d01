"""Every surviving rank names the rank that failed first (issue 15, item 7).

Real rank processes on localhost: a rank that is never started, one killed during init(),
one killed mid-collective and one frozen with SIGSTOP.  Each survivor's error must carry
``peer`` == the failed rank, say so in its message (once: relayed messages must not pile up),
and name the operation (``init`` or the collective).
"""
from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ringcomm
from ringcomm.launch import localhost_hostfile
from ringcomm.transports import notices
from ringcomm.transports.hostfile import write_hostfile
from ringcomm.transports.tcp_setup import TcpSetup
from tests.procs import env, start_ranks

# Every rank imports ringcomm, says so, and waits for the test's "go" on stdin, so that the
# deadlines of the ranks' init() start together (as they would under a launcher).
RANK = textwrap.dedent("""
    import json, sys, time
    import numpy as np, ringcomm
    print("imported", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    stage = "init"
    try:
        g = ringcomm.init(strict=True)
        stage = "loop"
        x = np.ones(1 << 16, np.float32)
        ringcomm.all_sum(x)
        print("ready", flush=True)
        while True:
            start = time.monotonic()
            ringcomm.all_sum(x)
    except ringcomm.RingcommError as e:
        print(json.dumps({"type": type(e).__name__, "peer": e.peer, "op": e.op,
                          "message": str(e), "stage": stage,
                          "after": round(time.monotonic() - start, 3)}), flush=True)
""")


class Ring:
    """``size`` rank processes of one hostfile; only the ranks passed to ``start`` run."""

    def __init__(self, tmp_path: Path, size: int, timeout: float) -> None:
        self.size = size
        self.hostfile = tmp_path / "hostfile.json"
        self.addresses = localhost_hostfile(size, 1)
        write_hostfile(self.hostfile, self.addresses)
        self.timeout = timeout
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, ranks, go: bool = True) -> None:
        for r in ranks:
            self.procs[r] = subprocess.Popen(
                [sys.executable, "-c", RANK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
                env=env(MLX_RANK=str(r), MLX_HOSTFILE=str(self.hostfile),
                        RINGCOMM_TIMEOUT=str(self.timeout)))
        for r in ranks:
            assert self.procs[r].stdout.readline().strip() == "imported", self.procs[r].stderr.read()
        if go:
            self.go(ranks)

    def go(self, ranks) -> None:
        for r in ranks:
            self.procs[r].stdin.write("go\n")
            self.procs[r].stdin.flush()

    def wait_ready(self, ranks) -> None:
        for r in ranks:
            line = self.procs[r].stdout.readline().strip()
            assert line == "ready", (r, line, self.procs[r].stderr.read())

    def results(self, ranks, limit: float) -> dict[int, dict]:
        out = {}
        for r in ranks:
            stdout, stderr = self.procs[r].communicate(timeout=limit)
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            assert lines, f"rank {r} reported no error: {stdout!r} {stderr[-2000:]!r}"
            out[r] = json.loads(lines[-1])
        return out

    def listening(self, rank: int) -> bool:
        """Whether rank's port is in LISTEN state (from /proc/net/tcp)."""
        port = f"{self.addresses[rank][0].port:04X}"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(":" + port) and fields[3] == "0A":
                return True
        return False

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    f.close()


@pytest.fixture
def ring_factory(tmp_path):
    rings = []

    def make(size: int, timeout: float) -> Ring:
        ring = Ring(tmp_path, size, timeout)
        rings.append(ring)
        return ring
    yield make
    for ring in rings:
        ring.close()


def check_blame(results: dict[int, dict], failed: int, op: str | None = None,
                address: object = None) -> None:
    """Every survivor blames ``failed``, says so once, and names its operation (and
    ``address``, the failed rank's hostfile address, when given: never a survivor's own)."""
    for r, res in results.items():
        message = res["message"]
        assert res["peer"] == failed, (r, res)
        if address is not None:
            assert message.endswith(f"[peer rank {failed} ({address})]"), (r, res, address)
        assert f"rank {failed}" in message, (r, res)
        assert message.startswith(f"rank {r}: "), (r, res)
        assert res["op"] and f"rank {r}: {res['op']}: " in message, (r, res)
        if op is not None:
            assert res["op"] == op, (r, res)
        assert message.count("[peer ") == 1, (r, res)
        assert message.count("failed first") <= 1 and message.count("reported") <= 1, (r, res)
        if "reported" in message:  # relayed: says who failed first, in one layer
            assert f"rank {failed} failed first" in message, (r, res)
    for r, res in sorted(results.items()):
        print(f"  {res['type']} after {res['after']} s: {res['message']}")


def test_a_rank_that_never_starts_is_named_by_every_other_rank(ring_factory):
    ring = ring_factory(4, timeout=3)
    ring.start([0, 1, 3])
    results = ring.results([0, 1, 3], limit=30)
    check_blame(results, failed=2, op="init", address=ring.addresses[2][0])
    for r, res in results.items():
        assert res["type"] == "CommTimeoutError" and res["after"] < ring.timeout + 3, (r, res)
    assert "failed first" in results[0]["message"], results[0]  # a non-neighbour hears of it


def test_a_rank_killed_during_init_is_named_by_every_other_rank(ring_factory):
    ring = ring_factory(4, timeout=4)
    ring.start([2])              # rank 2 binds its port and waits for rank 1 ...
    deadline = time.monotonic() + 20
    while not ring.listening(2):
        assert time.monotonic() < deadline, "rank 2 never listened"
        time.sleep(0.02)
    ring.procs[2].send_signal(signal.SIGSTOP)  # ... and freezes there
    ring.start([0, 1, 3])        # rank 1's connection to it is taken by its kernel
    time.sleep(1.0)
    killed = time.monotonic()
    ring.procs[2].send_signal(signal.SIGKILL)  # ... and it dies in init()
    results = ring.results([0, 1, 3], limit=30)
    check_blame(results, failed=2, op="init", address=ring.addresses[2][0])
    print("time from the kill to the last error:", round(time.monotonic() - killed, 2))


def test_a_rank_killed_mid_collective_is_named_by_every_other_rank(ring_factory):
    ring = ring_factory(4, timeout=30)
    ring.start(range(4))
    ring.wait_ready(range(4))
    time.sleep(0.2)
    ring.procs[1].send_signal(signal.SIGKILL)
    results = ring.results([0, 2, 3], limit=30)
    check_blame(results, failed=1, op="all_sum", address=ring.addresses[1][0])
    for r, res in results.items():
        assert res["type"] == "PeerLostError", (r, res)


@pytest.mark.parametrize("frozen", [1, 2])
def test_a_frozen_rank_is_named_by_every_other_rank(ring_factory, frozen):
    ring = ring_factory(4, timeout=2)
    ring.start(range(4))
    ring.wait_ready(range(4))
    time.sleep(0.2)
    ring.procs[frozen].send_signal(signal.SIGSTOP)
    survivors = [r for r in range(4) if r != frozen]
    try:
        results = ring.results(survivors, limit=30)
    finally:
        ring.procs[frozen].send_signal(signal.SIGCONT)
    check_blame(results, failed=frozen, op="all_sum", address=ring.addresses[frozen][0])
    for r, res in results.items():
        assert res["type"] == "CommTimeoutError", (r, res)
        assert res["after"] < 2 + 3, (r, res)


# -- notices during init() ---------------------------------------------------------------------

def notice(kind: int, origin: int, failed: int, text: str) -> bytes:
    """An abort notice as docs/wire-protocol.md writes it (kind 2: MismatchError)."""
    data = text.encode()
    return struct.pack("!4sBIIH", b"RCAB", kind, origin, failed, len(data)) + data


def rogue_last_rank(hostfile, job_id: str, message: bytes, timeout: float = 20) -> None:
    """Take the last rank of ``hostfile`` through ringcomm's real handshake, then, instead of
    the warm-up, send ``message`` to both neighbours, as a rank that fails in init() does."""
    size = len(hostfile)
    setup = TcpSetup(size - 1, hostfile, protocol="ringcomm", job_id=job_id, token=None,
                     warm_up=True)
    setup.form(time.monotonic() + timeout)
    try:
        for sock, _ in setup.control.values():
            sock.sendall(message)
        time.sleep(1.0)  # the data connections stay open: only the notice tells
    finally:
        setup.close()


def run_ring_with_rogue(message: bytes, size: int = 4) -> dict[int, BaseException | None]:
    """Ranks 0..size-2 in threads (init, then one all_sum), the last rank a rogue."""
    hostfile = [[str(a) for a in r] for r in localhost_hostfile(size, 1)]
    errors: dict[int, BaseException | None] = {}

    def rank(r: int) -> None:
        try:
            g = ringcomm.init(rank=r, hostfile=hostfile, timeout=10, job_id="rogue-test")
            g.all_sum(np.ones(4, np.float32))
            errors[r] = None
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors[r] = e
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size - 1)]
    for t in threads:
        t.start()
    rogue_last_rank(ringcomm.transports.parse_hostfile(hostfile), "rogue-test", message)
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a rank hung"
    return errors


def test_a_failure_reported_during_the_warm_up_reaches_every_rank():
    """Rank 3 fails in init() after the handshake; ranks 0 and 2 hear it in their warm-up
    and must pass it on, so that rank 1, which is not rank 3's neighbour, names rank 3 too."""
    errors = run_ring_with_rogue(notice(2, 3, 3, "operations differ: a test's words"))
    for r, e in sorted(errors.items(), key=lambda item: item[0] != 1):  # rank 1 first
        assert isinstance(e, ringcomm.MismatchError), (r, e)
        assert e.peer == 3 and "rank 3 failed first; rank 3 reported: operations differ: " \
            "a test's words" in str(e), (r, str(e))
        assert e.op in ("init", "all_sum") and str(e).count("[peer ") == 1, (r, str(e))
        print(f"  rank {r}: {e}")


def test_a_mismatch_error_carries_the_peer_address():
    hostfile = [[str(a) for a in r] for r in localhost_hostfile(2, 1)]
    got: dict[int, BaseException] = {}

    def rank(r: int) -> None:
        try:
            g = ringcomm.init(rank=r, hostfile=hostfile, timeout=10)
            (g.all_sum if r == 0 else g.all_gather)(np.ones(1000, np.float32))
        except ringcomm.RingcommError as e:
            got[r] = e
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for r in range(2):
        e = got[r]
        assert isinstance(e, ringcomm.MismatchError), (r, e)
        if "reported" not in str(e):  # seen first hand: the peer is the other rank
            assert e.peer == 1 - r, (r, str(e))
        assert e.address == hostfile[e.peer][0], (r, e.peer, e.address)
        assert f"[peer rank {e.peer} ({hostfile[e.peer][0]})]" in str(e), str(e)


# -- ranks that wait for each other: a likely deadlock in the program, nobody's failure -------

WAIT_FOR_EACH_OTHER = textwrap.dedent("""
    import json, os, time
    import numpy as np, ringcomm
    g = ringcomm.init(strict=True, timeout=3)
    r, n = g.rank(), g.size()
    time.sleep(float(os.environ.get("LATE", "0")) if r == 1 else 0)
    start = time.monotonic()
    try:
        g.recv((4,), "float32", (r + n // 2) % n)  # from the rank that receives from this one
        print(json.dumps({"message": "returned"}))
    except ringcomm.RingcommError as e:
        print(json.dumps({"type": type(e).__name__, "peer": e.peer, "message": str(e),
                          "after": round(time.monotonic() - start, 3)}))
""")


def wait_for_each_other(tmp_path: Path, size: int, late: float = 0.0) -> list[dict]:
    procs = start_ranks(tmp_path, size, WAIT_FOR_EACH_OTHER, LATE=str(late))
    outs = [p.communicate(timeout=60) for p in procs]
    results = []
    for r, (out, err) in enumerate(outs):
        lines = out.strip().splitlines()
        assert lines, f"rank {r} printed nothing: {err}"
        results.append(json.loads(lines[-1]))
        print(f"  rank {r}: {results[-1]}")
    return results


@pytest.mark.parametrize("late", [0.0, 1.0], ids=["together", "one-second-apart"])
def test_two_neighbours_that_both_wait_in_recv_are_told_they_wait_for_each_other(tmp_path,
                                                                                  late):
    """Both ranks of a ring of two call recv from the other.  Each must be told that it
    waited to receive from the other while the other was waiting to receive from it (a
    likely deadlock), blaming the other rank, never "rank <itself> failed first".  Apart:
    rank 0's deadline passes first, and rank 1 hears it through rank 0's notice."""
    results = wait_for_each_other(tmp_path, 2, late)
    for r, got in enumerate(results):
        message = got["message"]
        assert got.get("type") == "CommTimeoutError" and got["peer"] == 1 - r, (r, got)
        assert f"rank {r} failed first" not in message, (r, message)
        assert "each waits for the other, a likely deadlock in the program" in message, \
            (r, message)
        assert got["after"] < 3 + 2, (r, got)
        assert (f"rank {1 - r} was itself waiting to receive from rank {r}" in message or
                f"this rank was waiting to receive from rank {1 - r}, which reached its "
                "deadline waiting for this rank" in message), (r, message)
    if late:  # rank 0 saw it first hand; rank 1's own deadline was still a second away
        assert ("deadline passed while waiting to receive from rank 1 on left[0]; rank 1 was "
                "itself waiting to receive from rank 0") in results[0]["message"], results[0]
        assert ("this rank was waiting to receive from rank 0, which reached its deadline "
                "waiting for this rank") in results[1]["message"], results[1]


def test_non_neighbours_that_both_wait_in_recv_are_never_blamed_for_themselves(tmp_path):
    """Four ranks, each waiting to receive from the rank opposite (a direct link that
    neither side opens, since a sender opens it): every rank names the other one, says
    that a recv of its own would make this a likely deadlock, and none is told that it
    failed first itself."""
    results = wait_for_each_other(tmp_path, 4)
    for r, got in enumerate(results):
        message = got["message"]
        assert got.get("type") == "CommTimeoutError", (r, got)
        assert f"rank {r} failed first" not in message, (r, message)
        assert "a likely deadlock in the program" in message, (r, message)
        assert got["after"] < 3 + 2, (r, got)


@pytest.mark.parametrize("text,want", [
    ("1", {1}), ("0 3", {0, 3}), ("", set()), ("3 9", {3}), ("x", set()), ("\u00b2", set()),
    ("-1", set()), ("1 " * 9, set()), ("9" * 40, set())])
def test_a_probe_answer_lists_whom_its_sender_waits_for_or_nothing(text, want):
    """What a neighbour's probe answer says it waits to receive from (4 ranks): ranks of the
    group only, and nothing at all from text that is not such a list."""
    answer = notices.Notice(notices.ALIVE, 1, notices.NO_RANK, text)
    assert notices.receiving_from(answer, 4) == want
    assert notices.receiving_from(notices.decode(
        notices.alive(1, want)[:notices.ABORT.size],
        lambda n: notices.alive(1, want)[notices.ABORT.size:][:n]), 4) == want
