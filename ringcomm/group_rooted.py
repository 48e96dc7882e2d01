"""``Group``'s collectives to or from a root and of Python objects, as thin methods (a base
class of ``Group``, so that group.py stays one screenful of machinery): the work is in
``rooted`` and ``objects``.  Each takes ``async_op`` (``work.asynchronous``) and MLX's
``stream=`` (ignored), as every collective does."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import objects, rooted
from .work import asynchronous


class RootedMethods:
    """reduce, gather, scatter, broadcast_object and all_gather_object."""

    @asynchronous
    def reduce(self, x: Any, root: int, op: str = "sum", *, out: np.ndarray | None = None,
               stream: Any = None) -> np.ndarray | None:
        """``op`` ("sum", "max" or "min") of every rank's ``x``, element-wise, on ``root``
        (``out=`` there); ``None`` on the other ranks, as mpi4py's ``Reduce``."""
        return rooted.reduce(self, x, root, op, out)

    @asynchronous
    def gather(self, x: Any, root: int, *, out: np.ndarray | None = None,
               stream: Any = None) -> np.ndarray | None:
        """Every rank's ``x`` (same shape and dtype) concatenated along axis 0, in rank
        order, on ``root``; ``None`` on the other ranks."""
        return rooted.gather(self, x, root, out)

    @asynchronous
    def scatter(self, x: Any, root: int, *, out: np.ndarray | None = None,
                stream: Any = None) -> np.ndarray:
        """Block j of the root's ``x`` (axis 0 cut into ``size`` blocks) on rank j; the other
        ranks pass an array of the same shape and dtype (only those are read)."""
        return rooted.scatter(self, x, root, out)

    @asynchronous
    def broadcast_object(self, obj: Any, root: int, *, stream: Any = None) -> Any:
        """The root's ``obj`` on every rank, pickled (the root gets ``obj`` itself).

        Warning: unpickling runs code chosen by whoever pickled.  Use only within an
        authenticated group (one with a token): a rank can run code on every other rank.
        """
        return objects.broadcast_object(self, obj, root)

    @asynchronous
    def all_gather_object(self, obj: Any, *, stream: Any = None) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled; this rank's entry is
        ``obj`` itself).  Warning: as ``broadcast_object``, only within an authenticated
        group: unpickling runs code."""
        return objects.all_gather_object(self, obj)
