"""The threaded data path (``ringcomm.lanes``): large collectives moved by several threads per
rank give the same bytes as one thread, on real rings; a failure on any thread is the same
typed error on the calling thread; Ctrl-C and deadlines still end a call; no thread outlives
``close()``."""
from __future__ import annotations

import re
import signal
import threading
import time

import numpy as np
import pytest

import ringcomm
from ringcomm import engine, lanes, plans
from ringcomm.transports import PeerLostError
from ringcomm.transports.base import LaneStopped
from tests.cluster import Cluster
from tests.procs import start_ranks
from tests.workload import DTYPES, expected, make_input, sum_tolerance

LANE = "ringcomm-lane-"
OPS = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter", "broadcast")


def _both_ways(group, op, dtype_name, shape, seed):
    """Rank side: ``op`` on lanes, then on the calling thread alone; and the lane threads."""
    x = make_input(seed, group.rank(), dtype_name, shape)
    call = (lambda: group.broadcast(x, seed % group.size())) if op == "broadcast" else \
        (lambda: getattr(group, op)(x))
    threaded = call()
    names = [t.name for t in threading.enumerate() if t.name.startswith(LANE)]
    threads, group._lanes._threads = group._lanes._threads, 1
    try:
        alone = call()
    finally:
        group._lanes._threads = threads
    return threaded, alone, names


@pytest.mark.parametrize("size,connections", [(2, 1), (3, 2), (4, 1)])
def test_large_collectives_on_lanes_give_the_bytes_of_one_thread(monkeypatch, size, connections):
    monkeypatch.setenv("RINGCOMM_THREADS", "4")  # the rank processes inherit it
    cluster = Cluster(size, connections)
    try:
        for i, (op, dtype_name) in enumerate(
                [(op, d) for op in OPS
                 for d in ("float32", "bfloat16", "int64", "complex64", "float16")]):
            rows = (3 << 20) // DTYPES[dtype_name].itemsize // size + 5  # > 3 MiB, uneven
            shape = (rows * size,)
            results = cluster.run(_both_ways, op, dtype_name, shape, i)
            if op == "broadcast":
                root = i % size
                want = [make_input(i, root, dtype_name, shape)] * size
                tolerance = 0.0
            else:
                want = expected(op, dtype_name, shape, i, size, False)
                tolerance = sum_tolerance(dtype_name, shape, i, size, False) \
                    if op in ("all_sum", "sum_scatter") else 0.0
            for rank, (threaded, alone, names) in enumerate(results):
                assert names, f"{op} {dtype_name}: rank {rank} ran no lane thread"
                assert threaded.tobytes() == alone.tobytes(), (op, dtype_name, rank)
                assert threaded.tobytes() == results[0][0].tobytes() or op == "sum_scatter"
                if op not in ("all_sum", "sum_scatter") or DTYPES[dtype_name].kind in "iu":
                    assert threaded.tobytes() == want[rank].astype(threaded.dtype).tobytes(), \
                        (op, dtype_name, rank)
                    continue
                wide = np.complex128 if threaded.dtype.kind == "c" else np.float64
                bound = tolerance.reshape(size, -1)[rank] if op == "sum_scatter" else tolerance
                assert np.all(np.abs(threaded.astype(wide) - want[rank].astype(wide)) <= bound), \
                    (op, dtype_name, rank)
    finally:
        cluster.close()


def test_small_operations_and_single_streams_stay_on_the_calling_thread():
    group_lanes = lanes.Lanes(transport=None, threads=8)
    big = plans.all_reduce(1 << 20, 4, 2, 0, 1)        # 4 MiB, two streams
    small = plans.all_reduce(1 << 10, 4, 2, 0, 1)      # 4 KiB, two streams
    one = plans.all_reduce(1 << 20, 4, 2, 0, 1)[:1]    # one stream
    assert group_lanes.count(big, engine.COLLECTIVE, None, False) == 2
    assert group_lanes.count(small, engine.COLLECTIVE, None, False) == 1
    assert group_lanes.count(one, engine.COLLECTIVE, None, False) == 1
    assert group_lanes.count(big, engine.COLLECTIVE, None, True) == 1  # send/recv
    assert lanes.Lanes(None, 1).count(big, engine.COLLECTIVE, None, False) == 1


class _View:
    """A lane whose wait only ends when woken (the stand-in for a lane blocked in poll)."""

    def __init__(self) -> None:
        self.woken = threading.Event()

    def wake(self) -> None:
        self.woken.set()

    def rearm(self) -> None:
        self.woken.clear()


class _Transport:
    def __init__(self, count: int) -> None:
        self.views = [_View() for _ in range(count)]

    def lanes(self, count: int):
        return self.views[:count]


