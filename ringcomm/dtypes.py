"""The element types a ring can carry (MLX's), and how each is reduced.

Reductions are bit-for-bit MLX's (``mlx/distributed/reduction_ops.h``), which matters for
mixed rings: every rank must hold the same bytes.
- sum: ``local + received`` in the type (logical or for bool).  MLX's float16 and bfloat16
  write any NaN result as one canonical NaN (float16 ``0x7D00`` with the sign of the sum,
  bfloat16 ``0x7FC0``); ringcomm does the same.
- max: ``std::max(local, received)``, i.e. ``received if local < received else local``; min:
  ``received if received < local else local``.  A NaN on either side keeps ``local``, and of
  two equal zeros ``local`` wins: not numpy's ``maximum``/``minimum``, which propagate NaN.

bfloat16 is ml_dtypes', whose import takes most of a second and more (1.35 s of the 1.5 s
``import ringcomm`` took on this project's machine, paid by every rank).  So ml_dtypes is
imported only when a bfloat16 is met: an array or a header of that type, or a read of that
entry of ``SUPPORTED_DTYPES``.  A bfloat16 array exists only once ml_dtypes is imported, so
recognising one (``dtype_index``) never imports it.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any, Callable, Iterator

import numpy as np

# The 14 element types, in the order of the operation header's dtype codes (1-based).
DTYPE_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
               "uint64", "float16", "bfloat16", "float32", "float64", "complex64")
BFLOAT16 = DTYPE_NAMES.index("bfloat16")
# dtype -> its position in DTYPE_NAMES, for the dtypes that go on the wire as they are
# (little-endian; bfloat16 joins once ml_dtypes is imported): other modules only read it
WIRE_INDEX = {np.dtype(name): i for i, name in enumerate(DTYPE_NAMES) if i != BFLOAT16}


@functools.lru_cache(maxsize=None)
def bfloat16() -> np.dtype:
    """ml_dtypes' bfloat16, imported on the first call."""
    import ml_dtypes
    dtype = np.dtype(ml_dtypes.bfloat16)
    WIRE_INDEX[dtype] = BFLOAT16
    return dtype


def dtype_index(dtype: np.dtype) -> int | None:
    """``dtype``'s position in ``DTYPE_NAMES``, or None if ringcomm cannot carry it.

    A bfloat16 dtype can exist only once ml_dtypes is imported (by ringcomm, MLX or the
    user), so until then a miss needs no import; after, bfloat16 joins the table."""
    index = WIRE_INDEX.get(dtype)
    if index is None and len(WIRE_INDEX) < len(DTYPE_NAMES) and "ml_dtypes" in sys.modules:
        bfloat16()
        index = WIRE_INDEX.get(dtype)
    return index


def is_bfloat16(dtype: np.dtype) -> bool:
    return dtype_index(dtype) == BFLOAT16


class _SupportedDtypes(Sequence):
    """The supported dtypes in header order, as a read-only sequence whose bfloat16 entry
    imports ml_dtypes when it is first read (``in`` never does)."""

    def __len__(self) -> int:
        return len(DTYPE_NAMES)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        name = DTYPE_NAMES[i]
        return bfloat16() if name == "bfloat16" else np.dtype(name)

    def __iter__(self) -> Iterator[np.dtype]:
        return (self[i] for i in range(len(self)))

    def __contains__(self, dtype: object) -> bool:
        return isinstance(dtype, np.dtype) and dtype_index(dtype) is not None

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(tuple(self))


SUPPORTED_DTYPES: Sequence[np.dtype] = _SupportedDtypes()


class _DtypeCodes:
    """dtype -> its code in the operation header, as a mapping, without importing ml_dtypes."""

    def __getitem__(self, dtype: np.dtype) -> int:
        index = dtype_index(np.dtype(dtype))
        if index is None:
            raise KeyError(dtype)
        return index + 1

    def __contains__(self, dtype: object) -> bool:
        return dtype in SUPPORTED_DTYPES


DTYPE_CODES = _DtypeCodes()

Combine = Callable[..., None]
"""``combine(local, received, src=None)`` writes ``src op received`` into ``local`` (``src``
defaults to ``local``: an in-place fold); ``src`` may be ``local`` itself, never a partial
overlap of it."""

_BOOL = np.dtype(np.bool_)
_FLOAT16 = np.dtype(np.float16)


def wire_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype that goes on the wire; TypeError for what MLX cannot carry."""
    if isinstance(dtype, np.dtype) and dtype in WIRE_INDEX:  # supported, little-endian: itself
        return dtype
    if isinstance(dtype, str) and dtype.strip().lower() == "bfloat16":  # numpy knows the name
        return bfloat16()                                                # only after ml_dtypes
    dtype = np.dtype(dtype)
    le = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    if dtype_index(le) is None:
        raise TypeError(f"dtype {dtype} is not supported by ringcomm (MLX's types only: "
                        f"{', '.join(DTYPE_NAMES)})")
    return le


@functools.lru_cache(maxsize=None)
def reducer(op: str, dtype: np.dtype) -> Combine:
    """How ``op`` ("sum", "max" or "min") folds a received buffer into the local one."""
    bf16 = is_bfloat16(dtype)
    if op == "sum":
        if dtype == _FLOAT16 or bf16:
            return _sum_canonical_nan(_CANONICAL_NAN["bfloat16" if bf16 else "float16"])
        return _ufunc(np.logical_or if dtype == _BOOL else np.add)
    if dtype == _BOOL:
        return _ufunc(np.logical_or if op == "max" else np.logical_and)
    if dtype.kind not in "fc" and not bf16:
        # integers: no NaN, no signed zero, so numpy's ufunc is MLX's op
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
_CANONICAL_NAN = {"float16": (0x7D00, 0x8000), "bfloat16": (0x7FC0, 0x0000)}


def _sum_canonical_nan(nan: tuple[int, int]) -> Combine:
    bits, sign = nan

    def combine(local: np.ndarray, received: np.ndarray, src: np.ndarray | None = None) -> None:
        np.add(local if src is None else src, received, out=local)
        is_nan = np.isnan(local)
        if is_nan.any():
            raw = local.view(np.uint16)
            np.copyto(raw, (raw & sign) | bits, where=is_nan)
    return combine


def _quiet_state() -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    """(quiet, restore): numpy's floating-point warnings off in this thread, and back on.

    A fold's ``inf - inf`` is a NaN like any other, as in MLX, so folds run quietly.  numpy 2
    keeps that state in a context variable, which ``np.errstate`` fills with a state it builds
    on every entry; setting a state built once, per thread as well, takes 2.0k instructions
    instead of 4.8k (of about 90k in an 8-byte all_sum: docs/perf/python-diet.txt).  Those names
    are numpy's own (``numpy/_core/_ufunc_config.py``), not public: without them (numpy 1),
    ``np.seterr``, which numpy 1's ``errstate`` calls too."""
    try:
        from numpy._core._ufunc_config import _extobj_contextvar, _make_extobj
        ignore = _make_extobj(all="ignore")
    except (ImportError, TypeError):
        return functools.partial(np.seterr, all="ignore"), lambda old: np.seterr(**old)
    return functools.partial(_extobj_contextvar.set, ignore), _extobj_contextvar.reset


quiet, restore = _quiet_state()


def _complex_less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MLX's complex64 order (``complex.h``): by real part, then by imaginary part."""
    return (b.real > a.real) | ((b.real == a.real) & (b.imag > a.imag))
