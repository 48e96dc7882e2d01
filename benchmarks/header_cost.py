"""What the ringcomm protocol's operation header costs a small all_sum.

    python -m ringcomm.launch -n 2 -- python -m ringcomm.bench.header_cost [BYTES]

Runs the same all_sum (8 bytes unless given) with the header on and off in alternating blocks
of one run, on every rank in step, so that both halves see the same machine noise.  A call's
time is the slowest rank's.  The cost is the median over pairs of neighbouring blocks (one on,
one off) of the difference of their medians, with a 95% confidence interval for it (the sign
test's, which assumes nothing of the noise): when the interval holds 0 the cost is within the
noise and is reported as such, never as a negative cost.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Sequence

import numpy as np

import ringcomm
from ringcomm.transports.errors import ConfigError, RingcommError

from .options import parse_size

CONFIDENCE = 0.95


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ringcomm.bench.header_cost",
        description="Time a small all_sum with ringcomm's operation header on and off, in "
                    "alternating blocks, and report the header's cost with its 95% confidence "
                    "interval. Run it as the ranks of a ring: python -m ringcomm.launch -n 2 -- "
                    "python -m ringcomm.bench.header_cost [BYTES]")
    p.add_argument("nbytes", nargs="?", type=parse_size, default=8, metavar="BYTES",
                   help="the all_sum's size in bytes: 8, 64K, 1M (default 8)")
    p.add_argument("--blocks", type=int, default=60,
                   help="blocks, alternately with and without the header (default 60)")
    p.add_argument("--calls", type=int, default=100, help="timed calls per block (default 100)")
    args = p.parse_args(argv)
    if args.blocks < 4 or args.blocks % 2:
        p.error(f"--blocks must be even and at least 4 (pairs of on and off); got {args.blocks}")
    if args.calls < 1:
        p.error(f"--calls must be at least 1; got {args.calls}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        group = ringcomm.init(strict=True, protocol="ringcomm")
    except ConfigError as e:
        print(f"header_cost: {e} (run it under python -m ringcomm.launch -n 2 --)",
              file=sys.stderr)
        return 2
    try:
        times = _time_blocks(group, args.nbytes, args.blocks, args.calls)
        if group.rank() == 0:
            print(describe(times, max(args.nbytes // 4, 1) * 4, group.size()))
    except RingcommError as e:
        print(f"header_cost: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        group.close()
    return 0


def _time_blocks(group: ringcomm.Group, nbytes: int, blocks: int, calls: int) -> np.ndarray:
    """Seconds per call, the slowest rank's, as (blocks, calls); even blocks have the header."""
    x = np.ones(max(nbytes // 4, 1), np.float32)
    out = np.empty_like(x)
    times = np.empty((blocks, calls))
    headers = group._headers
    for block in range(blocks):
        group._headers = block % 2 == 0  # every rank switches at the same call
        for call in range(calls):
            start = time.perf_counter()
            group.all_sum(x, out=out)
            times[block, call] = time.perf_counter() - start
    group._headers = headers
    return group.all_max(times)


def describe(times: np.ndarray, nbytes: int, ranks: int) -> str:
    """The report: each half's median and spread, the cost and whether it is noise."""
    medians = np.median(times, axis=1) * 1e6  # per block, in us
    on, off = medians[0::2], medians[1::2]
    diffs = np.sort(on - off)                 # one per pair of neighbouring blocks
    cost = float(np.median(diffs))
    low, high = sign_test_interval(diffs, CONFIDENCE)
    base = float(np.median(off))
    lines = [f"{nbytes}-byte all_sum on {ranks} ranks, {len(medians)} alternating blocks of "
             f"{times.shape[1]} calls (a call's time is the slowest rank's):"]
    for name, half in (("header on:", on), ("header off:", off)):
        lines.append(f"  {name:<11} median {np.median(half):.1f} us; blocks' medians "
                     f"{half.min():.1f} to {half.max():.1f} us")
    interval = (f"{100 * CONFIDENCE:.0f}% interval {low:+.1f} to {high:+.1f} us over "
                f"{len(diffs)} pairs of blocks")
    if low > 0:
        lines.append(f"  cost: {cost:.1f} us ({100 * cost / base:.0f}% of the call), {interval}")
    elif high < 0:
        lines.append(f"  no cost measurable: the calls with the header were faster ({interval}),"
                     " which the header cannot cause: the machine's noise dominates; run again "
                     "on a quiet machine")
    else:
        lines.append(f"  no cost measurable: the difference is within the noise ({interval}, "
                     "which holds 0)")
    return "\n".join(lines)


def sign_test_interval(sorted_values: np.ndarray, confidence: float) -> tuple[float, float]:
    """A distribution-free interval for the median of ``sorted_values`` (sign test): the
    k-th smallest and k-th largest values, k as large as ``confidence`` allows."""
    n = len(sorted_values)
    tail = (1 - confidence) / 2
    k, below = 0, 0.0  # P(fewer than k+1 values under the median) = below
    while k < n // 2:
        nxt = below + math.comb(n, k) / 2 ** n
        if nxt > tail:
            break
        below, k = nxt, k + 1
    k = max(k, 1)
    return float(sorted_values[k - 1]), float(sorted_values[n - k])


if __name__ == "__main__":
    sys.exit(main())
