"""Collectives to or from one root: reduce, gather and scatter (issue 31, item 10).

As mpi4py's, reduce's and gather's results are on the root only (``None`` on every other
rank); scatter's block j is rank j's.  Every rank passes an array of the same shape and dtype
(scatter's non-roots: only its shape and dtype are read, as broadcast's).  The operation, the
root, the dtype and the shape travel in the operation header (ops 11-15: ``reduce_sum``,
``reduce_max``, ``reduce_min``, ``gather``, ``scatter``), so ranks that disagree on any of
them get a ``MismatchError`` on every rank, never a wrong result or a wait for the deadline.
Each is one operation under the group's ``timeout``.

The schedules, for an array of B bytes per rank on n ranks, all on the ring's own
connections (no direct links: they work on any group, MLX's protocol included, and open no
RDMA queue pairs beyond the ring's):

- reduce runs the ring all-reduce (``plans.all_reduce``, MLX's schedule, so the same
  rounding as all_sum).  A reduce-scatter then the blocks to the root moves (n-1)/n B into
  the root in each phase; the all-reduce's second phase moves the same (n-1)/n B over every
  link at the same time, so the root waits no longer.  The other ranks drop their copy.
- gather is a chain into the root (``plans.gather``): each rank's block, cut in halves as
  all_gather cuts it, travels one half each way around the ring, one hop a step, each rank
  forwarding the blocks of the ranks behind it.  The root's two links carry (n-1)B/2 each,
  the least any schedule brings into a root with two links, and each block crosses each
  link at most once (all_gather would send every block over every link).
- scatter is the mirror chain out of the root (``plans.scatter``): the root sends the
  farthest rank's block first, each rank forwards what is not its own.

Memory: the non-roots of gather and scatter work in a buffer of the whole (n B).  MLX arrays
are taken as numpy arrays (evaluated on the caller's thread); the results are numpy arrays.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .transports import ConfigError

from . import memcopy, plans
from .buffers import contiguous, output
from .mlx_arrays import is_mlx_array, to_numpy
from .ranks import rank_argument

REDUCE_OPS = ("sum", "max", "min")


def reduce(group: Any, x: Any, root: int, op: str, out: np.ndarray | None) -> np.ndarray | None:
    """``op`` ("sum", "max" or "min") of every rank's ``x``, element-wise, on ``root``."""
    n, r = group.size(), group.rank()
    root = rank_argument(root, "root", "reduce", r, n)
    if not isinstance(op, str) or op not in REDUCE_OPS:
        raise ConfigError(f"rank {r}: reduce: op={op!r} is not one of "
                          f"{', '.join(map(repr, REDUCE_OPS))}")
    result = group._all_reduce(f"reduce_{op}", op, _array(x), out if r == root else None,
                               root=root)
    return result if r == root else None


def gather(group: Any, x: Any, root: int, out: np.ndarray | None) -> np.ndarray | None:
    """Every rank's ``x`` concatenated along axis 0 in rank order, on ``root`` (a 0-d ``x``
    gathers into shape (size,), as all_gather)."""
    n, r = group.size(), group.rank()
    root = rank_argument(root, "root", "gather", r, n)
    a = _array(x)
    shape = (n,) if a.ndim == 0 else (n * a.shape[0], *a.shape[1:])
    result = output(out, shape, a.dtype, "gather") if r == root else np.empty(shape, a.dtype)
    flat = result.reshape(-1).view(np.uint8)
    memcopy.copy(flat[r * a.nbytes:(r + 1) * a.nbytes], a.reshape(-1).view(np.uint8))
    group._run("gather", plans.gather(a.nbytes, n, r, root, group._connections()), flat, None,
               a.dtype, a.shape, root=root)
    return result if r == root else None


def scatter(group: Any, x: Any, root: int, out: np.ndarray | None) -> np.ndarray:
    """Block j of the root's ``x`` (axis 0 cut into ``size`` blocks) on rank j."""
    n, r = group.size(), group.rank()
    root = rank_argument(root, "root", "scatter", r, n)
    a = _array(x)
    if a.ndim == 0 or a.shape[0] % n:
        raise ValueError(f"scatter: axis 0 of an array of shape {a.shape} must divide by the "
                         f"group size {n}")
    rows = a.shape[0] // n
    result = output(out, (rows, *a.shape[1:]), a.dtype, "scatter")
    block = a.nbytes // n
    # the root sends from its input (a writable one: the engine takes headers ahead of data
    # into the buffer); the others receive into a buffer of the same layout
    if r == root:
        work = (a if a.flags.writeable else a.copy()).reshape(-1).view(np.uint8)
    else:
        work = np.empty(a.nbytes, np.uint8)
    group._run("scatter", plans.scatter(block, n, r, root, group._connections()), work, None,
               a.dtype, a.shape, root=root)
    memcopy.copy(result.reshape(-1).view(np.uint8), work[r * block:(r + 1) * block])
    return result


def _array(x: Any) -> np.ndarray:
    return contiguous(to_numpy(x) if is_mlx_array(x) else x)
