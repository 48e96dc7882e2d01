"""ringcomm: ring collectives for numpy (and MLX) in pure Python, wire-compatible with MLX's ring.

    import ringcomm, numpy as np
    group = ringcomm.init()            # MLX_RANK / MLX_HOSTFILE, as mlx.launch sets them
    total = ringcomm.all_sum(np.ones(4, np.float32))
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import _source_tree

_source_tree.install()  # a checkout on PYTHONPATH: find ringcomm.transports etc. (see there)

from .transports.errors import (CommError, CommTimeoutError, ConfigError, GroupBrokenError,
                               MismatchError, PeerLostError, RingcommError)

from .dtypes import SUPPORTED_DTYPES
from .group import Group
from .init import default_group, init
from .mlx_arrays import EagerCollectiveError
from .mlx_patch import patch_mlx, unpatch_mlx  # imports mlx only when called
from .work import WaitTimeoutError, Work

__all__ = ["CommError", "CommTimeoutError", "ConfigError", "EagerCollectiveError", "Group", "GroupBrokenError",
           "MismatchError", "PeerLostError", "RingcommError", "SUPPORTED_DTYPES", "all_gather", "all_max",
           "all_min", "all_sum", "all_to_all", "barrier", "broadcast", "init", "patch_mlx", "recv", "recv_like", "send",
           "sum_scatter", "unpatch_mlx", "WaitTimeoutError", "Work"]  # async_op=True: ringcomm.work


def __getattr__(name: str) -> Any:
    if name == "__version__":  # on first use: importlib.metadata costs ~0.1 s to import
        from ._version import version
        globals()["__version__"] = value = version()
        return value
    raise AttributeError(f"module 'ringcomm' has no attribute {name!r}")


def _group(group: Group | None) -> Group:
    return default_group() if group is None else group


# ``stream=`` is MLX's keyword (the device stream a lazy op runs on); ringcomm's collectives
# run eagerly on the calling thread, so it is accepted for MLX code and ignored.
# ``async_op=True`` returns a ``Work`` at once instead of the result (``ringcomm.work``).


def all_sum(x: Any, *, group: Group | None = None, out: np.ndarray | None = None,
            stream: Any = None, async_op: bool = False) -> np.ndarray:
    """Sum ``x`` over every rank of ``group``."""
    return _group(group).all_sum(x, out=out, async_op=async_op)


def all_max(x: Any, *, group: Group | None = None, out: np.ndarray | None = None,
            stream: Any = None, async_op: bool = False) -> np.ndarray:
    """Element-wise maximum of ``x`` over every rank of ``group``."""
    return _group(group).all_max(x, out=out, async_op=async_op)


def all_min(x: Any, *, group: Group | None = None, out: np.ndarray | None = None,
            stream: Any = None, async_op: bool = False) -> np.ndarray:
    """Element-wise minimum of ``x`` over every rank of ``group``."""
    return _group(group).all_min(x, out=out, async_op=async_op)


def all_gather(x: Any, *, group: Group | None = None, out: np.ndarray | None = None,
               stream: Any = None, async_op: bool = False) -> np.ndarray:
    """Concatenate every rank's ``x`` along axis 0."""
    return _group(group).all_gather(x, out=out, async_op=async_op)


def sum_scatter(x: Any, *, group: Group | None = None, out: np.ndarray | None = None,
                stream: Any = None, async_op: bool = False) -> np.ndarray:
    """Sum ``x`` over every rank and return this rank's slice of axis 0."""
    return _group(group).sum_scatter(x, out=out, async_op=async_op)


def send(x: Any, dst: int, *, group: Group | None = None, stream: Any = None,
         async_op: bool = False) -> np.ndarray:
    """Send ``x`` to rank ``dst`` (a non-neighbour over a direct connection)."""
    return _group(group).send(x, dst, async_op=async_op)


def recv(shape: Sequence[int] | int, dtype: Any, src: int, *, group: Group | None = None,
         out: np.ndarray | None = None, stream: Any = None, async_op: bool = False) -> np.ndarray:
    """Receive an array of ``shape`` and ``dtype`` from the neighbouring rank ``src``."""
    return _group(group).recv(shape, dtype, src, out=out, async_op=async_op)


def recv_like(x: Any, src: int, *, group: Group | None = None,
              out: np.ndarray | None = None, stream: Any = None,
              async_op: bool = False) -> np.ndarray:
    """Receive an array shaped and typed like ``x`` from the neighbouring rank ``src``."""
    return _group(group).recv_like(x, src, out=out, async_op=async_op)


def broadcast(x: Any, root: int, *, group: Group | None = None, out: np.ndarray | None = None,
              stream: Any = None, async_op: bool = False) -> Any:
    """Root's ``x`` on every rank of ``group`` (the others pass a same-shaped buffer to fill)."""
    return _group(group).broadcast(x, root, out=out, async_op=async_op)


def all_to_all(x: Any, *, group: Group | None = None, out: np.ndarray | None = None,
               stream: Any = None, async_op: bool = False) -> Any:
    """Block j of ``x``'s axis 0 to rank j; the blocks received, in rank order."""
    return _group(group).all_to_all(x, out=out, async_op=async_op)


def barrier(*, group: Group | None = None, stream: Any = None,
            async_op: bool = False) -> Any:
    """Block until every rank of ``group`` has reached the barrier."""
    return _group(group).barrier(async_op=async_op)
