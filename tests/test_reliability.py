"""Failures end in typed errors on every rank, quickly: dead, frozen and interrupted peers,
mismatched calls, stray and rogue connections, huge messages, and many init/close cycles."""
from __future__ import annotations

import re
import signal
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ringcomm
from ringcomm.launch import localhost_hostfile
from ringcomm.transports.hostfile import read_hostfile
from tests.cluster import Cluster
from tests.procs import start_ranks

# -- peers that die, freeze or are interrupted ------------------------------------------------

LOOP_UNTIL_FAILURE = """
import numpy as np, ringcomm, os, time, sys
g = ringcomm.init(strict=True, timeout=60)
x = np.ones(1 << 20, np.float32)
ringcomm.all_sum(x)
print("ready", flush=True)
try:
    while True:
        ringcomm.all_sum(x)
except ringcomm.RingcommError as e:
    print(f"{time.time():.6f} {type(e).__name__}: {e}", flush=True)
try:
    ringcomm.all_sum(x)
except ringcomm.GroupBrokenError as e:
    print("then broken", flush=True)
"""


def wait_ready(procs):
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()


@pytest.mark.parametrize("victim", [0, 1])
def test_every_survivor_of_a_killed_rank_raises_within_a_second(tmp_path, victim):
    procs = start_ranks(tmp_path, 4, LOOP_UNTIL_FAILURE)
    dead = read_hostfile(tmp_path / "hostfile.json")[victim][0]
    wait_ready(procs)
    time.sleep(0.2)
    killed_at = time.time()
    procs[victim].send_signal(signal.SIGKILL)
    delays = {}
    for r, p in enumerate(procs):
        if r == victim:
            continue
        out, err = p.communicate(timeout=30)
        first = out.splitlines()[0]
        stamp, message = first.split(" ", 1)
        delays[r] = float(stamp) - killed_at
        assert message.startswith("PeerLostError"), (r, out, err)
        assert f"rank {victim}" in message and "all_sum" in message, message
        assert message.endswith(f"[peer rank {victim} ({dead})]"), (message, dead)  # not r's own
        assert "then broken" in out
    print("detection delays (s):", {r: round(d, 3) for r, d in delays.items()})
    assert max(delays.values()) < 1.0, delays


FREEZE = """
import numpy as np, ringcomm, time, resource
g = ringcomm.init(strict=True, timeout=2)
ringcomm.barrier()
print("ready", flush=True)
if g.rank() == 1:
    time.sleep(60)
start, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
try:
    ringcomm.all_sum(np.ones(10, np.float32))
except TimeoutError as e:
    used = resource.getrusage(resource.RUSAGE_SELF)
    busy = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    print(f"{type(e).__name__} after {time.monotonic() - start:.2f}s using {busy:.3f}s of CPU: {e}", flush=True)
"""


def test_a_frozen_peer_ends_at_the_deadline_without_spinning(tmp_path):
    procs = start_ranks(tmp_path, 3, FREEZE)
    wait_ready(procs)
    procs[1].send_signal(signal.SIGSTOP)
    try:
        outs = {r: procs[r].communicate(timeout=30)[0] for r in (0, 2)}
    finally:
        procs[1].kill()
    for r, out in outs.items():
        m = re.search(r"(\w+Error) after ([\d.]+)s using ([\d.]+)s of CPU", out)
        assert m, out
        assert m.group(1) == "CommTimeoutError" and 1.9 < float(m.group(2)) < 4, out
        assert float(m.group(3)) < 0.2, f"rank {r} spun while blocked: {out}"


INTERRUPTED = """
import numpy as np, ringcomm, time, sys
g = ringcomm.init(strict=True, timeout=60)
ringcomm.barrier()
print("ready", flush=True)
if g.rank() == 1:
    time.sleep(60)
try:
    ringcomm.all_sum(np.ones(10, np.float32))
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
except ringcomm.RingcommError as e:
    print(f"{type(e).__name__}: {e}", flush=True)
"""


def test_ctrl_c_interrupts_a_blocked_rank_and_the_others_learn_of_it(tmp_path):
    procs = start_ranks(tmp_path, 3, INTERRUPTED)
    wait_ready(procs)
    time.sleep(0.3)
    procs[0].send_signal(signal.SIGINT)
    out0 = procs[0].communicate(timeout=10)[0]
    assert "KeyboardInterrupt" in out0
    out2 = procs[2].communicate(timeout=10)[0]
    assert "PeerLostError" in out2 and "rank 0 reported" in out2 and "KeyboardInterrupt" in out2
    procs[1].kill()


# -- mismatched calls -------------------------------------------------------------------------

