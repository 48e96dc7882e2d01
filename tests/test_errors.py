"""Bad calls get clear errors on every rank before any byte moves (failing peers: test_reliability)."""
from __future__ import annotations

import numpy as np
import pytest

import ringcomm


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
    ("ringcomm.send(x, r, group=g)", "ConfigError", "to itself"),  # a ValueError too
    ("ringcomm.send(x, 9, group=g)", "ConfigError", "not a rank of this group"),
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


def aliased(group, count: int, op: str, how: str) -> bool:
    """Rank side: ``op`` with ``out=`` the input itself, or overlapping it shifted by one."""
    r, n = group.rank(), group.size()
    x = np.arange(count, dtype=np.float64) * (r + 1)
    want = (np.arange(count, dtype=np.float64) * sum(range(1, n + 1)) if op == "all_sum"
            else np.arange(count, dtype=np.float64) * n)
    if how == "same":
        got = getattr(ringcomm, op)(x, group=group, out=x)
        return got is x and np.array_equal(x, want)
    buf = np.empty(count + 1)
    buf[1:] = x
    got = getattr(ringcomm, op)(buf[1:], group=group, out=buf[:-1])
    return np.array_equal(got, want)


@pytest.mark.parametrize("how", ["same", "shifted"])
@pytest.mark.parametrize("op", ["all_sum", "all_max"])
def test_out_aliasing_the_input_on_a_large_multi_stream_ring(clusters, op, how):
    # 12 MiB on 3 ranks with K = 2: 4 sub-reductions of 4 steps each
    assert clusters.get(3, 2).run(aliased, 3 << 19, op, how) == [True] * 3


def gathered_into(group, count: int, how: str) -> bool:
    """Rank side: all_gather into ``out`` with ``x`` this rank's block of it ("own": nothing
    to copy), the next rank's block of it ("other": x must be read before that block is
    received into), or an array of its own ("apart": the sends read x, and x is copied into
    out while the bytes move)."""
    r, n = group.rank(), group.size()
    out = np.full(n * count, -1.0)
    mine = np.arange(count) + 1000.0 * r
    at = {"own": r, "other": (r + 1) % n}.get(how)
    x = mine if at is None else out[at * count:(at + 1) * count]
    x[...] = mine
    got = ringcomm.all_gather(x, group=group, out=out)
    want = np.concatenate([np.arange(count) + 1000.0 * k for k in range(n)])
    return got is out and np.array_equal(out, want)


@pytest.mark.parametrize("how", ["own", "other", "apart"])
@pytest.mark.parametrize("count", [1, 3, 1 << 18])
def test_all_gather_into_out(clusters, count, how):
    assert clusters.get(3, 2).run(gathered_into, count, how) == [True] * 3
    assert clusters.get(1, 1).run(gathered_into, count, how) == [True]


def scattered_in_place(group, rows: int, how: str) -> bool:
    """Rank side: sum_scatter whose out= is this rank's block of the input ("own"), or
    another stretch of it ("other"), which the reduction still reads."""
    r, n = group.rank(), group.size()
    x = np.arange(n * rows, dtype=np.float64) * (r + 1)
    want = (np.arange(n * rows, dtype=np.float64) * sum(range(1, n + 1)))[r * rows:(r + 1) * rows]
    at = r if how == "own" else (r + 1) % n
    out = x[at * rows:(at + 1) * rows]
    got = ringcomm.sum_scatter(x, group=group, out=out)
    return got is out and np.array_equal(out, want)


@pytest.mark.parametrize("how", ["own", "other"])
@pytest.mark.parametrize("size,connections", [(2, 1), (3, 2), (4, 1)])
@pytest.mark.parametrize("impl", ["ringcomm", "rdma-emulated"], ids=["tcp", "rdma-emulated"])
def test_sum_scatter_into_its_own_input(clusters, impl, size, connections, how):
    # 3 << 17 rows of float64: several sub-reductions per block.  Over RDMA a send leaves
    # through the slots as credits come, so a fold that wrote into bytes still to be sent
    # would show here (TCP's kernel buffers would usually hide it).
    cluster = clusters.get(size, connections, (impl,) * size)
    assert cluster.run(scattered_in_place, 3 << 17, how) == [True] * size
