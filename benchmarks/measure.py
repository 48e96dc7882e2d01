"""Timing one implementation over a sweep, the same way on every rank.

Each size is run ``warmup`` times, then ``iters`` times, each call timed on its own; a call's
time is the slowest rank's (an all_max of the per-call times), and a record keeps the median
over calls (``time_us``, what bandwidths are computed from) and the fastest and slowest call
(``time_min_us``, ``time_max_us``): the spread says whether the median can be trusted.  Bandwidths follow nccl-tests: ``algbw = bytes / time`` and ``busbw = algbw * factor``
with factor ``2(n-1)/n`` for all_sum, all_max and all_min, ``(n-1)/n`` for all_gather and
sum_scatter, and 1 for sendrecv; ``bytes`` is the input per rank, except all_gather's, which
is its output.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable

import numpy as np

from ringcomm.dtypes import SUPPORTED_DTYPES

from . import checks
from .impls import Impl

PROGRESS_SECONDS = 1.0  # by default, sizes that take longer are reported as they finish


@dataclasses.dataclass
class Record:
    """One implementation, op and size: the row of a table, a JSON line, a CSV row."""

    impl: str
    op: str
    ranks: int
    bytes: int
    dtype: str
    time_us: float
    algbw_gbps: float
    busbw_gbps: float
    wrong: int | None  # None when not checked
    in_place: bool = False  # timed in place (ringcomm's --in-place; gloo's all_reduce is)
    time_min_us: float | None = None  # the fastest call (slowest rank's time); None: not kept
    time_max_us: float | None = None  # the slowest call

    @property
    def spread(self) -> float | None:
        """The slowest call's time over the fastest's (None when not kept)."""
        if not self.time_min_us or self.time_max_us is None:
            return None
        return self.time_max_us / self.time_min_us

    @property
    def count(self) -> int:
        """Elements in ``bytes`` (nccl-tests' count)."""
        return self.bytes // np.dtype(_dtype(self.dtype)).itemsize


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' busbw / algbw for ``op`` on ``n`` ranks."""
    if op in ("all_sum", "all_max", "all_min"):
        return 2 * (n - 1) / n
    return 1.0 if op == "sendrecv" else (n - 1) / n


def input_count(op: str, nbytes: int, itemsize: int, n: int) -> int:
    """Elements per rank's input for a size of ``nbytes`` (all_gather: of the output)."""
    count = max(nbytes // itemsize, 1)
    if op == "all_gather":
        return max(count // n, 1)
    if op == "sum_scatter":
        return max(count // n, 1) * n
    return count


def measure(impl: Impl, op: str, nbytes: int, dtype: np.dtype, warmup: int, iters: int,
            check: bool) -> Record:
    """Time ``op`` at ``nbytes`` on every rank (they must all call this together)."""
    n, r = impl.size(), impl.rank()
    count = input_count(op, nbytes, dtype.itemsize, n)
    x = impl.prepare(checks.rank_input(r, count, dtype), op)
    result = None
    for _ in range(warmup):
        result = impl.run(op, x)
    times = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        result = impl.run(op, x)
        times[i] = time.perf_counter() - start
    per_call = impl.slowest(times)  # each call as long as its slowest rank took
    seconds = float(np.median(per_call))
    wrong = None
    if check:
        if impl.in_place:  # the timed calls overwrote the input: one more call on a fresh one
            result = impl.run(op, impl.prepare(checks.rank_input(r, count, dtype), op))
        got = checks.maybe_corrupt(impl.to_numpy(result), r)
        wrong = impl.total(checks.count_wrong(got, checks.expected(op, r, n, count, dtype)))
    moved = count * dtype.itemsize * (n if op == "all_gather" else 1)
    algbw = moved / seconds / 1e9
    return Record(impl.name, op, n, moved, dtype.name, seconds * 1e6, algbw,
                  algbw * bus_factor(op, n), wrong, impl.in_place,
                  float(per_call.min()) * 1e6, float(per_call.max()) * 1e6)


def sweep(impl: Impl, ops: list[str], sizes: list[int], dtype: np.dtype, warmup: int,
          iters: int, check: bool,
          on_record: Callable[[Record], None] = lambda r: None,
          progress_seconds: float = PROGRESS_SECONDS) -> list[Record]:
    """Every op at every size that ``impl`` supports; rank 0 reports on stderr each size that
    took longer than ``progress_seconds``."""
    steps = [(op, s) for op in ops if impl.supports(op) for s in sizes]
    records: list[Record] = []
    last: tuple[str, int] | None = None
    for i, (op, nbytes) in enumerate(steps, 1):
        n = impl.size()
        key = (op, input_count(op, nbytes, dtype.itemsize, n))
        if key == last:  # rounding to whole elements gave the same size again
            continue
        last = key
        start = time.monotonic()
        record = measure(impl, op, nbytes, dtype, warmup, iters, check)
        records.append(record)
        on_record(record)
        took = time.monotonic() - start
        if impl.rank() == 0 and took >= progress_seconds:
            print(f"ringcomm-bench: {impl.name} {op} {record.bytes} B done in {took:.1f} s "
                  f"({i}/{len(steps)})", file=sys.stderr, flush=True)
    return records


def _dtype(name: str) -> np.dtype:
    return next(d for d in SUPPORTED_DTYPES if d.name == name)
