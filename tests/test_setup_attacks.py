"""TCP ring set-up under attack and disagreement (issue 15, items 1, 3, 4, 5 and 9).

Real rank processes or ``ringcomm.init`` threads on real localhost sockets, and attackers that
are plain sockets in this process: two hand-started jobs on one hostfile, a storm of silent
connections, forged HELLOs from someone who knows the job digest but not the token, peers that
dribble the handshake a byte at a time, ranks whose settings disagree, and MLX peers.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ringcomm
from ringcomm.launch import localhost_hostfile
from ringcomm.transports.handshake import HELLO, MAC_SIZE, Hello, job_digest
from ringcomm.transports.hostfile import write_hostfile
from tests.procs import ReportingRank, env

RANK = r"""
import json, os, sys, time
import numpy as np, ringcomm
print("ready", flush=True)
sys.stdin.readline()  # the test says when this rank starts
start = time.monotonic()
try:
    g = ringcomm.init(strict=True)
    joined = time.monotonic() - start
    y = ringcomm.all_sum(np.full(4, float(os.environ.get("VALUE", "1"))))
    time.sleep(float(os.environ.get("HOLD", "0")))  # a job that goes on running
    g.close()
    print(json.dumps({"sum": float(y[0]), "joined": joined}), flush=True)
except ringcomm.RingcommError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e),
                      "peer": getattr(e, "peer", None), "after": time.monotonic() - start}),
          flush=True)
"""


class Rank(ReportingRank):
    """One rank process of ``RANK``, started at once but held before init() until ``go()``,
    so that the order in which ranks start does not depend on how long imports take."""

    def __init__(self, hostfile, rank: int, **extra: str) -> None:
        self.name = f"rank {rank} {extra}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RANK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env=env(MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile), **extra))

    def ready(self, timeout: float = 120) -> None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        assert line.strip() == "ready", f"{self.name} did not start: {line!r}"

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()


def start_all(ranks: list[Rank]) -> None:
    for r in ranks:
        r.ready()


class Join(threading.Thread):
    """``ringcomm.init`` of one rank in a thread: its group or error, and how long it took."""

    def __init__(self, rank: int, hostfile, **kw) -> None:
        super().__init__(daemon=True)
        self.rank, self.hostfile, self.kw = rank, hostfile, kw
        self.group: ringcomm.Group | None = None
        self.error: BaseException | None = None
        self.elapsed = float("nan")
        self.start()

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            self.group = ringcomm.init(rank=self.rank, hostfile=self.hostfile, **self.kw)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.elapsed = time.monotonic() - t0

    def outcome(self, timeout: float = 60) -> ringcomm.Group | BaseException:
        self.join(timeout)
        assert not self.is_alive(), f"init of rank {self.rank} still running after {timeout} s"
        return self.group if self.error is None else self.error


def sums(groups: list[ringcomm.Group]) -> list[np.ndarray]:
    """all_sum of (rank + 1) on every group of one ring, each in its own thread."""
    out: dict[int, object] = {}

    def run(g):
        try:
            out[g.rank()] = ringcomm.all_sum(np.full(3, g.rank() + 1, np.int64), group=g)
        except BaseException as e:  # noqa: BLE001
            out[g.rank()] = e
    threads = [threading.Thread(target=run, args=(g,), daemon=True) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return [out.get(g.rank()) for g in groups]


def default_job(hostfile) -> bytes:
    """The job digest init() uses without RINGCOMM_JOB_ID: what an attacker can compute from the
    hostfile, and what every HELLO carries in clear."""
    return job_digest(json.dumps([[str(a) for a in r] for r in hostfile]))


def dial(address, timeout: float = 10) -> socket.socket:
    """A connection to ``address`` once something listens there."""
    end = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((address.host, address.port), timeout=2)
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)


# -- 1. two jobs on one hostfile ----------------------------------------------------------------

def interleaved_jobs(tmp_path, job_ids=("", "")) -> tuple[dict[str, dict], list[int]]:
    """Jobs A (every rank adds 1) and B (adds 100) on one hostfile, started A0, B1, A1, B0;
    each rank's result, and the ports of ranks 0 and 1."""
    hostfile = tmp_path / "hostfile.json"
    addresses = localhost_hostfile(2, 1)
    write_hostfile(hostfile, addresses)
    ids = dict(zip("AB", job_ids))
    ranks = {name: Rank(hostfile, int(name[1]), VALUE="1" if name[0] == "A" else "100",
                        RINGCOMM_TIMEOUT="10", HOLD="3",
                        **({"RINGCOMM_JOB_ID": ids[name[0]]} if ids[name[0]] else {}))
             for name in ("A0", "B1", "A1", "B0")}
    try:
        start_all(list(ranks.values()))
        for r in ranks.values():
            r.go()
            time.sleep(0.5)
        got = {name: r.result(30) for name, r in ranks.items()}
        for name, result in got.items():
            print(name, {k: v for k, v in result.items() if k != "stderr"})
        return got, [r[0].port for r in addresses]
    finally:
        for r in ranks.values():
            r.kill()


