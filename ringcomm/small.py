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

from typing import TYPE_CHECKING

import numpy as np

from . import memcopy, plans
from .dtypes import reducer

if TYPE_CHECKING:
    from .group import Group

GATHER_BYTES = 256 << 10  # an all-reduce gathers when the n inputs together fit in this


def fits(nbytes: int, size: int, dtype: np.dtype) -> bool:
    """True when an all-reduce of ``nbytes`` per rank of ``dtype`` on ``size`` ranks gathers."""
    return 0 < nbytes and nbytes * size <= GATHER_BYTES and (size == 2 or dtype.kind in "biu")


def gather_reduce(group: Group, name: str, op: str, source: np.ndarray,
                  result: np.ndarray, shape: tuple[int, ...]) -> None:
    """``result`` (flat) = ``op`` over every rank's ``source`` (flat, same dtype), with the
    bytes of MLX's ring."""
    key = (source.size, source.dtype, op)  # (the ring, rank and connections never change)
    got = group._gathered
    r = group._transport.rank
    if got is None or got[0] != key:  # a steady loop reuses its buffer, plan and segments
        n, k = group._transport.size, group._transport.connections
        blocks = np.empty((n, source.size), source.dtype)
        got = group._gathered = (key, blocks.reshape(-1).view(np.uint8), list(blocks),
                                 plans.all_gather(source.nbytes, n, r, k),
                                 reducer(op, source.dtype), source.dtype.kind in "fcV",
                                 [(lo, hi, blocks[j, lo:hi], blocks[1 - j, lo:hi])  # x[j], x[1-j]
                                  for lo, hi, j in _segments(source.size)] if n == 2 else None)
    _, raw, rows, plan, combine, floating, segments = got
    memcopy.copy(rows[r], source)
    group._run(name, plan, raw, None, source.dtype, shape)
    (_fold_quietly if floating else _fold)(combine, result, rows, segments)


def _segments(count: int) -> list[tuple[int, int, int]]:
    """MLX's 2-rank ring all-reduce of ``count`` elements, as (lo, hi, j): elements
    ``[lo, hi)`` end as ``op(x[1 - j], x[j])`` (docs/wire-protocol.md: segment j of
    ``ceil(count / 2)`` elements is received at rank ``1 - j`` last and folded there with its
    own input first; one element, padded to two, is segment 0)."""
    seg = -(-count // 2)
    return [(lo, hi, j) for j, (lo, hi) in enumerate(((0, seg), (seg, count))) if lo < hi]


def _fold(combine, result: np.ndarray, rows: list[np.ndarray],
          segments: list[tuple[int, int, np.ndarray, np.ndarray]] | None) -> None:
    if segments is not None:  # 2 ranks: each segment in the ring's operand order
        for lo, hi, arriving, local in segments:  # op(local, arriving), as rank 1 - j does
            combine(result[lo:hi], arriving, local)
        return
    combine(result, rows[1], rows[0])  # integers and bools: exact in any order
    for row in rows[2:]:
        combine(result, row)


# inf - inf is a NaN like any other, as in MLX: no warnings (as a decorator, errstate keeps its
# token per call, so threads may share it; it costs half of a ``with`` block)
_fold_quietly = np.errstate(all="ignore")(_fold)
