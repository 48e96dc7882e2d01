"""A size sweep of ringcomm's collectives, timed on every rank, reported by rank 0.

Each size is run ``--warmup`` times, then ``--iters`` times, each call timed on its own; the
reported time is the median over calls of the slowest rank.  Bandwidths follow nccl-tests:
``algbw = bytes / time`` and ``busbw = algbw * factor`` with factor ``2(n-1)/n`` for all_sum,
all_max and all_min, ``(n-1)/n`` for all_gather and sum_scatter, and 1 for sendrecv; ``bytes``
is the input per rank, except all_gather's, which is its output.
"""
from __future__ import annotations

import argparse
import re
import time
from typing import Sequence

import numpy as np

import ringcomm
from ringcomm.dtypes import SUPPORTED_DTYPES

OPS = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter", "sendrecv")
DTYPES = {d.name: d for d in SUPPORTED_DTYPES}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 8, 64K, 16M or 1G")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def sizes(minbytes: int, maxbytes: int, factor: int) -> list[int]:
    out, size = [], minbytes
    while size <= maxbytes:
        out.append(size)
        size *= factor
    return out


def bus_factor(op: str, n: int) -> float:
    if op in ("all_sum", "all_max", "all_min"):
        return 2 * (n - 1) / n
    return 1.0 if op == "sendrecv" else (n - 1) / n


def run_op(group: ringcomm.Group, op: str, x: np.ndarray, out: np.ndarray | None) -> None:
    if op == "sendrecv":  # one step around the ring: even ranks send first
        r, n = group.rank(), group.size()
        if r % 2 == 0:
            group.send(x, (r + 1) % n)
            group.recv(x.shape, x.dtype, (r - 1) % n, out=out)
        else:
            group.recv(x.shape, x.dtype, (r - 1) % n, out=out)
            group.send(x, (r + 1) % n)
    else:
        getattr(group, op)(x, out=out)


def measure(group: ringcomm.Group, op: str, nbytes: int, dtype: np.dtype, warmup: int,
            iters: int) -> tuple[int, float]:
    """(element count, median seconds of the slowest rank) for one op and size."""
    n = group.size()
    count = max(nbytes // dtype.itemsize, 1)
    if op == "all_gather":
        count = max(count // n, 1)
    if op == "sum_scatter":
        count = max(count // n, 1) * n
    x = np.ones(count, dtype)
    out_shape = {"all_gather": (count * n,), "sum_scatter": (count // n,)}.get(op, (count,))
    out = np.empty(out_shape, dtype)
    for _ in range(warmup):
        run_op(group, op, x, out)
    times = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        run_op(group, op, x, out)
        times[i] = time.perf_counter() - start
    slowest = group.all_max(np.array([np.median(times)]))
    return count, float(slowest[0])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep",
                                description="Time ringcomm's collectives over a size sweep "
                                            "(run it under ringcomm-launch).")
    p.add_argument("-b", "--minbytes", type=parse_size, default=8)
    p.add_argument("-e", "--maxbytes", type=parse_size, default=64 << 20)
    p.add_argument("-f", "--stepfactor", type=int, default=4)
    p.add_argument("--op", default="all_sum",
                   help=f"comma-separated, from {', '.join(OPS)}")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("-w", "--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--protocol", default=None, choices=["ringcomm", "mlx"])
    args = p.parse_args(argv)
    ops = args.op.split(",")
    for op in ops:
        if op not in OPS:
            p.error(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    group = ringcomm.init(strict=True, protocol=args.protocol)
    n, dtype = group.size(), DTYPES[args.dtype]
    if group.rank() == 0:
        print(f"# ringcomm, {n} ranks, {group._transport.connections} connection(s) per "
              f"neighbour, protocol {args.protocol or 'default'}, {args.iters} iterations, "
              "median of the slowest rank")
        print(f"{'op':>12} {'bytes':>12} {'count':>12} {'type':>9} {'time(us)':>10} "
              f"{'algbw(GB/s)':>12} {'busbw(GB/s)':>12}")
    for op in ops:
        for nbytes in sizes(args.minbytes, args.maxbytes, args.stepfactor):
            count, seconds = measure(group, op, nbytes, dtype, args.warmup, args.iters)
            moved = count * dtype.itemsize * (n if op == "all_gather" else 1)
            algbw = moved / seconds / 1e9
            if group.rank() == 0:
                print(f"{op:>12} {moved:>12} {count:>12} {dtype.name:>9} {seconds * 1e6:>10.1f} "
                      f"{algbw:>12.3f} {algbw * bus_factor(op, n):>12.3f}", flush=True)
    group.close()


if __name__ == "__main__":
    main()
