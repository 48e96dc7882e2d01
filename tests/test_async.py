"""async_op=True (ringcomm/work.py) on real localhost rings: many operations in flight, mixed
with blocking ones and waited out of order, against numpy on every rank; wait(timeout); a
different order on one rank (MismatchError); a rank SIGKILLed with work pending; close() with
work pending and the threads after it; Ctrl-C in Work.wait; examples/dp_training.py --overlap."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ringcomm
from tests import async_work as w
from tests.procs import ROOT, env, start_ranks

COUNT = 50


@pytest.mark.parametrize("size,seed", [(1, 1), (2, 2), (2, 3), (3, 4), (5, 5), (8, 6)])
def test_many_async_operations_waited_out_of_order_match_numpy(clusters, size, seed):
    got = clusters.get(size).run(w.mixed, seed, COUNT)
    steps = w.plan(seed, size, COUNT)
    assert {s["op"] for s in steps} >= ({"all_sum", "all_gather"} if size == 1 else
                                        {"all_sum", "all_gather", "p2p", "broadcast"})
    for rank in range(size):
        for i, (want, (have, out_was_result)) in enumerate(
                zip(w.expected(seed, size, COUNT, rank), got[rank])):
            where = f"rank {rank}, operation {i}: {steps[i]}"
            assert out_was_result, where
            if want is None:
                assert have is None, where
            else:
                assert have.dtype == want.dtype and have.shape == want.shape, where
                assert np.array_equal(have, want), where


def test_wait_past_its_timeout_says_the_operation_is_still_running(clusters):
    facts = clusters.get(2).run(w.wait_past_timeout)[0]
    for what in ("wait_early", "result_early"):
        assert facts[what].startswith("WaitTimeoutError: rank 0: recv (async operation #"), facts
        assert "still running" in facts[what], facts
    assert facts["completed_early"] is False and facts["exception_early"] is None
    assert np.array_equal(facts["value"], np.arange(4.0))
    assert np.array_equal(facts["result"], np.arange(4.0))


def test_wait_with_an_infinite_or_huge_timeout_waits_and_a_bad_one_is_refused(clusters):
    facts = clusters.get(2).run(w.wait_without_limit)[0]
    assert np.array_equal(facts["inf"], np.arange(4.0)), facts
    assert np.array_equal(facts["1e+300"], np.arange(4.0) + 1), facts
    for bad in ("-1", "nan"):
        kind, is_value_error, text = facts[bad]
        assert kind == ringcomm.ConfigError.__name__ and is_value_error, facts
        assert "timeout=" in text and "inf" in text, text
    assert facts["True"][0] == facts["'1'"][0] == "TypeError", facts


def test_mlx_arrays_async_and_a_differentiable_blocking_call_behind_them(clusters):
    pytest.importorskip("mlx.core")
    got = clusters.get(2).run(w.mlx_async)
    x = np.arange(6, dtype=np.float32)
    for r, facts in enumerate(got):
        assert facts["type"].startswith("mlx"), facts
        assert np.array_equal(facts["sum"], x * 3) and np.array_equal(facts["gather"],
                                                                       np.concatenate([x, 2 * x]))
        assert np.array_equal(facts["recv"], x * (2 - r)) and facts["sent_is_input_type"]
        assert np.array_equal(facts["grad"], np.full(3, 2.0)), facts["grad"]


def test_ranks_issuing_in_different_orders_get_a_mismatch_error(clusters):
    cluster = clusters.get(3)
    got = cluster.run(w.out_of_order)
    cluster.broken = True  # the group is broken now: a fresh ring next time
    for rank, (first, *rest) in enumerate(got):
        assert first[0] == "MismatchError", (rank, first)
        assert "all_gather" in first[1] and "all_sum" in first[1], first
        for later in rest:
            assert later[0] == "GroupBrokenError" and later[3] == "MismatchError", later


def test_a_rank_killed_with_work_pending_fails_every_wait_naming_it(clusters):
    victim, size = 2, 5
    cluster = clusters.get(size)
    cluster.broken = True
    for conn in cluster._conns:
        conn.send((w.killed_while_pending, (victim,)))
    for rank, conn in enumerate(cluster._conns):
        if rank == victim:
            continue
        assert conn.poll(60), f"rank {rank} did not answer"
        status, value = conn.recv()
        assert status == "ok", value
        outcomes, seconds = value
        failed = [o for o in outcomes if o[0] != "ok"]
        assert failed and outcomes[-len(failed):] == failed, (rank, outcomes)  # in order
        first, *rest = failed
        assert first[0] == "PeerLostError" and first[2] == victim, (rank, first)
        assert f"rank {victim}" in first[1], first
        for later in rest:
            assert later[0] == "GroupBrokenError" and later[3] == "PeerLostError", later
            assert later[4] == victim and f"rank {victim}" in later[1], later
        assert seconds < 10, seconds


CLOSE = """
import json, threading, numpy as np, ringcomm
g = ringcomm.init(strict=True, timeout=20)
x = np.ones(100_000)
works = [g.all_sum(x, async_op=True) for i in range(200)]  # far more than run before close
g.close()
states = []
for i, work in enumerate(works):
    error = work.exception()
    if error is None:
        states.append("ok" if np.array_equal(work.result(), 2 * x) else "WRONG")
    else:
        states.append(type(error).__name__ + ("" if "had not started" in str(error) else "*"))
