"""Rank side of tests/test_mismatch.py: join a fresh ring, make calls, say how each ended.

A call is ``[op, dtype, count]`` (``count`` a list: all_sum of an array of that shape; ``op`` one of all_sum, all_max, all_gather, sum_scatter,
all_to_all, barrier, send, recv; send goes to the right neighbour and recv comes from the left,
which on two ranks are both the other rank), or ``["split", "uint8", 0]`` (``split(0)``, every
rank one color) or ``["all_gather_split_record", "uint8", 0]``: an all_gather of an array
shaped and typed as split's own record (one row of uint8), whose bytes it must not take.  Every rank's input is a function of its rank and the
call, so a call that returns can be checked against what the same call on every rank gives.
"""
from __future__ import annotations

import math
import select
import sys
import time
from typing import Any

import numpy as np

import ringcomm
from ringcomm import split
from ringcomm.header import pack_header
from ringcomm.transports import Side

Call = list  # [op, dtype, count or shape]


def join(ring: dict, rank: int, timeout: float) -> ringcomm.Group:
    """A new group on ``ring``; the process's default group stays what it was."""
    module = sys.modules["ringcomm.init"]
    default = module._default_group
    module._default_group = None  # a new group, not init()'s answer of the default one
    try:
        if ring["backend"] == "rdma":
            return ringcomm.init(rank=rank, backend="rdma", verbs="emulated",
                                 devices=ring["devices"], coordinator=ring["coordinator"],
                                 timeout=timeout)
        return ringcomm.init(rank=rank, hostfile=ring["hostfile"], timeout=timeout)
    finally:
        module._default_group = default


def data(op: str, dtype: str, count: int, rank: int, size: int) -> np.ndarray:
    if op in ("sum_scatter", "all_to_all"):
        count *= size
    return ((np.arange(count) * 7 + 3 * rank + 1) % 50).astype(dtype)


def expect(op: str, dtype: str, count: int, size: int, rank: int) -> np.ndarray | None:
    """What the call returns when every rank (or the sender, for recv) made the same one."""
    inputs = [data(op, dtype, count, r, size) for r in range(size)]
    if op in ("all_sum", "sum_scatter"):
        total = sum(a.astype(np.float64) for a in inputs).astype(dtype)
        return total if op == "all_sum" else total[rank * count:(rank + 1) * count]
    if op == "all_max":
        return np.maximum.reduce(inputs)
    if op == "all_gather":
        return np.concatenate(inputs)
    if op == "all_to_all":  # block j came from rank j, which cut it from its own block ``rank``
        return np.concatenate([a[rank * count:(rank + 1) * count] for a in inputs])
    if op == "recv":
        return inputs[(rank - 1) % size]
    return None


def perform(group: ringcomm.Group, call: Call) -> bool:
    """Make ``call``; True when what it returned is right (always, for send and barrier)."""
    op, dtype, count = call
    shape = tuple(count) if isinstance(count, list) else None  # all_sum of that shape
    count = math.prod(shape) if shape is not None else count
    n, r = group.size(), group.rank()
    if op == "barrier":
        group.barrier()
        return True
    if op == "split":
        sub = group.split(0)
        right = sub.size() == n and sub.rank() == r
        sub.close()
        return right
    if op == "all_gather_split_record":
        row = split._record(group._connections()).size
        got = group.all_gather(np.full((1, row), r, np.uint8))
        return np.array_equal(got, np.repeat(np.arange(n, dtype=np.uint8), row).reshape(n, row))
    x = data(op, dtype, count, r, n)
    if op == "send":
        group.send(x, (r + 1) % n)
        return True
    if op == "recv":
        got = group.recv((count,), np.dtype(dtype), (r - 1) % n)
    else:
        got = getattr(group, op)(x if shape is None else x.reshape(shape))
    want = expect(op, dtype, count, n, r)
    return np.array_equal(got, want if shape is None else want.reshape(shape))


def calls(_cluster_group: Any, ring: dict, rank: int, todo: list[Call],
          timeout: float) -> list[tuple]:
    """Join ``ring`` as ``rank`` and make the calls until one raises: per call (op, outcome,
    message, seconds, right), outcome "ok" or the error's class name.  A rank still in
    init() when the others fail (its warm-up) reports that as a call "init"."""
    start = time.monotonic()
    try:
        group = join(ring, rank, timeout)
    except ringcomm.RingcommError as e:
        return [("init", type(e).__name__, str(e), time.monotonic() - start, None)]
    outcomes: list[tuple] = []
    try:
        for call in todo:
            start = time.monotonic()
            try:
                right = perform(group, call)
            except ringcomm.RingcommError as e:
                outcomes.append((call[0], type(e).__name__, str(e), time.monotonic() - start,
                                 None))
                break
            outcomes.append((call[0], "ok", "", time.monotonic() - start, right))
    finally:
        group.close()
    return outcomes


def rogue(_cluster_group: Any, ring: dict, rank: int, sides: list[str], payload: Any,
          hold: float, timeout: float) -> list[tuple]:
    """Join ``ring`` as ``rank``, put ``payload`` on connection 0 of ``sides`` as raw bytes
    (no operation of its own), stay silent until told of a failure or for ``hold`` seconds
    (TCP), then close.  ``payload`` is
    bytes, or ``[seq, op, dtype, shape]``: an operation header of this ring's job."""
    group = join(ring, rank, timeout)
    t = group._transport
    if not isinstance(payload, bytes):
        seq, op, dtype, shape = payload
        payload = pack_header(seq, op, np.dtype(dtype), tuple(shape), group._job)
    try:
        for name in sides:
            t.post_send(Side[name], 0, memoryview(payload))
            t.wait(time.monotonic() + 5)
        # until the other rank's abort notice arrives (it has raised), or ``hold`` passes
        select.select([c.sock for c in t._control.values()], [], [], hold)
    finally:
        group.close()
    return [("rogue", "ok", "", 0.0, None)]


def run(cluster_group: Any, args: tuple | None) -> list[tuple] | None:
    """One rank's part, ``args`` = (ring, rank, role, timeout) or None (no part): ``role`` is
    {"calls": [...]} or {"rogue": {sides, payload, hold}}."""
    if args is None:
        return None
    ring, rank, role, timeout = args
    if "rogue" in role:
        return rogue(cluster_group, ring, rank, timeout=timeout, **role["rogue"])
    return calls(cluster_group, ring, rank, role["calls"], timeout)
