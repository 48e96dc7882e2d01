"""What the ringcomm protocol's operation header costs a small all_sum.

    python -m ringcomm.launch -n 2 -- python -m ringcomm.bench.header_cost [BYTES]

Runs the same all_sum (8 bytes unless given) with the header on and off in alternating blocks of one run, on
every rank in step, so that both halves see the same machine noise; prints the medians.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import ringcomm


def main(nbytes: int = 8, blocks: int = 60, calls: int = 100) -> None:
    group = ringcomm.init(strict=True, protocol="ringcomm")
    x = np.ones(max(nbytes // 4, 1), np.float32)
    out = np.empty_like(x)
    times: dict[bool, list[float]] = {True: [], False: []}
    for block in range(blocks):
        headers = block % 2 == 0
        group._headers = headers  # every rank switches at the same call
        for _ in range(calls):
            start = time.perf_counter()
            group.all_sum(x, out=out)
            times[headers].append(time.perf_counter() - start)
    if group.rank() == 0:
        on, off = (float(np.median(times[h])) * 1e6 for h in (True, False))
        print(f"{x.nbytes}-byte all_sum on {group.size()} ranks: header on {on:.1f} us, off {off:.1f} us,"
              f" cost {on - off:.1f} us ({100 * (on / off - 1):.0f}%)")
    group.close()


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
