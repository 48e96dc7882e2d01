"""The arrays a collective reads and writes: the input's wire layout, the output's checks,
and whether two buffers overlap (shared by ``group`` and ``spread``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import memcopy
from .dtypes import WIRE_INDEX, wire_dtype


def same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` (1-D, contiguous, same size) start at the same address
    (``may_share_memory`` first: it answers most calls in a fraction of the two addresses)."""
    return np.may_share_memory(a, b) and memcopy.address(a) == memcopy.address(b)


def disjoint_or_same(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` (1-D, contiguous, same size) are one buffer or do not overlap."""
    return not np.may_share_memory(a, b) or same_buffer(a, b)


def contiguous(x: Any) -> np.ndarray:
    """A C-contiguous little-endian view of ``x`` (a copy only when the layout needs one)."""
    if type(x) is np.ndarray and x.dtype in WIRE_INDEX and x.flags.c_contiguous:
        return x  # the common case, without two asarray calls
    a = np.asarray(x)
    return np.asarray(a, dtype=wire_dtype(a.dtype), order="C")  # keeps 0-d arrays 0-d


def output(out: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype,
           name: str) -> np.ndarray:
    """``out`` if it can take the result (else ValueError saying why), or a new array."""
    if out is None:
        return np.empty(shape, dtype)
    if isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype:
        flags = out.flags
        if flags.c_contiguous and flags.writeable:
            return out
    got = (f"{type(out).__name__}" if not isinstance(out, np.ndarray)
           else f"shape {out.shape}, dtype {out.dtype}")
    raise ValueError(f"{name}: out= must be a writeable C-contiguous numpy array of shape "
                     f"{tuple(shape)} and dtype {dtype}; got {got}")