def assert_port_taken(result: dict, port: int) -> None:
    assert result.get("error") == "CommError", result
    assert f"cannot listen on 127.0.0.1:{port}" in result["message"], result
    assert "in use" in result["message"] and "another job" in result["message"], result
    assert result["after"] < 2.0, result  # at once, not at the deadline (10 s)


def test_two_hand_started_jobs_on_one_hostfile_never_cross_wire(tmp_path):
    """Without RINGCOMM_JOB_ID, A0 and B1 cannot be told from one job's two ranks (same
    hostfile, same default job id): they form a ring. The later rank on each port (A1 and
    B0) must fail at once naming the port, instead of pairing up and returning 101 as well."""
    got, ports = interleaved_jobs(tmp_path)
    assert_port_taken(got["A1"], ports[1])  # B1 holds rank 1's port
    assert_port_taken(got["B0"], ports[0])  # A0 holds rank 0's port
    assert got["A0"].get("sum") == got["B1"].get("sum") == 101.0, got  # one ring, both agree


def test_two_jobs_with_their_own_job_ids_give_only_right_results(tmp_path):
    """With a job id per job (the launcher sets one), B1 is refused as another job at once,
    A0 and A1 form job A's ring, and B0 finds its port taken: no wrong result anywhere."""
    got, ports = interleaved_jobs(tmp_path, job_ids=("job-A", "job-B"))
    assert got["B1"].get("error") == "CommError" and "another job" in got["B1"]["message"], got
    assert got["B1"]["after"] < 2.0, got
    assert got["A0"].get("sum") == got["A1"].get("sum") == 2.0, got
    assert_port_taken(got["B0"], ports[0])


# -- 3. a storm of silent connections ----------------------------------------------------------

def test_a_storm_of_silent_connections_neither_crashes_init_nor_stops_the_ring(tmp_path):
    """64 silent connections while rank 0 waits; then, while rank 0 is stopped (so that both
    events reach it in one batch, as on a busy machine), one more (the table is full: the
    oldest is evicted) and the oldest closed by its owner. Rank 0 must neither raise anything
    but a RingcommError nor lose track of the ring."""
    hostfile = tmp_path / "hostfile.json"
    addresses = localhost_hostfile(2, 1)
    write_hostfile(hostfile, addresses)
    ranks = [Rank(hostfile, r, RINGCOMM_TIMEOUT="30") for r in (0, 1)]
    silent: list[socket.socket] = []
    try:
        start_all(ranks)
        ranks[0].go()
        for _ in range(64):
            silent.append(dial(addresses[0][0]))
            time.sleep(0.005)  # within the listen backlog: every one is accepted
        time.sleep(0.5)
        ranks[0].proc.send_signal(signal.SIGSTOP)
        try:
            silent.append(dial(addresses[0][0]))
            silent[0].close()
            time.sleep(0.2)
        finally:
            ranks[0].proc.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        ranks[1].go()
        got = [r.result(60) for r in ranks]
    finally:
        for s in silent:
            s.close()
        for r in ranks:
            r.kill()
    print(f"rank 1 joined {got[1].get('joined', 0) * 1000:.0f} ms after it started")
    assert [g.get("sum") for g in got] == [2.0, 2.0], got


# -- 4. forged HELLOs from someone without the token --------------------------------------------