def call(group, what: str):
    """Rank side: run one collective described by ``what`` and report how it ended."""
    x = {"f32": np.ones(1000, np.float32), "f32+1": np.ones(1001, np.float32),
         "i32": np.ones(1000, np.int32), "f32x2": np.ones((2, 500), np.float32),
         "f32x2t": np.ones((500, 2), np.float32)}
    op, kind = what.split(":")
    try:
        getattr(ringcomm, op)(x[kind], group=group)
    except ringcomm.RingcommError as e:
        return type(e).__name__, str(e)
    return None


@pytest.mark.parametrize("calls", [
    ["all_sum:f32", "all_sum:f32+1", "all_sum:f32"],       # sizes
    ["all_sum:f32", "all_sum:i32", "all_sum:f32"],         # dtypes
    ["all_sum:f32", "all_gather:f32", "all_sum:f32"],      # operations
    ["all_gather:f32x2", "all_gather:f32x2t", "all_gather:f32x2"],  # shapes
    ["all_max:f32", "all_max:f32", "all_min:f32", "all_max:f32"],   # a non-neighbour too
], ids=["size", "dtype", "op", "shape", "four-ranks"])
def test_mismatched_calls_raise_on_every_rank(calls):
    cluster = Cluster(len(calls), 1)
    try:
        results = cluster.run_each(call, [(c,) for c in calls])
    finally:
        cluster.close()
    odd = next(i for i, c in enumerate(calls) if c != calls[0])
    first_hand = []
    for rank, result in enumerate(results):
        assert result is not None, f"rank {rank} returned garbage instead of raising"
        name, message = result
        assert name == "MismatchError" and "operations differ" in message, result
        if "reported" not in message:  # seen first hand: names both sides
            assert "this rank called" in message and "neighbour rank" in message, message
            first_hand.append(rank)
    # whoever receives from the odd rank, or is the odd rank, sees it first hand; every other
    # rank hears of it from a neighbour, naming the rank that saw it
    assert any(r == odd or abs(r - odd) in (1, len(calls) - 1) for r in first_hand), results


def calls_in_order(group, order):
    return [call(group, what) for what in order]


def test_calls_in_a_different_order_are_caught():
    cluster = Cluster(2, 1)
    try:
        results = cluster.run_each(calls_in_order, [(["all_sum:f32", "all_gather:f32"],),
                                         (["all_gather:f32", "all_sum:f32"],)])
    finally:
        cluster.close()
    for rank_results in results:
        assert rank_results[0][0] == "MismatchError"
        assert rank_results[1][0] == "GroupBrokenError"


# -- connections that are not our peers --------------------------------------------------------

def join_in_thread(rank, hostfile, results, timeout=20, **kw):
    def run():
        try:
            results[rank] = ringcomm.init(rank=rank, hostfile=hostfile, timeout=timeout, **kw)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            results[rank] = e
    t = threading.Thread(target=run)
    t.start()
    return t


def stray(address, payload: bytes, hold: float = 0.0):
    for _ in range(200):
        try:
            with socket.create_connection((address.host, address.port), timeout=2) as s:
                if payload:
                    s.sendall(payload)
                time.sleep(hold)
                return
        except OSError:
            time.sleep(0.01)


@settings(max_examples=15)
@given(payload=st.one_of(st.binary(min_size=0, max_size=300),
                         st.binary(min_size=52, max_size=52).map(lambda b: b"RCMH\x00\x01" + b[6:])),
       hold=st.sampled_from([0.0, 0.3]))
