"""Bad calls get clear errors on every rank, and a broken peer a typed error, never a hang."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest

import ringcomm
from tests.procs import start_ranks


def attempt(group, call: str):
    """Rank side: run ``call`` and return the error it raised (type name, message)."""
    x = np.arange(10, dtype=np.float32)
    try:
        eval(call, {"ringcomm": ringcomm, "np": np, "x": x, "g": group, "r": group.rank(),
                    "n": group.size()})
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return type(e).__name__, str(e)
    return None


@pytest.mark.parametrize("call,error,match", [
    ("ringcomm.sum_scatter(np.zeros((5, 2)), group=g)", "ValueError", "must divide by the group size 4"),
    ("ringcomm.sum_scatter(np.float32(1), group=g)", "ValueError", "must divide"),
    ("ringcomm.send(x, (r + 2) % n, group=g)", "ValueError", "not a ring neighbour"),
    ("ringcomm.recv((3,), np.float32, (r + 2) % n, group=g)", "ValueError", "not a ring neighbour"),
    ("ringcomm.send(x, r, group=g)", "ValueError", "to itself"),
    ("ringcomm.send(x, 9, group=g)", "ValueError", "not a rank of this group"),
    ("ringcomm.all_sum(np.zeros(3, np.complex128), group=g)", "TypeError", "not supported"),
    ("ringcomm.all_sum(np.array(['a']), group=g)", "TypeError", "not supported"),
    ("ringcomm.all_sum(x, group=g, out=np.zeros(3, np.float32))", "ValueError", "out= must be"),
    ("ringcomm.all_gather(x, group=g, out=np.zeros(40, np.float64))", "ValueError", "out= must be"),
])
def test_bad_calls_raise_on_every_rank_before_any_byte_moves(clusters, call, error, match):
    cluster = clusters.get(4, 1)
    results = cluster.run(attempt, call)
    for rank, result in enumerate(results):
        assert result is not None, f"rank {rank} raised nothing"
        assert result[0] == error and match in result[1], result
    # the ring still works afterwards: nothing was half-sent
    assert all(r is None for r in cluster.run(attempt, "ringcomm.all_sum(x, group=g)"))


def test_out_is_filled_in_place(clusters):
    results = clusters.get(2, 1).run(attempt, "np.testing.assert_array_equal("
                                     "ringcomm.all_sum(x, group=g, out=x), 2 * np.arange(10))")
    assert results == [None, None]


KILLED_PEER = """
import numpy as np, ringcomm, os, time
g = ringcomm.init(strict=True, timeout=60)
x = np.ones(1 << 22, np.float32)
ringcomm.all_sum(x)
print("ready", flush=True)
if g.rank() == 1:
    time.sleep(60)
start = time.monotonic()
try:
    while True:
        ringcomm.all_sum(x)
except ringcomm.PeerLostError as e:
    print(f"lost after {time.monotonic() - start:.2f}s: {e}", flush=True)
try:
    ringcomm.all_sum(x)
except ringcomm.GroupBrokenError as e:
    print("broken:", e, flush=True)
"""


def test_neighbours_of_a_killed_rank_raise_peer_lost(tmp_path):
    procs = start_ranks(tmp_path, 3, KILLED_PEER)
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    procs[1].send_signal(signal.SIGKILL)
    for r in (0, 2):
        out, err = procs[r].communicate(timeout=30)
        assert "lost after" in out and "rank 1" in out, (out, err)
        assert "broken: rank" in out, out


FROZEN_PEER = """
import numpy as np, ringcomm, time
g = ringcomm.init(strict=True, timeout=1.5)
ringcomm.barrier()
print("ready", flush=True)
if g.rank() == 1:
    time.sleep(60)
start = time.monotonic()
try:
    ringcomm.all_sum(np.ones(10, np.float32))
except TimeoutError as e:
    print(f"timeout after {time.monotonic() - start:.1f}s: {e}", flush=True)
"""


def test_a_frozen_peer_hits_the_deadline(tmp_path):
    procs = start_ranks(tmp_path, 2, FROZEN_PEER)
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    out, err = procs[0].communicate(timeout=30)
    procs[1].kill()
    assert "timeout after 1." in out and "all_sum" in out and "rank 1" in out, (out, err)