class Forger(threading.Thread):
    """Knows the job digest (it travels in clear) but not the token: opens a connection to
    ``address`` every ``period`` s with a HELLO that passes every check but the MAC. Half of
    them then send a wrong MAC, the others stall, holding the connection open."""

    def __init__(self, address, job: bytes, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.address, self.job, self.period = address, job, period
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        self.sent = 0
        self.start()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                s = socket.create_connection((self.address.host, self.address.port), timeout=1)
            except OSError:
                continue
            self.socks.append(s)
            index = self.sent % 2  # the data connection or the control connection
            s.sendall(Hello(self.job, 1, 2, index, True, os.urandom(16), True).pack())
            self.sent += 1
            if self.sent % 2:
                continue  # stall, waiting to be dropped
            try:
                s.recv(HELLO.size + MAC_SIZE)
                s.sendall(os.urandom(MAC_SIZE))
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        for s in self.socks:
            s.close()


def test_forged_hellos_do_not_stop_a_ring_with_a_token():
    hostfile = localhost_hostfile(2, 1)
    rank0 = Join(0, hostfile, timeout=30, token="s3cret")
    forger = Forger(hostfile[0][0], default_job(hostfile))
    try:
        time.sleep(6)  # longer than a pending connection may take (5 s)
        assert rank0.is_alive(), f"rank 0 stopped under the flood: {rank0.error!r}"
        rank1 = Join(1, hostfile, timeout=30, token="s3cret")
        groups = [rank1.outcome(), rank0.outcome()]
        sent = forger.sent
    finally:
        forger.close()
    assert all(isinstance(g, ringcomm.Group) for g in groups), groups
    print(f"rank 1 joined {rank1.elapsed * 1000:.0f} ms after it started, "
          f"under a flood of {sent} forged HELLOs")
    assert sent > 20
    assert rank1.elapsed < 1.0, rank1.elapsed
    try:
        assert [list(s) for s in sums(groups)] == [[3, 3, 3]] * 2
    finally:
        for g in groups:
            g.close()


# -- 5. peers that dribble the handshake; a spin longer than the deadline ------------------------

class Dribbler(threading.Thread):
    """A peer that sends ``head`` (and reads what it is sent), then one byte every ``every``
    seconds (None: nothing more, holding the connection open)."""

    def __init__(self, sock: socket.socket, head: bytes, read: int = 0,
                 every: float | None = 2.0) -> None:
        super().__init__(daemon=True)
        self.sock, self.head, self.read, self.every = sock, head, read, every
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            self.sock.sendall(self.head)
            if self.read:
                self.sock.settimeout(10)
                self.sock.recv(self.read)
            while not self.stop.wait(self.every or 60):
                if self.every:
                    self.sock.sendall(b"\0")
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.sock.close()


@pytest.mark.parametrize("every", [2.0, None], ids=["dribbling", "silent"])
def test_a_listener_that_dribbles_the_handshake_cannot_stretch_the_deadline(every):
    """A fake listener on rank 1's right neighbour's port sends the magic, then a byte every
    2 s; rank 1 (which connects first) must end at its 3 s deadline naming rank 0.  One that
    sends nothing at all (as MLX's ring does) is probably not a ringcomm rank: say so."""
    hostfile = localhost_hostfile(2, 1)
    with socket.create_server((hostfile[0][0].host, hostfile[0][0].port)) as fake:
        rank1 = Join(1, hostfile, timeout=3)
        fake.settimeout(10)
        conn, _ = fake.accept()
        dribbler = Dribbler(conn, b"RCMH" if every else b"", every=every)
        try:
            error = rank1.outcome(30)
        finally:
            dribbler.close()
    print(f"rank 1 failed after {rank1.elapsed:.2f} s: {error}")
    assert isinstance(error, ringcomm.CommTimeoutError), error
    assert error.peer == 0 and "rank 0" in str(error), error
    assert rank1.elapsed < 3 + 1.5, rank1.elapsed
    if every is None:
        assert "sent nothing back" in str(error) and "protocol='mlx'" in str(error), error


def test_a_connector_that_dribbles_its_proof_cannot_stretch_the_deadline():
    """A connection with a HELLO that passes every check (no token is set) that then sends
    its MAC a byte every 2 s: rank 0 must end at its 3 s deadline."""
    hostfile = localhost_hostfile(2, 1)
    rank0 = Join(0, hostfile, timeout=3)
    hello = Hello(default_job(hostfile), 1, 2, 0, False, os.urandom(16), True).pack()
    dribbler = Dribbler(dial(hostfile[0][0]), hello, read=HELLO.size + MAC_SIZE)
    try:
        error = rank0.outcome(30)
    finally:
        dribbler.close()
    print(f"rank 0 failed after {rank0.elapsed:.2f} s: {error}")
    assert isinstance(error, ringcomm.CommTimeoutError), error
    assert error.peer == 1 and "rank 1" in str(error), error
    assert rank0.elapsed < 3 + 1.5, rank0.elapsed


def test_a_spin_longer_than_the_deadline_stops_at_the_deadline(monkeypatch):
    """MLX's protocol, so that the deadline is all there is (ringcomm's protocol then probes
    the neighbours, for up to half a second, to name a frozen one)."""
    monkeypatch.setenv("RINGCOMM_SPIN_US", "1000000")  # the most settings.py allows: 1 s
    hostfile = localhost_hostfile(2, 1)
    joins = [Join(r, hostfile, timeout=30, protocol="mlx") for r in (0, 1)]
    groups = [j.outcome() for j in joins]
    assert all(isinstance(g, ringcomm.Group) for g in groups), groups
    try:
        groups[0].timeout = 0.3  # rank 1 never calls: rank 0 waits until this deadline
        start = time.monotonic()
        with pytest.raises(ringcomm.CommTimeoutError):
            ringcomm.all_sum(np.ones(4, np.float32), group=groups[0])
        elapsed = time.monotonic() - start
    finally:
        for g in groups:
            g.close()
    print(f"all_sum with a 0.3 s deadline and a 1 s spin ended after {elapsed:.3f} s")
    assert elapsed < 0.8, elapsed


# -- 9. ranks that disagree -----------------------------------------------------------------------

@pytest.mark.parametrize("kw0,kw1,words", [
    ({}, {"token": "s3cret"}, "RINGCOMM_TOKEN"),
], ids=["token-on-the-connector-only"])
def test_a_disagreement_both_sides_can_trust_fails_both_at_once(kw0, kw1, words):
    hostfile = localhost_hostfile(2, 1)
    rank0 = Join(0, hostfile, timeout=10, **kw0)
    time.sleep(0.2)
    rank1 = Join(1, hostfile, timeout=10, **kw1)
    errors = [rank0.outcome(), rank1.outcome()]
    for r, (e, j) in enumerate(zip(errors, (rank0, rank1))):
        print(f"rank {r} after {j.elapsed:.3f} s: {e!r}")
        assert isinstance(e, ringcomm.CommError) and words in str(e), e
        assert e.peer == 1 - r, e
    assert rank1.elapsed < 2 and rank0.elapsed < 2.2, (rank0.elapsed, rank1.elapsed)


@pytest.mark.parametrize("kw0,kw1,words", [
    ({"token": "s3cret"}, {}, "RINGCOMM_TOKEN"),
    ({"token": "s3cret"}, {"token": "guess"}, "RINGCOMM_TOKEN"),
    ({"job_id": "job-A"}, {"job_id": "job-B"}, "another job"),
], ids=["token-on-the-acceptor-only", "different-tokens", "different-job-ids"])
def test_a_refusal_a_forger_could_send_is_named_at_the_acceptors_deadline(kw0, kw1, words):
    """The acceptor cannot tell these refused connections from forged ones (they prove
    nothing it can check), so it keeps waiting for the right peer; at its deadline it names
    what it refused instead of asking whether rank 1 is running. The connector fails at once."""
    hostfile = localhost_hostfile(2, 1)
    rank0 = Join(0, hostfile, timeout=3, **kw0)
    time.sleep(0.2)
    rank1 = Join(1, hostfile, timeout=3, **kw1)
    errors = [rank0.outcome(), rank1.outcome()]
    for r, (e, j) in enumerate(zip(errors, (rank0, rank1))):
        print(f"rank {r} after {j.elapsed:.3f} s: {e!r}")
    assert isinstance(errors[1], ringcomm.CommError) and words in str(errors[1]), errors[1]
    assert rank1.elapsed < 2, rank1.elapsed
    assert isinstance(errors[0], ringcomm.CommTimeoutError), errors[0]
    assert words in str(errors[0]) and "is rank 1 running" not in str(errors[0]), errors[0]
    assert errors[0].peer == 1 and rank0.elapsed < 3 + 1.5, rank0.elapsed


def test_ranks_that_disagree_on_the_warm_up_both_fail_at_once_naming_the_sides(tmp_path):
    hostfile = tmp_path / "hostfile.json"
    write_hostfile(hostfile, localhost_hostfile(2, 1))
    for token in ({}, {"RINGCOMM_TOKEN": "s3cret"}):
        ranks = [Rank(hostfile, r, RINGCOMM_TCP_WARMUP=warm, RINGCOMM_TIMEOUT="10", **token)
                 for r, warm in enumerate("10")]
        try:
            start_all(ranks)
            for r in ranks:
                r.go()
            got = [r.result(30) for r in ranks]
        finally:
            for r in ranks:
                r.kill()
        for r, result in enumerate(got):
            assert result.get("error") == "CommError", (token, result)
            assert ("rank 0 warms its connections up (RINGCOMM_TCP_WARMUP=1) and rank 1 does "
                    "not (RINGCOMM_TCP_WARMUP=0)") in result["message"], (token, result)
            assert result["peer"] == 1 - r and result["after"] < 2, (token, result)


MLX_RANK = """
import os
import mlx.core as mx
g = mx.distributed.init(strict=True, backend="ring")
mx.eval(mx.distributed.all_sum(mx.ones((int(os.environ.get("ELEMENTS", "1000")),))))
"""


def start_mlx(hostfile, rank: int, elements: int = 1000) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", MLX_RANK], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env=env(MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile),
                                    ELEMENTS=str(elements)))