def test_stray_connections_are_refused_and_the_ring_still_forms(payload, hold):
    hostfile = localhost_hostfile(2, 2)
    results: dict = {}
    t0 = join_in_thread(0, hostfile, results)
    strays = [threading.Thread(target=stray, args=(hostfile[0][i], payload, hold)) for i in (0, 1)]
    for t in strays:
        t.start()
    for t in strays:
        t.join()
    t1 = join_in_thread(1, hostfile, results)
    t0.join(30), t1.join(30)
    groups = [results[0], results[1]]
    assert all(isinstance(g, ringcomm.Group) for g in groups), groups
    sums = {}
    threads = [threading.Thread(target=lambda g=g: sums.__setitem__(g.rank(), ringcomm.all_sum(
        np.arange(5, dtype=np.int64), group=g))) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for g in groups:
        g.close()
    assert all(np.array_equal(sums[r], 2 * np.arange(5)) for r in (0, 1)), sums


def test_another_job_on_the_same_ports_is_refused_by_name():
    hostfile = localhost_hostfile(2, 1)
    results: dict = {}
    t0 = join_in_thread(0, hostfile, results, job_id="job-A")
    intruder: dict = {}
    ti = join_in_thread(1, hostfile, intruder, job_id="job-B")  # job B's rank 1 dials rank 0
    ti.join(30)
    assert isinstance(intruder[1], ringcomm.RingcommError)
    assert "another job" in str(intruder[1]), intruder[1]
    t1 = join_in_thread(1, hostfile, results, job_id="job-A")
    t0.join(30), t1.join(30)
    assert all(isinstance(results[r], ringcomm.Group) for r in (0, 1)), results
    for r in (0, 1):
        results[r].close()


@pytest.mark.parametrize("tokens,ok", [(("s3cret", "s3cret"), True), (("s3cret", "guess"), False),
                                        (("s3cret", None), False)])
def test_token(tokens, ok):
    hostfile = localhost_hostfile(2, 1)
    results: dict = {}
    threads = [join_in_thread(r, hostfile, results, timeout=3, token=tokens[r]) for r in (0, 1)]
    if ok:
        for t in threads:
            t.join(30)
        assert all(isinstance(results[r], ringcomm.Group) for r in (0, 1)), results
        for r in (0, 1):
            results[r].close()
    else:
        threads[1].join(30)  # the connector learns at once why it was refused
        assert isinstance(results[1], ringcomm.RingcommError), results
        assert "RINGCOMM_TOKEN" in str(results[1]), results[1]
        threads[0].join(30)  # the acceptor keeps waiting for the right peer, then times out


ROGUE = """
import numpy as np, os, ringcomm, sys
from ringcomm.transports import Side
g = ringcomm.init(strict=True, timeout=10)
if g.rank() == 1:  # a peer that passed the handshake and then sends garbage where rank 0 reads
    rng = np.random.default_rng(int(sys.argv[1]))
    g._transport.post_send(Side.LEFT, 0, memoryview(rng.integers(0, 256, 4096, dtype=np.uint8)))
    g._transport.wait(__import__("time").monotonic() + 5)
    print("sent", flush=True)
    __import__("time").sleep(2)
else:
    try:
        print("GARBAGE", ringcomm.all_sum(np.ones(100, np.float32)))
    except ringcomm.MismatchError as e:
        print("MismatchError:", e)
"""


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_from_a_peer_are_an_error_not_data(tmp_path, seed):
    import subprocess
    import sys
    from tests.procs import env
    hostfile = tmp_path / "hosts.json"
    from ringcomm.transports.hostfile import write_hostfile
    write_hostfile(hostfile, localhost_hostfile(2, 1))
    procs = [subprocess.Popen([sys.executable, "-c", ROGUE, str(seed)], stdout=subprocess.PIPE,
                              text=True, env=env(MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile)))
             for r in (0, 1)]
    out = procs[0].communicate(timeout=30)[0]
    procs[1].kill()
    assert "MismatchError" in out and "not an operation header" in out, out


# -- big messages and many groups --------------------------------------------------------------

BIG = """
import numpy as np, ringcomm, resource, sys
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def count(a, value):  # in 1 MiB pieces: no temporary that shows in the peak
    return sum(int(np.count_nonzero(a[i:i + (1 << 20)] == value)) for i in range(0, a.size, 1 << 20))
g = ringcomm.init(strict=True, timeout=300)
n = (1 << 31) + 4099  # more than 2 GiB
x = np.full(n, g.rank() + 1, np.uint8)
x[-7:] = 100 + g.rank()
base = peak()
y = ringcomm.all_sum(x)
extra = peak() - base
ok_sum = y[-1] == 201 and count(y, 3) == n - 7
del y
if g.rank() == 0:
    ringcomm.send(x, 1)
    ok_p2p = True
else:
    del x
    z = ringcomm.recv((n,), np.uint8, 0)
    extra = max(extra, peak() - base)
    ok_p2p = z[-1] == 100 and count(z, 1) == n - 7
print(f"sum {ok_sum} p2p {ok_p2p} extra {extra / 2**20:.0f} MiB")
"""


def test_more_than_two_gib_with_bounded_memory(tmp_path):
    procs = start_ranks(tmp_path, 2, BIG)
    for p in procs:
        out, err = p.communicate(timeout=600)
        m = re.search(r"sum (\w+) p2p (\w+) extra (\d+) MiB", out)
        assert m and m.group(1) == m.group(2) == "True", (out, err)
        # past the input: one output of the same size, plus 1 MiB of scratch per stream
        assert int(m.group(3)) < 2048 + 16, out


CYCLES = """
import os, threading, ringcomm, numpy as np
def fds():
    return len(os.listdir("/proc/self/fd"))
g = ringcomm.init(strict=True, timeout=30); ringcomm.barrier(); g.close()
before = (fds(), threading.active_count())
for i in range(1000):
    g = ringcomm.init(strict=True, timeout=30)
    if i % 100 == 0:
        ringcomm.barrier()
    g.close()
print("before", before, "after", (fds(), threading.active_count()))
"""


def test_a_thousand_init_close_cycles_leak_nothing(tmp_path):
    procs = start_ranks(tmp_path, 2, CYCLES)
    for p in procs:
        out, err = p.communicate(timeout=300)
        m = re.search(r"before \((\d+), (\d+)\) after \((\d+), (\d+)\)", out)
        assert m, (out, err)
        assert m.group(1) == m.group(3) and m.group(2) == m.group(4), out
