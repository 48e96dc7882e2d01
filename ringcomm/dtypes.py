"""The element types a ring can carry (MLX's), and how each is reduced."""
from __future__ import annotations

import ml_dtypes
import numpy as np

SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64, np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.complex64))

_SUPPORTED = frozenset(SUPPORTED_DTYPES)
_BOOL = np.dtype(np.bool_)
# MLX reduces bool with logical or for sum and max, logical and for min.
_UFUNCS = {"sum": (np.add, np.logical_or), "max": (np.maximum, np.logical_or),
           "min": (np.minimum, np.logical_and)}


def wire_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype that goes on the wire; TypeError for what MLX cannot carry."""
    dtype = np.dtype(dtype)
    le = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    if le not in _SUPPORTED:
        names = ", ".join(str(t) for t in SUPPORTED_DTYPES)
        raise TypeError(f"dtype {dtype} is not supported by ringcomm (MLX's types only: {names})")
    return le


def reducer(op: str, dtype: np.dtype) -> np.ufunc:
    """The element-wise ufunc that combines two buffers for ``op`` ("sum", "max", "min")."""
    numeric, logical = _UFUNCS[op]
    return logical if dtype == _BOOL else numeric