def test_a_failure_on_a_worker_thread_is_raised_on_the_calling_thread(monkeypatch):
    """Lane 1 (a worker) fails while lane 0 (the caller) is blocked: the caller is woken and
    raises the worker's error, not its own LaneStopped."""
    transport = _Transport(2)
    failure = PeerLostError("connection right[0] lost", rank=0, peer=1)

    def run(view, part, *args, **kwargs):
        if view is transport.views[1]:
            raise failure
        if not view.woken.wait(10):
            raise AssertionError("the calling thread's lane was never woken")
        raise LaneStopped()

    monkeypatch.setattr(lanes.engine, "run", run)
    group_lanes = lanes.Lanes(transport, threads=2)
    plan = plans.all_reduce(1 << 20, 4, 2, 0, 1)
    started = time.monotonic()
    with pytest.raises(PeerLostError) as caught:
        group_lanes.run(2, plan, np.zeros(1 << 20, np.float32), None,
                        time.monotonic() + 30, None, None, None)
    assert caught.value is failure and time.monotonic() - started < 5
    group_lanes.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(LANE)]


LARGE_LOOP = """
import numpy as np, ringcomm, resource, threading, time
g = ringcomm.init(strict=True, timeout={timeout})
x = np.ones(1 << 21, np.float32)
ringcomm.all_sum(x)
assert any(t.name.startswith("ringcomm-lane-") for t in threading.enumerate())
print("ready", flush=True)
if g.rank() == {sleeper}:
    time.sleep(60)
def cpu():
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime
start = time.monotonic()
try:
    while True:
        call_cpu = cpu()  # what the call that fails uses, all its threads together
        ringcomm.all_sum(x)
except KeyboardInterrupt:
    print(f"KeyboardInterrupt after {{time.monotonic() - start:.2f}}s", flush=True)
except ringcomm.RingcommError as e:
    print(f"{{type(e).__name__}} after {{time.monotonic() - start:.2f}}s using "
          f"{{cpu() - call_cpu:.3f}}s of CPU in the call: {{e}}", flush=True)
g.close()
left = [t.name for t in threading.enumerate() if t.name.startswith("ringcomm-lane-")]
print(f"lane threads after close: {{len(left)}}", flush=True)
"""


def _ready(procs):
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()


def test_a_killed_peer_ends_a_threaded_call_with_a_typed_error_and_no_thread_left(tmp_path):
    procs = start_ranks(tmp_path, 3, LARGE_LOOP.format(timeout=30, sleeper=-1),
                        RINGCOMM_THREADS="4")
    _ready(procs)
    time.sleep(0.3)
    procs[1].send_signal(signal.SIGKILL)
    for r in (0, 2):
        out, err = procs[r].communicate(timeout=30)
        assert re.search(r"PeerLostError after [\d.]+s using [\d.]+s of CPU in the call: "
                         r"rank %d: all_sum: .*rank 1" % r, out), \
            (out, err)
        assert "lane threads after close: 0" in out, out


def test_ctrl_c_interrupts_a_threaded_call(tmp_path):
    procs = start_ranks(tmp_path, 3, LARGE_LOOP.format(timeout=60, sleeper=1),
                        RINGCOMM_THREADS="4")
    try:
        _ready(procs)
        time.sleep(0.5)  # ranks 0 and 2 are blocked in an all_sum, on their lanes
        procs[0].send_signal(signal.SIGINT)
        out0 = procs[0].communicate(timeout=10)[0]
        assert "KeyboardInterrupt" in out0 and "lane threads after close: 0" in out0, out0
        out2 = procs[2].communicate(timeout=10)[0]
        assert "PeerLostError" in out2 and "KeyboardInterrupt" in out2, out2
    finally:
        for p in procs:
            p.kill()


def test_a_frozen_peer_ends_a_threaded_call_at_the_deadline(tmp_path):
    procs = start_ranks(tmp_path, 3, LARGE_LOOP.format(timeout=2, sleeper=-1),
                        RINGCOMM_THREADS="4")
    try:
        _ready(procs)
        time.sleep(0.2)
        procs[1].send_signal(signal.SIGSTOP)
        for r in (0, 2):
            out = procs[r].communicate(timeout=30)[0]
            m = re.search(r"(\w+Error) after ([\d.]+)s using ([\d.]+)s of CPU", out)
            assert m and m.group(1) == "CommTimeoutError" and float(m.group(2)) < 6, out
            assert float(m.group(3)) < 0.3, f"rank {r}'s lanes spun while blocked: {out}"
            assert "lane threads after close: 0" in out, out
    finally:
        procs[1].kill()


