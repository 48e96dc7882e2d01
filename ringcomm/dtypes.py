"""The element types a ring can carry (MLX's), and how each is reduced.

Reductions are bit-for-bit MLX's (``mlx/distributed/reduction_ops.h``), which matters for
mixed rings: every rank must hold the same bytes.
- sum: ``local + received`` in the type (logical or for bool).  MLX's float16 and bfloat16
  write any NaN result as one canonical NaN (float16 ``0x7D00`` with the sign of the sum,
  bfloat16 ``0x7FC0``); ringcomm does the same.
- max: ``std::max(local, received)``, i.e. ``received if local < received else local``; min:
  ``received if received < local else local``.  A NaN on either side keeps ``local``, and of
  two equal zeros ``local`` wins: not numpy's ``maximum``/``minimum``, which propagate NaN.
"""
from __future__ import annotations

import functools
from typing import Callable

import ml_dtypes
import numpy as np

SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64, np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.complex64))

Combine = Callable[..., None]
"""``combine(local, received, src=None)`` writes ``src op received`` into ``local`` (``src``
defaults to ``local``: an in-place fold); ``src`` may be ``local`` itself, never a partial
overlap of it."""

_SUPPORTED = frozenset(SUPPORTED_DTYPES)
_BOOL = np.dtype(np.bool_)
_INEXACT = frozenset(d for d in SUPPORTED_DTYPES if d.kind in "fc" or d.name == "bfloat16")


def wire_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype that goes on the wire; TypeError for what MLX cannot carry."""
    dtype = np.dtype(dtype)
    le = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    if le not in _SUPPORTED:
        names = ", ".join(str(t) for t in SUPPORTED_DTYPES)
        raise TypeError(f"dtype {dtype} is not supported by ringcomm (MLX's types only: {names})")
    return le


@functools.lru_cache(maxsize=None)
def reducer(op: str, dtype: np.dtype) -> Combine:
    """How ``op`` ("sum", "max" or "min") folds a received buffer into the local one."""
    if op == "sum":
        if dtype in _CANONICAL_NAN:
            return _sum_canonical_nan(_CANONICAL_NAN[dtype])
        return _ufunc(np.logical_or if dtype == _BOOL else np.add)
    if dtype == _BOOL:
        return _ufunc(np.logical_or if op == "max" else np.logical_and)
    if dtype not in _INEXACT:  # integers: no NaN, no signed zero, so numpy's ufunc is MLX's op
        return _ufunc(np.maximum if op == "max" else np.minimum)
    less = _complex_less if dtype.kind == "c" else np.less

    def combine(local: np.ndarray, received: np.ndarray, src: np.ndarray | None = None) -> None:
        base = local if src is None else src
        take = less(base, received) if op == "max" else less(received, base)
        if base is not local:
            np.copyto(local, base)
        np.copyto(local, received, where=take)
    return combine


def _ufunc(ufunc: np.ufunc) -> Combine:
    def combine(local: np.ndarray, received: np.ndarray, src: np.ndarray | None = None) -> None:
        ufunc(local if src is None else src, received, out=local)
    return combine


# (bits of MLX's NaN, mask of the sign bits it keeps) for the 16-bit floats
_CANONICAL_NAN = {np.dtype(np.float16): (0x7D00, 0x8000),
                  np.dtype(ml_dtypes.bfloat16): (0x7FC0, 0x0000)}


def _sum_canonical_nan(nan: tuple[int, int]) -> Combine:
    bits, sign = nan

    def combine(local: np.ndarray, received: np.ndarray, src: np.ndarray | None = None) -> None:
        np.add(local if src is None else src, received, out=local)
        is_nan = np.isnan(local)
        if is_nan.any():
            raw = local.view(np.uint16)
            np.copyto(raw, (raw & sign) | bits, where=is_nan)
    return combine


def _complex_less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MLX's complex64 order (``complex.h``): by real part, then by imaginary part."""
    return (b.real > a.real) | ((b.real == a.real) & (b.imag > a.imag))
