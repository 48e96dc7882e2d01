"""MLX arrays in and out of the collectives, without importing mlx unless one is passed.

The send side reads the evaluated array's own memory through the buffer protocol (no copy;
bfloat16, which numpy's buffer protocol does not know, through the raw bytes).  A
collective's result is written straight into the memory of a new MLX array (``new_array``):
no numpy intermediate, no second copy, and the result is MLX's alone, so the next operation
can take its buffer over (donation), as with MLX's own collectives.

Collectives are eager, so on MLX arrays they run inside ``mx.custom_function``: under
``mx.grad`` they are differentiable with MLX's own rules (the cotangent passes through
all_sum/all_max/all_min unchanged, all_gather's is sliced back to this rank's block,
sum_scatter's is gathered), and inside ``mx.compile`` or ``mx.vmap``, where an eager call
would be frozen into the graph as a constant, they raise ``EagerCollectiveError``.
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Callable

import numpy as np

from .transports.errors import RingcommError

from .dtypes import bfloat16, is_bfloat16  # ml_dtypes is imported once a bfloat16 is met
_UINT16 = np.dtype(np.uint16)
_MX_DTYPES: dict[np.dtype, Any] = {}  # numpy dtype -> mx.Dtype (dtype.name costs ~5 us a call)
_NP_DTYPES: dict[Any, np.dtype] = {}  # mx.Dtype -> numpy dtype
# Results up to this size are allocated by copying uninitialised host memory into MLX (a
# copy of a few KiB, in this thread); larger ones are filled with zeros on MLX's stream (one
# memset, with no page faults of a host buffer first).
_SMALL_RESULT = 1 << 20
_ZEROS: dict[np.dtype, Any] = {}  # one evaluated 0-d zero per dtype, for the large results
# The collective per (group, op), wrapped once: making an mx.custom_function per call costs.
_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class EagerCollectiveError(RingcommError, TypeError):
    """A collective was called inside mx.compile or mx.vmap."""


INSTALL_HINT = ("pip install '.[mlx]' in a clone of ringcomm (no release on PyPI yet), or "
                "pip install 'mlx[cpu]' on Linux, 'mlx' on macOS")


def require_mlx(what: str) -> Any:
    """``mlx.core``, or an ImportError that says what needs it and how to install it."""
    try:
        import mlx.core as mx
    except ImportError as e:
        raise ImportError(f"{what} needs MLX, which is not importable here ({e}): "
                          f"{INSTALL_HINT}") from e
    return mx


def is_mlx_array(x: Any) -> bool:
    t = type(x)
    return t.__name__ == "array" and t.__module__.startswith("mlx")


def to_numpy(x: Any) -> np.ndarray:
    """The evaluated MLX array's memory as a numpy array (a view, not a copy)."""
    import mlx.core as mx
    try:
        mx.eval(x)
    except ValueError as e:
        if "transformations" not in str(e):
            raise
        raise EagerCollectiveError(
            "ringcomm collectives run eagerly and cannot be traced: call them outside "
            "mx.compile and mx.vmap (inside mx.grad they are fine)") from None
    if x.dtype == mx.bfloat16:  # the raw bytes: x.view(mx.uint16) would be another eval
        try:
            raw = memoryview(x).cast("B")
        except TypeError:  # not C-contiguous
            x = mx.contiguous(x)
            mx.eval(x)
            raw = memoryview(x).cast("B")
        return np.frombuffer(raw, bfloat16()).reshape(x.shape)
    return np.asarray(x)


def mlx_dtype(dtype: np.dtype) -> Any:
    """The ``mx.Dtype`` of a numpy dtype (bfloat16 included)."""
    found = _MX_DTYPES.get(dtype)
    if found is None:
        import mlx.core as mx
        found = _MX_DTYPES[dtype] = getattr(mx, "bool_" if dtype.kind == "b" else dtype.name)
    return found


