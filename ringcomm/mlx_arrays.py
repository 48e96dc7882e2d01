"""MLX arrays in and out of the collectives, without importing mlx unless one is passed.

The send side reads the evaluated array's own memory through the buffer protocol (no copy;
bfloat16, which has no buffer format, is read through a uint16 view); the result fills one
numpy buffer, which ``mx.array`` wraps with one copy into MLX's memory.

Collectives are eager, so on MLX arrays they run inside ``mx.custom_function``: under
``mx.grad`` they are differentiable with MLX's own rules (the cotangent passes through
all_sum/all_max/all_min unchanged, all_gather's is sliced back to this rank's block,
sum_scatter's is gathered), and inside ``mx.compile`` or ``mx.vmap``, where an eager call
would be frozen into the graph as a constant, they raise ``EagerCollectiveError``.
"""
from __future__ import annotations

from typing import Any, Callable

import ml_dtypes
import numpy as np

from .transports.errors import RingcommError

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


class EagerCollectiveError(RingcommError, TypeError):
    """A collective was called inside mx.compile or mx.vmap."""


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
    if x.dtype == mx.bfloat16:
        return np.asarray(x.view(mx.uint16)).view(_BFLOAT16)
    return np.asarray(x)


def to_mlx(a: np.ndarray) -> Any:
    """A new MLX array with ``a``'s dtype (float64 stays float64), copied once."""
    import mlx.core as mx
    if a.dtype == _BFLOAT16:
        return mx.array(a.view(np.uint16)).view(mx.bfloat16)
    return mx.array(a, dtype=getattr(mx, "bool_" if a.dtype.kind == "b" else a.dtype.name))


def mlx_dtype_to_numpy(dtype: Any) -> np.dtype:
    """numpy's dtype for an ``mx.Dtype`` (for ``recv(shape, mx.float16, ...)``)."""
    import mlx.core as mx
    if dtype == mx.bfloat16:
        return _BFLOAT16
    name = str(dtype).rsplit(".", 1)[-1]
    return np.dtype("bool" if name in ("bool", "bool_") else name)


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
