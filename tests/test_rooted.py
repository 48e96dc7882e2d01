"""reduce, gather and scatter (issue 31, item 10) on real localhost rings of 1-8 ranks, over
TCP and over RDMA on the EMULATED verbs provider, against numpy, from every root; ranks that
disagree on the root or on reduce's op get a MismatchError on every rank, fast."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests import rooted_work as w
from tests.cluster import RANK_TIMEOUT

RINGS = [(1, 1), (2, 1), (3, 2), (4, 1), (5, 2), (8, 1)]
transports = pytest.mark.parametrize("impl", ["ringcomm", "rdma-emulated"],
                                     ids=["tcp", "rdma-emulated"])
REDUCE = {"sum": np.add, "max": np.maximum, "min": np.minimum}


def shapes(size: int) -> list[tuple[tuple, str]]:
    """A 0-d array, an empty one, a small one, and one of several sub-operations (over
    256 KiB: the ring cuts it in pieces over every connection)."""
    return [((), "int64"), ((0,), "float32"), ((size * 3, 2), "uint8"),
            ((size * 3, 5), "bool"), ((size * 9000, 2), "float64")]


def check(got: list, size: int, shape: tuple, dtype_name: str, seed: int) -> None:
    xs = [w.data(seed, r, shape, dtype_name) for r in range(size)]
    dtype = xs[0].dtype
    for root in range(size):
        for rank in range(size):
            res = got[rank][root]
            for op, fold in REDUCE.items():
                if rank != root:
                    assert res[op] is None, (root, rank, op)
                    continue
                want = xs[0].copy()
                for x in xs[1:]:
                    want = np.logical_or(want, x) if dtype == np.bool_ and op == "sum" \
                        else fold(want, x)
                assert res[op].dtype == dtype and res[op].shape == want.shape, (root, op)
                assert res[op].tobytes() == want.tobytes(), (root, rank, op)
            if rank != root:
                assert res["gather"] is None, (root, rank)
            else:
                want = np.stack(xs) if not shape else np.concatenate(xs)
                assert res["gather"].shape == want.shape and res["gather"].dtype == dtype
                assert res["gather"].tobytes() == want.tobytes(), (root, rank, "gather")
            if shape and shape[0] % size == 0:
                rows = shape[0] // size
                want = xs[root][rank * rows:(rank + 1) * rows]
                assert res["scatter"].shape == want.shape and res["scatter"].dtype == dtype
                assert res["scatter"].tobytes() == want.tobytes(), (root, rank, "scatter")


@transports
@pytest.mark.parametrize("size,connections", RINGS, ids=[f"n{n}-k{k}" for n, k in RINGS])
def test_reduce_gather_scatter_from_every_root_match_numpy(clusters, impl, size, connections):
    cluster = clusters.get(size, connections, (impl,) * size)
    for seed, (shape, dtype_name) in enumerate(shapes(size)):
        got = cluster.run(w.every_root, shape, dtype_name, seed)
        check(got, size, shape, dtype_name, seed)


@transports
def test_rooted_collectives_async_with_wait_all_and_futures(clusters, impl):
    size, root = 5, 3
    got = clusters.get(size, 1, (impl,) * size).run(w.rooted_async, root)
    xs = [np.arange(2 * size, dtype=np.int64) + 100 * r for r in range(size)]
    for rank, ((reduced, gathered, scattered), future) in enumerate(got):
        if rank == root:
            assert reduced.tolist() == sum(xs).tolist() and future.tolist() == reduced.tolist()
            assert gathered.tolist() == np.concatenate(xs).tolist()
        else:
            assert reduced is None and gathered is None and future is None
        assert scattered.tolist() == xs[root][2 * rank:2 * rank + 2].tolist()


@pytest.mark.parametrize("impl,call,roots,ops,shape", [
    ("ringcomm", "reduce", [0, 0, 1, 1], ["sum"] * 4, (1000,)),
    ("ringcomm", "reduce", [2, 2, 2, 2], ["sum", "sum", "max", "sum"], (70000,)),
    ("ringcomm", "gather", [0, 0, 0, 2], ["sum"] * 4, (10,)),
    ("ringcomm", "scatter", [3, 2, 1, 0], ["sum"] * 4, (8,)),
    ("ringcomm", "gather", [1, 1, 1, 1, 0], ["sum"] * 5, (0,)),
    ("ringcomm", "broadcast_object", [0, 1, 0, 0], ["sum"] * 4, ()),
    ("rdma-emulated", "gather", [0, 0, 1, 1], ["sum"] * 4, (100,)),
    ("rdma-emulated", "scatter", [0, 0, 0, 3], ["sum"] * 4, (40000,)),
    ("rdma-emulated", "reduce", [1, 1, 1, 1], ["sum", "min", "sum", "sum"], (16,)),
])
def test_ranks_that_disagree_get_a_mismatch_on_every_rank(clusters, impl, call, roots, ops,
                                                           shape):
    size = len(roots)
    cluster = clusters.get(size, 1, (impl,) * size)
    got = cluster.run(w.disagree, call, roots, ops, shape)
    cluster.broken = True  # every group is broken now
    for rank, (error, seconds) in enumerate(got):
        assert error.startswith("MismatchError"), (rank, error)
        assert seconds < RANK_TIMEOUT / 10, (rank, seconds, error)
    errors = " ".join(e for e, _ in got)
    if len(set(roots)) > 1:  # the roots of both calls are named
        assert len(set(re.findall(r"root (\d+)", errors))) >= 2, errors
    if len(set(ops)) > 1:
        assert {f"reduce_{op}" for op in ops} <= set(re.findall(r"reduce_\w+", errors)), errors


def test_bad_arguments_are_typed_errors_on_every_rank_and_the_group_goes_on(clusters):
    got = clusters.get(3).run(w.rooted_errors)
    for rank, errors in enumerate(got):
        reduce_op, root, flag, rows, scalar, after = errors
        assert reduce_op.startswith("ConfigError") and "'prod'" in reduce_op, reduce_op
        assert root.startswith("ConfigError") and "root=9" in root, root
        assert flag.startswith("ConfigError") and "root must be an integer" in flag, flag
        assert rows.startswith("ValueError") and "divide by the group size 3" in rows, rows
        assert scalar.startswith("ValueError"), scalar
        assert after == [0, 1, 2] if rank == 0 else after is None


def test_mlx_arrays_blocking_and_async_give_numpy_results(clusters):
    pytest.importorskip("mlx.core")
    size, root = 3, 1
    got = clusters.get(size).run(w.mlx_rooted, root)
    xs = [np.arange(2 * size, dtype=np.float32) + 10 * r for r in range(size)]
    for rank, (blocking, waited) in enumerate(got):
        assert blocking == waited, (blocking, waited)
        reduced, gathered, scattered = blocking
        if rank == root:
            assert reduced == ("numpy", sum(xs).tolist())
            assert gathered == ("numpy", np.concatenate(xs).tolist())
        else:
            assert reduced is None and gathered is None
        assert scattered == ("numpy", xs[root][2 * rank:2 * rank + 2].tolist())
