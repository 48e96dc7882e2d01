"""The collectives as module functions on the default group: ``ringcomm.all_sum(x)``.

Each takes ``group=`` (None: the group of the last ``init()``, joined on first use as MLX
does), MLX's ``stream=`` (the device stream a lazy op runs on; ringcomm's collectives run
eagerly on the calling thread, so it is accepted for MLX code and ignored) and
``async_op=`` (True: a ``Work`` at once instead of the result; the overloads tell type
checkers which).
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, overload

import numpy as np

from .group import Group
from .init import default_group
from .work import Work

_Group = Optional[Group]
_Out = Optional[np.ndarray]


def _group(group: Group | None) -> Group:
    return default_group() if group is None else group


@overload
def all_sum(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def all_sum(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: Literal[True]) -> Work: ...
def all_sum(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: bool = False) -> np.ndarray | Work:
    """Sum ``x`` over every rank of ``group``."""
    return _group(group).all_sum(x, out=out, async_op=async_op)


@overload
def all_max(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def all_max(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: Literal[True]) -> Work: ...
def all_max(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: bool = False) -> np.ndarray | Work:
    """Element-wise maximum of ``x`` over every rank of ``group``."""
    return _group(group).all_max(x, out=out, async_op=async_op)


@overload
def all_min(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def all_min(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: Literal[True]) -> Work: ...
def all_min(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: bool = False) -> np.ndarray | Work:
    """Element-wise minimum of ``x`` over every rank of ``group``."""
    return _group(group).all_min(x, out=out, async_op=async_op)


@overload
def all_gather(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
               async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def all_gather(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
               async_op: Literal[True]) -> Work: ...
def all_gather(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
               async_op: bool = False) -> np.ndarray | Work:
    """Concatenate every rank's ``x`` along axis 0."""
    return _group(group).all_gather(x, out=out, async_op=async_op)


