"""Distinct inputs per rank and the results numpy expects from them, for ``-c``.

Inputs are small integers (0 to 4, a pattern shifted by the rank), so sums over up to a few
dozen ranks are exact in every supported type (int8, float16 and bfloat16 included) and the
expected result does not depend on the order in which a ring adds.
"""
from __future__ import annotations

import os

import numpy as np

CORRUPT_ENV = "RINGCOMM_BENCH_CORRUPT_RANK"
"""Test-only: on this rank, change one element of every result before it is checked."""


def rank_input(rank: int, count: int, dtype: np.dtype) -> np.ndarray:
    """Rank ``rank``'s input of ``count`` elements: different on every rank (up to 5 ranks
    apart) and from element to element."""
    values = (np.arange(count, dtype=np.int64) * 3 + rank * 2 + 1) % 5
    if dtype.kind == "b":
        return (values % 2).astype(dtype)
    if dtype.kind == "c":
        return (values + 1j * ((values + rank) % 3)).astype(dtype)
    return values.astype(dtype)


def expected(op: str, rank: int, size: int, count: int, dtype: np.dtype) -> np.ndarray:
    """What ``op`` must give on ``rank`` when every rank passed :func:`rank_input`."""
    if op == "sendrecv":  # from the left neighbour
        return rank_input((rank - 1) % size, count, dtype)
    if op == "all_gather":
        return np.concatenate([rank_input(r, count, dtype) for r in range(size)])
    wide = np.dtype(np.bool_ if dtype.kind == "b" else
                    np.complex128 if dtype.kind == "c" else np.float64)
    acc = rank_input(0, count, dtype).astype(wide)
    for r in range(1, size):
        x = rank_input(r, count, dtype).astype(wide)
        if op in ("all_sum", "sum_scatter"):
            acc = np.logical_or(acc, x) if wide.kind == "b" else np.add(acc, x, out=acc)
        elif op == "all_max":
            acc = _pick(acc, x, larger=True)
        else:
            acc = _pick(acc, x, larger=False)
    if op == "sum_scatter":
        block = count // size
        acc = acc[rank * block:(rank + 1) * block]
    return acc.astype(dtype)


def count_wrong(result: np.ndarray, want: np.ndarray) -> int:
    """Elements of ``result`` that differ from ``want`` (all of them if the shape is wrong)."""
    result = np.asarray(result).reshape(-1)
    if result.shape != want.shape or result.dtype != want.dtype:
        return int(want.size)
    return int(np.count_nonzero(result != want))


def maybe_corrupt(result: np.ndarray, rank: int) -> np.ndarray:
    """``result``, with its first element changed when ``RINGCOMM_BENCH_CORRUPT_RANK`` names
    ``rank`` (so that the tests can show ``-c`` catches a wrong element)."""
    if os.environ.get(CORRUPT_ENV) != str(rank) or result.size == 0:
        return result
    bad = np.array(result, copy=True).reshape(-1)
    bad[0] = np.logical_not(bad[0]) if bad.dtype.kind == "b" else bad[0] + 1
    return bad


def _pick(a: np.ndarray, b: np.ndarray, *, larger: bool) -> np.ndarray:
    if a.dtype.kind == "b":
        return np.logical_or(a, b) if larger else np.logical_and(a, b)
    return np.maximum(a, b) if larger else np.minimum(a, b)  # complex: by real, then imaginary
