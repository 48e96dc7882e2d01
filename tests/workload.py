"""Inputs every rank can regenerate from a seed, the rank-side calls, and numpy references.

Ranks build their own inputs (only seeds cross the control pipe) and the test process
rebuilds all of them to compute the expected result with plain numpy.
"""
from __future__ import annotations

import numpy as np

import ringcomm
from ringcomm.dtypes import SUPPORTED_DTYPES

DTYPES = {d.name: d for d in SUPPORTED_DTYPES}
INEXACT = frozenset(n for n, d in DTYPES.items() if d.kind in "fc" or n == "bfloat16")
OPS = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter", "sendrecv")


# Special float inputs.  "nan" mixes in NaN of both signs, signed zeros and infinities.  "inf"
# leaves out explicit NaN: when two NaN meet in a sum, which one's sign survives depends on how
# the summing loop was compiled (MLX's vector body and tail differ), so only sums whose NaN
# all come from inf - inf (one default NaN) have a single right answer.
SPECIAL_VALUES = {"nan": (np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1.0),
                  "inf": (0.0, -0.0, np.inf, -np.inf, 1.0)}


def make_input(seed: int, rank: int, dtype_name: str, shape: tuple[int, ...],
               strided: bool = False, special: str = "") -> np.ndarray:
    """Random values over the dtype's range (integers wrap when summed: that is tested too).

    ``special`` ("nan" or "inf", see SPECIAL_VALUES) mixes special values into float inputs.
    """
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng([seed, rank])
    full = (shape[0] * 2, *shape[1:]) if strided and shape else shape
    if dtype.kind == "b":
        a = rng.random(full) < 0.5
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=full, dtype=dtype, endpoint=True)
    elif dtype.kind == "c":
        a = (rng.uniform(-100, 100, full) + 1j * rng.uniform(-100, 100, full)).astype(dtype)
    else:
        a = rng.uniform(-4, 4, full).astype(dtype)
    if special and dtype_name in INEXACT:
        values = np.array(SPECIAL_VALUES[special])
        a = np.where(rng.random(full) < 0.5, rng.choice(values, size=full), a).astype(dtype)
        if dtype.kind == "c":
            a.imag = np.where(rng.random(full) < 0.3, rng.choice(values, size=full), a.imag)
    return a[::2] if strided and shape else a  # a non-contiguous view


def run_op(group: ringcomm.Group, op: str, dtype_name: str, shape: tuple[int, ...], seed: int,
           strided: bool, special: str = "") -> np.ndarray:
    """Rank side: run ``op`` on this rank's input and return the result."""
    x = make_input(seed, group.rank(), dtype_name, shape, strided, special)
    if op == "sendrecv":  # to the right, from the left; even ranks send first
        r, n = group.rank(), group.size()
        if n == 1:
            return x.copy()
        if r % 2 == 0:
            ringcomm.send(x, (r + 1) % n, group=group)
            return ringcomm.recv_like(x, (r - 1) % n, group=group)
        got = ringcomm.recv(x.shape, x.dtype, (r - 1) % n, group=group)
        ringcomm.send(x, (r + 1) % n, group=group)
        return got
    return getattr(ringcomm, op)(x, group=group)


def run_op_any(group, op: str, dtype_name: str, shape: tuple[int, ...], seed: int,
               strided: bool, special: str = "") -> np.ndarray:
    """Rank side for mixed rings: ringcomm's call on a ringcomm rank, MLX's on an MLX rank."""
    if isinstance(group, ringcomm.Group):
        return run_op(group, op, dtype_name, shape, seed, strided, special)
    import mlx.core as mx
    dist = mx.distributed
    x = to_mx(make_input(seed, group.rank(), dtype_name, shape, strided, special))
    if op == "sendrecv":
        r, n = group.rank(), group.size()
        if r % 2 == 0:
            mx.eval(dist.send(x, (r + 1) % n, group=group))
            y = dist.recv_like(x, (r - 1) % n, group=group)
        else:
            y = dist.recv_like(x, (r - 1) % n, group=group)
            mx.eval(y)
            mx.eval(dist.send(x, (r + 1) % n, group=group))
    else:
        y = getattr(dist, op)(x, group=group)
    mx.eval(y)
    return from_mx(y)


def to_mx(a: np.ndarray):
    """numpy -> mx.array, bfloat16 included (through its bits)."""
    import mlx.core as mx
    if a.dtype == DTYPES["bfloat16"]:
        return mx.array(np.asarray(a, order="C").view(np.uint16)).view(mx.bfloat16)
    name = "bool_" if a.dtype.kind == "b" else a.dtype.name
    return mx.array(a, dtype=getattr(mx, name))  # mx.array alone turns float64 into float32


def from_mx(y) -> np.ndarray:
    import mlx.core as mx
    if y.dtype == mx.bfloat16:
        return np.array(y.view(mx.uint16)).view(DTYPES["bfloat16"])
    return np.array(y)


def expected(op: str, dtype_name: str, shape: tuple[int, ...], seed: int, size: int,
             strided: bool) -> list[np.ndarray]:
    """What each rank should get, computed with numpy alone."""
    xs = [make_input(seed, r, dtype_name, shape, strided) for r in range(size)]
    dtype = DTYPES[dtype_name]
    if op == "all_gather":
        out = np.stack(xs) if not shape else np.concatenate(xs)
        return [out] * size
    if op == "sendrecv":
        return [xs[(r - 1) % size] for r in range(size)]
    stacked = np.stack(xs)
    if op in ("all_sum", "sum_scatter"):
        if dtype.kind == "b":
            total = np.logical_or.reduce(stacked, axis=0)
        elif dtype.kind in "iu":
            total = np.add.reduce(stacked, axis=0, dtype=dtype)  # wraps, exactly like the ring
        else:
            wide = np.complex128 if dtype.kind == "c" else np.float64
            total = stacked.astype(wide).sum(axis=0)
        if op == "sum_scatter":
            total = total.reshape(size, shape[0] // size, *shape[1:])
            return [total[r] for r in range(size)]
        return [total] * size
    reduce = {"all_max": (np.maximum, np.logical_or), "all_min": (np.minimum, np.logical_and)}[op]
    ufunc = reduce[1] if dtype.kind == "b" else reduce[0]
    return [ufunc.reduce(stacked, axis=0)] * size


def sum_tolerance(dtype_name: str, shape: tuple[int, ...], seed: int, size: int,
                  strided: bool) -> np.ndarray | float:
    """Bound on a float sum's error from another summation order (rounding at every add)."""
    dtype = DTYPES[dtype_name]
    if dtype_name not in INEXACT:
        return 0.0
    xs = [np.abs(make_input(seed, r, dtype_name, shape, strided).astype(np.complex128))
          for r in range(size)]
    eps = float(np.finfo(dtype).eps) if dtype.name != "bfloat16" else 2.0 ** -7
    return size * eps * np.sum(xs, axis=0)