late = g.all_sum(np.ones(1), async_op=True).exception()
print(json.dumps({"states": states, "completed": all(w.is_completed() for w in works),
                  "threads": [t.name for t in threading.enumerate()],
                  "late": type(late).__name__}))
"""


def test_close_with_pending_work_fails_what_had_not_started_and_leaves_no_thread(tmp_path):
    ranks = start_ranks(tmp_path, 2, CLOSE)
    for proc in ranks:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        facts = json.loads(out)
        states = facts["states"]
        assert facts["completed"] and facts["threads"] == ["MainThread"], facts
        assert facts["late"] == "GroupBrokenError", facts
        # in issue order: those done, at most one running (it may fail: the other rank closed),
        # then those that had not started, failed by close() or, if the running one failed
        # first, by the broken group (*: another message)
        assert "WRONG" not in states and states[-1].startswith("GroupBrokenError"), states
        first_failed = states.index(next(s for s in states if s != "ok"))
        assert states[first_failed] in ("GroupBrokenError", "GroupBrokenError*",
                                        "PeerLostError*"), states
        assert {s.rstrip("*") for s in states[first_failed + 1:]} == {"GroupBrokenError"}, \
            states


INTERRUPT = """
import sys, time, numpy as np, ringcomm
g = ringcomm.init(strict=True, timeout=60)
if g.rank() == 1:
    time.sleep(60)
work = g.recv(4, np.float64, 1, async_op=True)
print("waiting", flush=True)
start = time.monotonic()
try:
    work.wait()
except KeyboardInterrupt:
    print(f"interrupted {time.monotonic() - start:.3f} completed={work.is_completed()}",
          flush=True)
"""


def test_ctrl_c_interrupts_a_wait(tmp_path):
    ranks = start_ranks(tmp_path, 2, INTERRUPT)
    try:
        assert ranks[0].stdout.readline().strip() == "waiting"
        time.sleep(0.2)
        sent = time.monotonic()
        ranks[0].send_signal(signal.SIGINT)
        out, err = ranks[0].communicate(timeout=10)  # exits: the progress thread is a daemon
        assert time.monotonic() - sent < 5
        assert out.startswith("interrupted") and "completed=False" in out, (out, err)
    finally:
        for proc in ranks:
            proc.kill()
            proc.communicate()


def test_dp_training_with_overlap_passes_its_check():
    pytest.importorskip("mlx.core")
    result = subprocess.run([sys.executable, "-m", "ringcomm.launch", "-n", "2",
                             str(ROOT / "examples" / "dp_training.py"), "--overlap"],
                            capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert result.returncode == 0 and result.stdout.count("check passed") == 2, result