@overload
def sum_scatter(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
                async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def sum_scatter(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
                async_op: Literal[True]) -> Work: ...
def sum_scatter(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
                async_op: bool = False) -> np.ndarray | Work:
    """Sum ``x`` over every rank and return this rank's slice of axis 0."""
    return _group(group).sum_scatter(x, out=out, async_op=async_op)


@overload
def send(x: Any, dst: int, *, group: _Group = None, stream: Any = None,
         async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def send(x: Any, dst: int, *, group: _Group = None, stream: Any = None,
         async_op: Literal[True]) -> Work: ...
def send(x: Any, dst: int, *, group: _Group = None, stream: Any = None,
         async_op: bool = False) -> np.ndarray | Work:
    """Send ``x`` to rank ``dst`` (a non-neighbour over a direct connection)."""
    return _group(group).send(x, dst, async_op=async_op)


@overload
def recv(shape: Sequence[int] | int, dtype: Any, src: int, *, group: _Group = None,
         out: _Out = None, stream: Any = None, async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def recv(shape: Sequence[int] | int, dtype: Any, src: int, *, group: _Group = None,
         out: _Out = None, stream: Any = None, async_op: Literal[True]) -> Work: ...
def recv(shape: Sequence[int] | int, dtype: Any, src: int, *, group: _Group = None,
         out: _Out = None, stream: Any = None, async_op: bool = False) -> np.ndarray | Work:
    """Receive an array of ``shape`` and ``dtype`` from rank ``src``."""
    return _group(group).recv(shape, dtype, src, out=out, async_op=async_op)


@overload
def recv_like(x: Any, src: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
              async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def recv_like(x: Any, src: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
              async_op: Literal[True]) -> Work: ...
def recv_like(x: Any, src: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
              async_op: bool = False) -> np.ndarray | Work:
    """Receive an array shaped and typed like ``x`` from rank ``src``."""
    return _group(group).recv_like(x, src, out=out, async_op=async_op)


@overload
def broadcast(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
              async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def broadcast(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
              async_op: Literal[True]) -> Work: ...
def broadcast(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
              async_op: bool = False) -> np.ndarray | Work:
    """Root's ``x`` on every rank of ``group`` (the others pass a same-shaped buffer to fill)."""
    return _group(group).broadcast(x, root, out=out, async_op=async_op)


@overload
def all_to_all(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
               async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def all_to_all(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
               async_op: Literal[True]) -> Work: ...
def all_to_all(x: Any, *, group: _Group = None, out: _Out = None, stream: Any = None,
               async_op: bool = False) -> np.ndarray | Work:
    """Block j of ``x``'s axis 0 to rank j; the blocks received, in rank order."""
    return _group(group).all_to_all(x, out=out, async_op=async_op)


@overload
def barrier(*, group: _Group = None, stream: Any = None,
            async_op: Literal[False] = False) -> None: ...
@overload
def barrier(*, group: _Group = None, stream: Any = None, async_op: Literal[True]) -> Work: ...
def barrier(*, group: _Group = None, stream: Any = None,
            async_op: bool = False) -> Work | None:
    """Block until every rank of ``group`` has reached the barrier."""
    return _group(group).barrier(async_op=async_op)


@overload
def reduce(x: Any, root: int, op: str = "sum", *, group: _Group = None, out: _Out = None,
           stream: Any = None, async_op: Literal[False] = False) -> np.ndarray | None: ...
@overload
def reduce(x: Any, root: int, op: str = "sum", *, group: _Group = None, out: _Out = None,
           stream: Any = None, async_op: Literal[True]) -> Work: ...
def reduce(x: Any, root: int, op: str = "sum", *, group: _Group = None, out: _Out = None,
           stream: Any = None, async_op: bool = False) -> np.ndarray | None | Work:
    """``op`` ("sum", "max", "min") of ``x`` over every rank, on ``root`` (None elsewhere)."""
    return _group(group).reduce(x, root, op, out=out, async_op=async_op)


@overload
def gather(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
           async_op: Literal[False] = False) -> np.ndarray | None: ...
@overload
def gather(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
           async_op: Literal[True]) -> Work: ...
def gather(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
           async_op: bool = False) -> np.ndarray | None | Work:
    """Every rank's ``x`` concatenated along axis 0, on ``root`` (None elsewhere)."""
    return _group(group).gather(x, root, out=out, async_op=async_op)


@overload
def scatter(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: Literal[False] = False) -> np.ndarray: ...
@overload
def scatter(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: Literal[True]) -> Work: ...
def scatter(x: Any, root: int, *, group: _Group = None, out: _Out = None, stream: Any = None,
            async_op: bool = False) -> np.ndarray | Work:
    """Block j of the root's ``x`` (axis 0 cut into ``size`` blocks) on rank j."""
    return _group(group).scatter(x, root, out=out, async_op=async_op)


@overload
def broadcast_object(obj: Any, root: int, *, group: _Group = None, stream: Any = None,
                     async_op: Literal[False] = False) -> Any: ...
@overload
def broadcast_object(obj: Any, root: int, *, group: _Group = None, stream: Any = None,
                     async_op: Literal[True]) -> Work: ...
def broadcast_object(obj: Any, root: int, *, group: _Group = None, stream: Any = None,
                     async_op: bool = False) -> Any:
    """The root's ``obj`` on every rank, pickled.  Unpickling runs code: use only within an
    authenticated group (one with a token)."""
    return _group(group).broadcast_object(obj, root, async_op=async_op)


@overload
def all_gather_object(obj: Any, *, group: _Group = None, stream: Any = None,
                      async_op: Literal[False] = False) -> list[Any]: ...
@overload
def all_gather_object(obj: Any, *, group: _Group = None, stream: Any = None,
                      async_op: Literal[True]) -> Work: ...
def all_gather_object(obj: Any, *, group: _Group = None, stream: Any = None,
                      async_op: bool = False) -> list[Any] | Work:
    """Every rank's ``obj``, in rank order, pickled.  Unpickling runs code: use only within
    an authenticated group (one with a token)."""
    return _group(group).all_gather_object(obj, async_op=async_op)
