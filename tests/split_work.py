"""Rank-side functions of tests/test_split.py: each runs on every rank of a tests.cluster ring."""
from __future__ import annotations

import time

import numpy as np

import ringcomm


def data(parent_rank: int, seed: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """What parent rank ``parent_rank`` contributes (the test computes the same)."""
    rng = np.random.default_rng([seed, parent_rank])
    return rng.integers(-50, 50, size=shape).astype(dtype)


def split_and_reduce(group, colors, keys, seed, rows):
    """Split, then all_sum, all_max, all_gather and sum_scatter on the subgroup; then an all_sum
    on the parent.  Returns (sub rank, sub size, results, members by all_gather, parent sum)."""
    r = group.rank()
    sub = group.split(colors[r], keys[r])
    out = None
    if sub is not None:
        n = sub.size()
        x = data(r, seed, (rows * n, 3), "int64")
        out = {"rank": sub.rank(), "size": n,
               "members": sub.all_gather(np.array([r], np.int64)).tolist(),
               "sum": sub.all_sum(x), "max": sub.all_max(x.astype(np.float32)),
               "gather": sub.all_gather(x), "scatter": sub.sum_scatter(x)}
        sub.close()
    parent_sum = group.all_sum(np.array([r + 1], np.int64)).tolist()
    return out, parent_sum


def nested(group, seed):
    """Split by parity, then each half by its own rank's half; sum the parent ranks there."""
    r = group.rank()
    half = group.split(r % 2)
    quarter = half.split(half.rank() // 2, key=-half.rank() if half.rank() else -1)
    got = {"half": half.all_gather(np.array([r], np.int64)).tolist(),
           "quarter": quarter.all_gather(np.array([r], np.int64)).tolist(),
           "quarter_sum": quarter.all_sum(data(r, seed, (5,), "float64")).tolist()}
    quarter.close()
    got["half_after"] = half.all_sum(np.array([r], np.int64)).tolist()
    half.close()
    got["parent_after"] = group.all_sum(np.array([r], np.int64)).tolist()
    return got


def close_one(group):
    """Close a subgroup, then show that it is closed and that the parent still works."""
    r = group.rank()
    sub = group.split(0)
    sub.all_sum(np.ones(4, np.float32))
    sub.close()
    try:
        sub.all_sum(np.ones(4, np.float32))
        after = "no error"
    except ringcomm.GroupBrokenError as e:
        after = type(e).__name__
    return after, group.all_sum(np.array([r], np.int64)).tolist()


def mismatch_in_one(group):
    """Subgroups by parity; in the even one, its rank 0 calls all_sum with float64 where the
    others use float32.  Returns what each rank saw, and the parent working after it."""
    r = group.rank()
    sub = group.split(r % 2)
    start = time.monotonic()
    dtype = np.float64 if r % 2 == 0 and sub.rank() == 0 else np.float32
    try:
        sub.all_sum(np.ones(64, dtype))
        got = ("ok", "")
    except ringcomm.RingcommError as e:
        got = (type(e).__name__, str(e))
    took = time.monotonic() - start
    try:
        sub.all_sum(np.ones(4, np.float32))
        later = "ok"
    except ringcomm.GroupBrokenError:
        later = "GroupBrokenError"
    sub.close()
    return got, took, later, group.all_sum(np.array([r], np.int64)).tolist()


def split_protocol_mlx(group):
    """A ringcomm rank of a ring under protocol='mlx': split must refuse, naming why."""
    if not isinstance(group, ringcomm.Group):
        return "mlx rank"
    try:
        group.split(0)
        return "no error"
    except ringcomm.ConfigError as e:
        return str(e)


def timed_split(group, colors):
    """The wall time of one split (and the subgroup's first all_sum), on every rank."""
    r = group.rank()
    group.barrier()
    start = time.perf_counter()
    sub = group.split(colors[r])
    took = time.perf_counter() - start
    sub.all_sum(np.ones(4, np.float32))
    sub.close()
    return took


def layers_on_subgroup(group, sharding):
    """tests.layer_work's sharded linear layer and SGD checks, run on the subgroups of a split
    by parity (its parent ranks in reverse order)."""
    from tests import layer_work
    sub = group.split(group.rank() % 2, key=group.size() - group.rank())
    try:
        return (sub.rank(), layer_work.forward_and_grads(sub, sharding, 1, False, True, 3),
                layer_work.data_parallel_sgd(sub))
    finally:
        sub.close()


def bench_on_subgroup(group):
    """ringcomm-bench's measuring loop (``ringcomm.bench.measure.sweep``, with ``-c``'s check)
    on the subgroups of a split by parity: every op, two sizes; returns the records."""
    from ringcomm.bench.impls import RingcommImpl
    from ringcomm.bench.measure import sweep

    class OnSubgroup(RingcommImpl):  # RingcommImpl joins init()'s group; this takes ours
        def __init__(self, sub) -> None:
            self.group, self.in_place, self._out = sub, False, None

    impl = OnSubgroup(group.split(group.rank() % 2))
    try:
        ops = ["all_sum", "all_max", "all_min", "all_gather", "sum_scatter", "sendrecv"]
        return [(r.op, r.ranks, r.bytes, r.wrong) for r in
                sweep(impl, ops, [4096, 1 << 20], np.dtype(np.float32), 1, 2, True)]
    finally:
        impl.close()
