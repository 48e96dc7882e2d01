"""Small all-reduces in half the ring steps (ringcomm protocol): gather, then fold locally.

MLX's ring all-reduce takes ``2 (n-1)`` steps, each a network latency; for a few bytes the
latency is all there is.  Gathering every rank's input (``plans.all_gather``: ``n-1`` steps)
and folding the ``n`` blocks on every rank halves that (an 8-byte all_sum of 2 ranks: one
exchange instead of two).  It moves ``n - 1`` inputs per rank instead of about two, so it is
used up to ``GATHER_BYTES`` gathered (on 16 cores it was faster up to 128 KiB per rank on 2
ranks, 32-64 KiB on 4 and 32 KiB on 8: docs/performance.md).

The result is the bytes MLX's ring computes (tests/test_mlx_interop.py holds ringcomm to
them), which fixes the order of the operands: on 2 ranks each of the ring's two segments is
``op(other rank's, own)`` as the ring folds it (``_segments``), which decides NaN signs and
payloads and max/min of signed zeros; on more ranks the ring's order differs per segment and
float rounding depends on it, so only integer and bool types gather there (their folds are
exact in any order).  MLX-protocol rings keep MLX's schedule throughout.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from . import memcopy, plans
from .dtypes import Combine, quiet, reducer, restore
from .transports import Transport

GATHER_BYTES = 256 << 10  # an all-reduce gathers when the n inputs together fit in this


class Gathering(Protocol):
    """What ``gather_reduce`` needs of a group (``ringcomm.group.Group`` is one): its ring,
    a slot to keep the gathered buffer and plan in, and running a plan.  Owned here, so this
    module never imports the group that calls it."""

    _transport: Transport
    _gathered: tuple | None

    def _run(self, name: str, plan: plans.Plan, work: np.ndarray, combine: Combine | None,
             dtype: np.dtype, shape: tuple[int, ...]) -> None: ...


def fits(nbytes: int, size: int, dtype: np.dtype) -> bool:
    """True when an all-reduce of ``nbytes`` per rank of ``dtype`` on ``size`` ranks gathers."""
    return 0 < nbytes and nbytes * size <= GATHER_BYTES and (size == 2 or dtype.kind in "biu")


def gather_reduce(group: Gathering, name: str, op: str, source: np.ndarray,
                  result: np.ndarray, shape: tuple[int, ...]) -> None:
    """``result`` (flat) = ``op`` over every rank's ``source`` (flat, same dtype), with the
    bytes of MLX's ring."""
    key = (source.size, source.dtype, op)  # (the ring, rank and connections never change)
    got = group._gathered
    r = group._transport.rank
    if got is None or got[0] != key:  # a steady loop reuses its buffer, plan and operands
        n, k = group._transport.size, group._transport.connections
        blocks = np.empty((n, source.size), source.dtype)
        got = group._gathered = (key, blocks.reshape(-1).view(np.uint8), list(blocks),
                                 plans.all_gather(source.nbytes, n, r, k),
                                 reducer(op, source.dtype), source.dtype.kind in "fcV",
                                 _segments(blocks) if n == 2 else None)
    _, raw, rows, plan, combine, floating, segments = got
    memcopy.copy(rows[r], source)
    group._run(name, plan, raw, None, source.dtype, shape)
    if not floating:
        return _fold(combine, result, rows, segments)
    token = quiet()  # inf - inf is a NaN like any other, as in MLX: no warnings
    try:
        _fold(combine, result, rows, segments)
    finally:
        restore(token)


Segment = tuple[int, int, "tuple[int, int] | None", np.ndarray, np.ndarray]


def _segments(blocks: np.ndarray) -> list[Segment]:
    """MLX's 2-rank ring all-reduce of the ``count`` elements of ``blocks[0]`` and
    ``blocks[1]``, as (lo, hi, rows, arriving, local): ``result[lo:hi]`` (or, where ``rows``
    is set, the whole result cut into that many rows) is ``op(local, arriving)``.

    Segment j of ``ceil(count / 2)`` elements is received at rank ``1 - j`` last and folded
    there with its own input first, so it ends as ``op(x[1 - j], x[j])``
    (docs/wire-protocol.md; one element, padded to two, is segment 0).  When both segments
    have the same length, they fold as one call on two rows: the arriving rows are x[0]'s
    first half and x[1]'s second, the diagonal of ``blocks`` cut in halves, the local rows the
    other diagonal."""
    count = blocks.shape[1]
    seg = -(-count // 2)
    if count > 1 and count == 2 * seg:
        halves = blocks.reshape(2, 2, seg)  # [rank, segment]
        return [(0, count, (2, seg), np.diagonal(halves, axis1=0, axis2=1).T,
                 np.diagonal(halves[::-1], axis1=0, axis2=1).T)]
    return [(lo, hi, None, blocks[j, lo:hi], blocks[1 - j, lo:hi])
            for j, (lo, hi) in enumerate(((0, seg), (seg, count))) if lo < hi]


def _fold(combine, result: np.ndarray, rows: list[np.ndarray],
          segments: list[Segment] | None) -> None:
    if segments is not None:  # 2 ranks: each segment in the ring's operand order
        for lo, hi, cut, arriving, local in segments:
            combine(result[lo:hi] if cut is None else result.reshape(cut), arriving, local)
        return
    combine(result, rows[1], rows[0])  # integers and bools: exact in any order
    for row in rows[2:]:
        combine(result, row)
