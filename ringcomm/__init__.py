"""ringcomm: ring collectives for numpy (and MLX) in pure Python, wire-compatible with MLX's ring.

    import ringcomm, numpy as np
    group = ringcomm.init()            # MLX_RANK / MLX_HOSTFILE, as mlx.launch sets them
    total = ringcomm.all_sum(np.ones(4, np.float32))
"""
from __future__ import annotations

from typing import Any

from . import _source_tree

_source_tree.install()  # a checkout on PYTHONPATH: find ringcomm.transports etc. (see there)

from .transports.errors import (CommError, CommTimeoutError, ConfigError, GroupBrokenError,
                               MismatchError, PeerLostError, RingcommError)

from .dtypes import SUPPORTED_DTYPES
from .calls import (all_gather, all_gather_object, all_max, all_min, all_sum, all_to_all, barrier,
                    broadcast, broadcast_object, gather, recv, recv_like, reduce, scatter, send,
                    sum_scatter)
from .group import Group
from .group_info import GroupInfo
from .objects import ObjectError
from .waiting import wait_all
from .init import default_group, init, is_initialized  # noqa: F401 (default_group: layers)
from .mlx_arrays import EagerCollectiveError
from .mlx_patch import patch_mlx, unpatch_mlx  # imports mlx only when called
from .work import WaitTimeoutError, Work

__all__ = ["CommError", "CommTimeoutError", "ConfigError", "EagerCollectiveError", "Group",
           "GroupBrokenError", "MismatchError", "PeerLostError", "RingcommError",
           "SUPPORTED_DTYPES", "WaitTimeoutError", "Work", "__version__", "all_gather", "all_max",
           "all_min", "all_sum", "all_to_all", "barrier", "broadcast", "init", "is_initialized",
           "patch_mlx", "recv", "recv_like", "send", "sum_scatter", "unpatch_mlx",
           # issue 31 item 10 (rooted, objects, waiting) and item 3 (group_info)
           "GroupInfo", "ObjectError", "all_gather_object", "broadcast_object", "gather",
           "reduce", "scatter", "wait_all"]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # on first use: importlib.metadata costs ~0.1 s to import
        from ._version import version
        globals()["__version__"] = value = version()
        return value
    raise AttributeError(f"module 'ringcomm' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (not the modules and names it is built from)."""
    return sorted(__all__)