def new_array(shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, np.ndarray]:
    """A new, evaluated MLX array of ``shape`` and ``dtype`` that nothing else shares, and a
    writable numpy view of its memory for a result to be written into."""
    import mlx.core as mx
    bf16 = is_bfloat16(dtype)
    store = _UINT16 if bf16 else dtype  # numpy cannot export bfloat16
    if math.prod(shape) * store.itemsize <= _SMALL_RESULT:
        result = mx.array(np.empty(shape, store), dtype=mlx_dtype(store))
    else:  # filled from a kept zero, so that nothing but the result is allocated
        zero = _ZEROS.get(store)
        if zero is None:
            zero = _ZEROS[store] = mx.zeros((), mlx_dtype(store))
            mx.eval(zero)
        result = mx.full(shape, zero)
        mx.eval(result)
    view = np.asarray(result)
    if not view.flags.writeable:  # pragma: no cover - MLX's buffers have been writable
        raise RuntimeError("ringcomm: this MLX exports read-only buffers; cannot write results")
    if bf16:
        return result.view(mx.bfloat16), view.view(bfloat16())
    return result, view


def collective(group: Any, op: str, x: Any) -> Any:
    """``group``'s ``op`` on the MLX array ``x``: eager, differentiable, the result in a new
    MLX array."""
    calls = _CALLS.get(group)
    if calls is None:
        calls = _CALLS[group] = {}
    call = calls.get(op)
    if call is None:  # weakly: the cache must not keep its key, the group, alive
        proxy = weakref.proxy(group)
        call = calls[op] = differentiable(proxy, op, functools.partial(_eager, proxy, op))
    return call(x)


def _eager(group: Any, op: str, x: Any) -> Any:
    a = to_numpy(x)
    shape = _result_shape(op, a.shape, group.size())
    if shape is None:
        return getattr(group, op)(a)  # the numpy path raises its error
    result, view = new_array(shape, a.dtype)
    getattr(group, op)(a, out=view)
    return result


def _result_shape(op: str, shape: tuple[int, ...], n: int) -> tuple[int, ...] | None:
    if op == "all_gather":
        return (n,) if not shape else (n * shape[0], *shape[1:])
    if op == "sum_scatter":
        return None if not shape or shape[0] % n else (shape[0] // n, *shape[1:])
    return shape


def recv(group: Any, shape: tuple[int, ...], dtype: Any, src: int) -> Any:
    """``group.recv`` into a new MLX array of the ``mx.Dtype`` ``dtype``."""
    np_dtype = mlx_dtype_to_numpy(dtype)
    result, view = new_array(shape, np_dtype)
    group.recv(shape, np_dtype, src, out=view)
    return result


def to_mlx(a: np.ndarray) -> Any:
    """A new MLX array with ``a``'s dtype (float64 stays float64), copied once."""
    import mlx.core as mx
    if is_bfloat16(a.dtype):
        return mx.array(a.view(np.uint16)).view(mx.bfloat16)
    return mx.array(a, dtype=mlx_dtype(a.dtype))


def mlx_dtype_to_numpy(dtype: Any) -> np.dtype:
    """numpy's dtype for an ``mx.Dtype`` (for ``recv(shape, mx.float16, ...)``)."""
    found = _NP_DTYPES.get(dtype)
    if found is None:
        import mlx.core as mx
        if dtype == mx.bfloat16:
            found = bfloat16()
        else:
            name = str(dtype).rsplit(".", 1)[-1]
            found = np.dtype("bool" if name in ("bool", "bool_") else name)
        _NP_DTYPES[dtype] = found
    return found


def differentiable(group: Any, op: str, eager: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``eager`` (MLX array in, MLX array out) wrapped with MLX's gradient rule for ``op``."""
    import mlx.core as mx

    @mx.custom_function
    def f(x):
        return eager(x)

    @f.vjp
    def f_vjp(x, cotangent, output):
        if op == "all_gather":  # this rank's block of the gathered cotangent
            r = group.rank()
            return cotangent[r] if x.ndim == 0 else \
                cotangent[r * x.shape[0]:(r + 1) * x.shape[0]]
        if op == "sum_scatter":
            return group.all_gather(cotangent)
        return cotangent  # all_sum, all_max, all_min: as MLX's AllReduce
    return f