def _async_on_lanes(group, seed):
    """Rank side: large async all_sums (run on lanes by the progress thread) mixed with a
    blocking one; the results, and whether lane threads ran."""
    xs = [make_input(seed + i, group.rank(), "float32", (1 << 20,)) for i in range(4)]
    works = [group.all_sum(x, async_op=True) for x in xs[:3]]
    blocking = group.all_sum(xs[3])
    names = [t.name for t in threading.enumerate() if t.name.startswith(LANE)]
    return [w.wait(60) for w in reversed(works)][::-1] + [blocking], names


def test_async_operations_run_on_lanes_too(monkeypatch):
    monkeypatch.setenv("RINGCOMM_THREADS", "2")
    cluster = Cluster(2, 1)
    try:
        results = cluster.run(_async_on_lanes, 7)
    finally:
        cluster.close()
    for rank, (got, names) in enumerate(results):
        assert names, f"rank {rank} ran no lane thread"
        for i, result in enumerate(got):
            want = expected("all_sum", "float32", (1 << 20,), 7 + i, 2, False)[rank]
            assert np.allclose(result, want, rtol=0, atol=sum_tolerance(
                "float32", (1 << 20,), 7 + i, 2, False).max()), (rank, i)


def _mismatched_gather_on_lanes(group):
    """Rank 0 gathers float32, rank 1 int32 of the same bytes: both on lanes."""
    dtype = np.float32 if group.rank() == 0 else np.int32
    x = np.ones(1 << 19, dtype)  # 2 MiB gathered: two streams, each on its own lane
    try:
        group.all_gather(x)
    except ringcomm.RingcommError as e:
        outcome = (type(e).__name__, str(e))
    else:
        outcome = ("no error", "")
    return outcome, [t.name for t in threading.enumerate() if t.name.startswith(LANE)]


def test_a_mismatch_between_lanes_is_the_typed_error_of_one_thread(monkeypatch):
    """Each lane's one stream carries and checks the call's header, as on one thread."""
    monkeypatch.setenv("RINGCOMM_THREADS", "4")
    cluster = Cluster(2, 1)
    try:
        results = cluster.run(_mismatched_gather_on_lanes)
    finally:
        cluster.close()
    for rank, ((name, message), names) in enumerate(results):
        assert names, f"rank {rank} ran no lane thread"
        assert name == "MismatchError", (rank, name, message)
        assert "float32" in message and "int32" in message, (rank, message)


def _small_then_large(group, seed, threads_per_rank):
    """A small all_sum (on 2 ranks it leaves a header waiting each way), then a large all_sum
    and all_gather: what they return, the headers waiting before them, and lanes used."""
    group._lanes._threads = threads_per_rank[group.rank()]
    on_lanes = []
    run = group._lanes.run

    def counted(*args, **kwargs):
        on_lanes.append(run(*args, **kwargs))
        return on_lanes[-1]
    group._lanes.run = counted
    got = []
    for i in range(3):
        group.all_sum(np.ones(2, np.float32))
        waiting = sum(map(len, group._alone.out)) + sum(map(len, group._alone.into))
        x = make_input(seed + i, group.rank(), "float32", (3 << 18,))
        got.append((waiting, group.all_sum(x), group.all_gather(x)))
    group.barrier()  # the headers of the last calls are checked too
    return got, on_lanes


@pytest.mark.parametrize("connections,threads", [(1, (4, 4)), (1, (4, 1)), (2, (2, 2))])
def test_headers_left_waiting_by_small_calls_ride_with_the_lanes(connections, threads):
    """The large calls after a small one still run on lanes, carrying the waiting headers
    as one thread would: the same bytes on the wire, so a peer on one thread agrees (with 2
    connections, 4 streams on 2 lanes: a lane of two streams)."""
    cluster = Cluster(2, connections)
    try:
        results = cluster.run(_small_then_large, 11, threads)
    finally:
        cluster.close()
    for rank, (got, on_lanes) in enumerate(results):
        assert on_lanes == ([True] * 6 if threads[rank] > 1 else []), (rank, on_lanes)
        for i, (waiting, summed, gathered) in enumerate(got):
            assert waiting > 0, (rank, i, waiting)
            shape = (3 << 18,)
            want = expected("all_sum", "float32", shape, 11 + i, 2, False)[rank]
            assert np.all(np.abs(summed - want) <= sum_tolerance(
                "float32", shape, 11 + i, 2, False)), (rank, i)
            assert gathered.tobytes() == expected(
                "all_gather", "float32", shape, 11 + i, 2, False)[rank].tobytes(), (rank, i)
