"""Check every collective on every dtype on all ranks:  python -m ringcomm.launch -n 4 examples/selfcheck.py

Each rank builds every rank's input from a seed, computes the expected result with numpy, and
compares bytes (floats: within the error of another summation order).  Exits non-zero on the
first wrong result, so the launcher reports it.
"""
import sys

import numpy as np

import ringcomm
from ringcomm.dtypes import SUPPORTED_DTYPES


def inputs(dtype, rank, count):
    rng = np.random.default_rng(rank)
    if dtype.kind == "b":
        return rng.random(count) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
    return rng.uniform(-2, 2, count).astype(dtype)


def agrees(got, want, dtype, n, xs) -> bool:
    """Exact bytes for bool and integers; floats within n roundings of the sum of |x|."""
    if dtype.kind in "biu":
        return got.tobytes() == want.astype(dtype).tobytes()
    eps = 2.0 ** -7 if dtype.name == "bfloat16" else float(np.finfo(dtype).eps)
    tol = n * eps * np.sum([np.abs(a.astype(np.complex128)) for a in xs], axis=0)
    return bool(np.all(np.abs(got.astype(np.complex128) - want) <= tol))


def main() -> int:
    group = ringcomm.init(strict=True)
    r, n = group.rank(), group.size()
    failures = []

    x = np.full(4 << 20, r + 1, np.float32)  # 16 MiB
    if not np.all(ringcomm.all_sum(x) == n * (n + 1) / 2):
        failures.append("all_sum of 16 MiB float32")

    block = 3001  # elements per rank in sum_scatter: odd, so segments are uneven
    for dtype in SUPPORTED_DTYPES:
        xs = [inputs(dtype, k, n * block) for k in range(n)]
        if dtype.kind == "b":
            total = np.logical_or.reduce(xs)
        elif dtype.kind in "iu":
            total = np.add.reduce(np.stack(xs), axis=0, dtype=dtype)  # wraps like the ring
        else:
            total = np.sum([a.astype(np.complex128) for a in xs], axis=0)
        mine = slice(r * block, (r + 1) * block)
        if not agrees(ringcomm.all_sum(xs[r]), total, dtype, n, xs):
            failures.append(f"all_sum {dtype}")
        if not agrees(ringcomm.sum_scatter(xs[r]), total[mine], dtype, n, [a[mine] for a in xs]):
            failures.append(f"sum_scatter {dtype}")
        if ringcomm.all_gather(xs[r]).tobytes() != np.concatenate(xs).tobytes():
            failures.append(f"all_gather {dtype}")
        if n > 1:  # pass the input one rank to the right; even ranks send first
            right, left = (r + 1) % n, (r - 1) % n
            if r % 2 == 0:
                ringcomm.send(xs[r], right)
                got = ringcomm.recv_like(xs[r], left)
            else:
                got = ringcomm.recv_like(xs[r], left)
                ringcomm.send(xs[r], right)
            if got.tobytes() != xs[left].tobytes():
                failures.append(f"send/recv {dtype}")
    group.close()
    if failures:
        print(f"rank {r}: WRONG: {', '.join(failures)}")
        return 1
    print(f"rank {r}: all_sum of 16 MiB float32, and all_sum, sum_scatter, all_gather, "
          f"send/recv on {len(SUPPORTED_DTYPES)} dtypes: all right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
