"""Rank-side functions of tests/test_small.py (importable by the rank processes)."""
from __future__ import annotations

import time
import warnings

import numpy as np

import ringcomm
from ringcomm import small
from tests import workload


def count_sends(group: ringcomm.Group, nbytes: int, dtype_name: str) -> tuple[int, bool]:
    """(data sends one all_sum of ``nbytes`` posts on this rank, whether it gathers)."""
    transport = group._transport
    posted = []
    real = transport.post_send

    def counting(side, conn, data, head=None):
        if isinstance(data.obj, np.ndarray):  # not headers travelling alone
            posted.append(len(data))
        return real(side, conn, data, head)

    dtype = np.dtype(dtype_name)
    transport.post_send = counting
    try:
        x = np.full(nbytes // dtype.itemsize, group.rank() + 1, dtype)
        got = group.all_sum(x)
    finally:
        del transport.post_send
    n = group.size()
    assert np.all(got == n * (n + 1) // 2), got[:4]
    return len(posted), small.fits(nbytes, n, dtype)


def through_both_schedules(group: ringcomm.Group, op: str, dtype_name: str, count: int,
                           seed: int) -> tuple[bytes, bytes]:
    """``op`` over inputs rich in NaNs, infinities and signed zeros, gathered and on the ring
    (``small.GATHER_BYTES`` set to 0 for the second)."""
    x = workload.make_input(seed, group.rank(), dtype_name, (count,), special="nan")
    gathered = getattr(group, op)(x).tobytes()
    saved, small.GATHER_BYTES = small.GATHER_BYTES, 0
    try:
        ring = getattr(group, op)(x).tobytes()
    finally:
        small.GATHER_BYTES = saved
    return gathered, ring


def slow_neighbour(group: ringcomm.Group, calls: int, pause: float) -> list[float]:
    """Small all_sums where odd ranks pause first, so even ranks sleep in the call (and send
    the headers they owe alone, ``lone.Idle``); returns the sums."""
    sums = []
    for i in range(calls):
        if group.rank() % 2:
            time.sleep(pause)
        sums.append(float(group.all_sum(np.array([i + group.rank()], np.float64))[0]))
    return sums


def quiet_infinities(group: ringcomm.Group) -> tuple[list[float], dict]:
    """Small float folds that overflow or meet inf - inf, with warnings as errors and numpy's
    errors raised: the gathered all_sum (2 ranks), the ring's (more), and sum_scatter, as MLX,
    say nothing; and the caller's numpy error state is as it was."""
    n, r = group.size(), group.rank()
    big = np.float32(3e38)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        summed = group.all_sum(np.array([np.inf if r % 2 else -np.inf, big], np.float32))
        scattered = group.sum_scatter(np.full(n, big, np.float32))
        after = np.geterr()
    return [float(v) for v in (*summed, *scattered)], after
