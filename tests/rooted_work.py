"""Rank-side functions for tests/test_rooted.py, tests/test_objects.py and
tests/test_group_info.py (run on every rank of a tests.cluster ring; importable so they can be
sent by reference)."""
from __future__ import annotations

import dataclasses
import fractions
import time
import warnings

import numpy as np

import ringcomm

DTYPES = {"float32": np.float32, "int64": np.int64, "uint8": np.uint8, "float64": np.float64,
          "int8": np.int8, "bool": np.bool_}


def data(seed: int, rank: int, shape: tuple, dtype_name: str) -> np.ndarray:
    rng = np.random.default_rng([seed, rank])
    if dtype_name == "bool":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.integers(0, 5, size=shape).astype(DTYPES[dtype_name])


def every_root(group, shape: tuple, dtype_name: str, seed: int) -> list[dict]:
    """For each root in turn: reduce (3 ops), gather and scatter of ``data(seed, rank)``,
    half through the Group's methods and half through the module functions."""
    r, n = group.rank(), group.size()
    x = data(seed, r, shape, dtype_name)
    out = []
    for root in range(n):
        api = group if root % 2 == 0 else None
        got = {}
        for op in ("sum", "max", "min"):
            got[op] = (group.reduce(x, root, op) if api else
                       ringcomm.reduce(x, root, op, group=group))
        got["gather"] = group.gather(x, root) if api else ringcomm.gather(x, root, group=group)
        got["scatter"] = (group.scatter(x, root) if api else
                          ringcomm.scatter(x, root, group=group)) \
            if x.ndim and x.shape[0] % n == 0 else None
        out.append(got)
    return out


def rooted_async(group, root: int) -> list:
    """The three rooted collectives with async_op=True, waited for with wait_all, and one
    Work's Future."""
    r, n = group.rank(), group.size()
    x = np.arange(2 * n, dtype=np.int64) + 100 * r
    x.setflags(write=False)  # a read-only input is read, never written
    works = [group.reduce(x, root, async_op=True), group.gather(x, root, async_op=True),
             ringcomm.scatter(x, root, group=group, async_op=True)]
    future = works[0].get_future()
    got = ringcomm.wait_all(works, timeout=30)
    return [got, future.result(timeout=30)]


def disagree(group, call: str, roots: list, ops: list, shape: tuple) -> tuple[str, float]:
    """Each rank calls ``call`` with its own root (and reduce op): the error it gets, and
    how long it took."""
    r = group.rank()
    x = np.ones(shape, np.float32)
    start = time.monotonic()
    try:
        if call == "reduce":
            group.reduce(x, roots[r], ops[r])
        elif call == "broadcast_object":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                group.broadcast_object({"rank": r}, roots[r])
        else:
            getattr(group, call)(x, roots[r])
        group.barrier()  # a rank that took part without error learns it at the next call
        return "no error", time.monotonic() - start
    except Exception as e:  # noqa: BLE001 - the test judges the type
        return f"{type(e).__name__}: {e}", time.monotonic() - start


class Point:  # a user's class: pickled by reference, importable on every rank
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def objects_of(rank: int) -> list:
    """Objects of different kinds and sizes, different on every rank."""
    return [None, rank, "é" * rank, {"rank": rank, "list": list(range(rank))},
            np.arange(rank * 1000, dtype=np.float32), fractions.Fraction(rank, 7),
            Point(rank, -rank), b"\0" * (70000 * rank), (rank, [rank] * 3)]


def objects(group) -> tuple[list, list, list]:
    """broadcast_object of each object from every root, all_gather_object of each object,
    and the warnings seen (this group has no token)."""
    r, n = group.rank(), group.size()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        casts = [[group.broadcast_object(obj, root) for obj in objects_of(root)]
                 if r == root else
                 [ringcomm.broadcast_object(None, root, group=group) for _ in objects_of(root)]
                 for root in range(n)]
        gathered = [ringcomm.all_gather_object(obj, group=group) for obj in objects_of(r)]
    return casts, gathered, [str(w.message) for w in seen]