@pytest.mark.parametrize("mlx_rank", [0, 1])
def test_a_ringcomm_rank_tells_an_mlx_peer_to_use_protocol_mlx(tmp_path, mlx_rank):
    """ringcomm at the default protocol against an MLX rank (MLX's ring sends nothing during
    set-up): the error must say so and suggest protocol='mlx', by the deadline."""
    pytest.importorskip("mlx.core")
    hostfile = tmp_path / "hostfile.json"
    write_hostfile(hostfile, localhost_hostfile(2, 1))
    mlx = start_mlx(hostfile, mlx_rank)
    ours = Rank(hostfile, 1 - mlx_rank, RINGCOMM_TIMEOUT="4")
    try:
        ours.ready()
        time.sleep(3 if mlx_rank == 0 else 0)  # MLX's rank 0 accepts first: let it listen
        ours.go()
        got = ours.result(30)
    finally:
        ours.kill()
        mlx.kill()
        mlx.communicate()
    print(got)
    assert got.get("error") in ("CommError", "CommTimeoutError"), got
    assert "protocol='mlx'" in got["message"], got
    assert got["peer"] == mlx_rank and got["after"] < 4 + 1.5, got


@pytest.mark.parametrize("elements", [1, 4, 12])
def test_a_connector_tells_an_mlx_rank_that_sends_a_few_bytes_to_use_protocol_mlx(tmp_path,
                                                                                elements):
    """MLX's rank 0 accepts ringcomm's rank 1 and runs a small all_sum over the connection:
    a few bytes come back where the HELLO should (4 elements: 4 bytes back), and the
    connector must say at once that rank 0 is not a ringcomm rank and suggest
    protocol='mlx', never wait for the deadline ("the peer is too slow").  With 1 element
    MLX takes the HELLO's first bytes as its data, sends nothing back and exits: refused
    connects follow, and the deadline error must say that rank 0 accepted and closed a
    connection without answering, with the same hint."""
    pytest.importorskip("mlx.core")
    hostfile = tmp_path / "hostfile.json"
    write_hostfile(hostfile, localhost_hostfile(2, 1))
    mlx = start_mlx(hostfile, 0, elements)
    ours = Rank(hostfile, 1, RINGCOMM_TIMEOUT="10")  # refused connects retried meanwhile
    try:
        ours.ready()
        ours.go()
        got = ours.result(60)
    finally:
        ours.kill()
        mlx.kill()
        mlx.communicate()
    print(got)
    assert "if rank 0 is an MLX process, use protocol='mlx'" in got["message"], got
    assert got["peer"] == 0, got
    if elements == 1:
        assert got.get("error") == "CommTimeoutError", got
        assert "rank 0 accepted 1 connection(s) and closed them" in got["message"], got
        assert got["after"] < 10 + 1.5, got
    else:
        assert got.get("error") == "CommError", got
        assert "rank 0 does not speak ringcomm's protocol" in got["message"], got
        assert got["after"] < 10 - 3, got  # MLX's start-up, not the deadline


def test_an_acceptor_tells_a_peer_that_sends_data_to_use_protocol_mlx():
    """Where rank 1 should send its HELLO, data comes: an MLX rank's all_sum of 1000 ones
    (float32), as MLX's ring sends it once its own connections formed.  Anyone may send
    that, so rank 0 waits for its deadline; its error must name the bytes and suggest
    protocol='mlx', as it does for a connection that sends nothing."""
    hostfile = localhost_hostfile(2, 1)
    rank0 = Join(0, hostfile, timeout=3)
    data = dial(hostfile[0][0])
    try:
        data.sendall(np.ones(1000, np.float32).tobytes())
        error = rank0.outcome(30)
    finally:
        data.close()
    print(f"rank 0 failed after {rank0.elapsed:.2f} s: {error}")
    assert isinstance(error, ringcomm.CommTimeoutError) and error.peer == 1, error
    assert "sent bytes that are not a ringcomm HELLO (first bytes b'\\x00\\x00\\x80?" \
        in str(error), error
    assert "if rank 1 is an MLX process, use protocol='mlx'" in str(error), error
    assert rank0.elapsed < 3 + 1.5, rank0.elapsed