def object_failures(group) -> list[str]:
    """Objects that cannot go: one rank's object cannot be pickled (broadcast and
    all_gather), or is over the maximum; then the group still works."""
    r = group.rank()
    out = []
    limit = ringcomm.objects.MAX_OBJECT_BYTES
    ringcomm.objects.MAX_OBJECT_BYTES = 1 << 20  # on every rank alike, for this test
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for call in (lambda: group.broadcast_object((lambda: 0) if r == 0 else None, 0),
                         lambda: group.all_gather_object((lambda: 0) if r == 1 else r),
                         lambda: group.broadcast_object(b"x" * (2 << 20), 0),
                         lambda: group.all_gather_object(b"x" * ((1 << 20) // 3))):
                try:
                    call()
                    out.append("no error")
                except Exception as e:  # noqa: BLE001
                    out.append(f"{type(e).__name__}: {e}")
            out.append(repr(group.all_gather_object(r)))
    finally:
        ringcomm.objects.MAX_OBJECT_BYTES = limit
    return out


def future_and_wait_all(group) -> dict:
    """get_future and wait_all on real operations: results, a callback, a failure."""
    r = group.rank()
    x = np.full(4, r + 1, np.float32)
    works = [group.all_sum(x, async_op=True), group.all_gather(x, async_op=True),
             group.barrier(async_op=True)]
    called = []
    future = works[0].get_future()
    future.add_done_callback(lambda f: called.append(f.result().tolist()))
    results = ringcomm.wait_all(works)
    late = works[1].get_future()  # made after completion: done at once
    timed_out = None
    if r == 0:  # a receive that waits for rank 1: wait_all's timeout, then it completes
        pending = group.recv((4,), np.float32, 1, async_op=True)
        start = time.monotonic()
        try:
            ringcomm.wait_all([works[0], pending], timeout=0.3)
        except ringcomm.WaitTimeoutError as e:
            timed_out = [str(e), time.monotonic() - start]
        timed_out.append(ringcomm.wait_all([pending])[0].tolist())
    elif r == 1:
        time.sleep(0.6)  # past rank 0's wait_all timeout
        group.send(x, 0)
    # rank 0 sums 5 elements, the others 4: a MismatchError, then the group is broken
    failing = [group.all_sum(np.ones(5 if r == 0 else 4), async_op=True),
               group.all_sum(x, async_op=True)]
    try:
        ringcomm.wait_all(failing, timeout=60)
        failure = None
    except Exception as e:  # noqa: BLE001
        failure = (type(e).__name__, type(failing[0].get_future().exception()).__name__,
                   type(failing[1].get_future().exception()).__name__)
    return {"results": [None if v is None else v.tolist() for v in results],
            "callback": called, "future": future.result().tolist(),
            "same": future is works[0].get_future(), "late": late.done(),
            "late_result": late.result().tolist(), "failure": failure, "timed_out": timed_out}


def info(group) -> dict:
    return {"info": dataclasses.asdict(group.describe()), "repr": repr(group),
            "str": str(group.describe())}


def info_after_direct(group) -> dict:
    """The description after rank 0 sent to rank 2 (a non-neighbour of 5): a direct link."""
    r = group.rank()
    if r == 0:
        group.send(np.ones(3), 2)
    elif r == 2:
        group.recv((3,), np.float64, 0)
    group.barrier()
    return dataclasses.asdict(group.describe())


def rooted_errors(group) -> list:
    """Arguments every rank gets wrong alike: typed errors before any byte moves, and the
    group still works (a gather to rank 0 after them)."""
    out: list = []
    x = np.ones(3, np.float32)
    for call in (lambda: group.reduce(x, 0, "prod"), lambda: group.reduce(x, 9),
                 lambda: group.gather(x, True), lambda: group.scatter(np.ones(4), 0),
                 lambda: group.scatter(np.float32(1), 0)):
        try:
            call()
            out.append("no error")
        except Exception as e:  # noqa: BLE001
            out.append(f"{type(e).__name__}: {e}")
    got = group.gather(np.int64(group.rank()), 0)
    out.append(None if got is None else got.tolist())
    return out


def mlx_rooted(group, root: int) -> list:
    """reduce, gather and scatter of an mx.array, blocking and with async_op: numpy results
    (None off the root), the same either way."""
    import mlx.core as mx
    r, n = group.rank(), group.size()
    x = mx.array(np.arange(2 * n, dtype=np.float32) + 10 * r)
    calls = (lambda **k: group.reduce(x, root, **k), lambda **k: group.gather(x, root, **k),
             lambda **k: group.scatter(x, root, **k))
    blocking = [call() for call in calls]
    waited = ringcomm.wait_all([call(async_op=True) for call in calls])
    return [[None if v is None else (type(v).__module__, v.tolist()) for v in got]
            for got in (blocking, waited)]
