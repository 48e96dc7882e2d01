"""Sharded MLX layers on ringcomm groups: a drop-in for ``mlx.nn.layers.distributed``.

    from ringcomm.layers import shard_linear          # instead of mlx.nn.layers.distributed
    layer = shard_linear(nn.Linear(64, 128), "all-to-sharded", group=ringcomm.init())

Needs MLX (``pip install "ringcomm[mlx]"``).  The collectives run eagerly (see README).
"""
try:
    import mlx.core  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("layers needs MLX: pip install 'ringcomm[mlx]' (mlx[cpu] on Linux)") from e

from .gradients import average_gradients, sum_gradients
from .linear import (AllToShardedLinear, QuantizedAllToShardedLinear,
                     QuantizedShardedToAllLinear, ShardedToAllLinear)
from .sharding import shard_inplace, shard_linear

__all__ = ["AllToShardedLinear", "QuantizedAllToShardedLinear", "QuantizedShardedToAllLinear",
           "ShardedToAllLinear", "average_gradients", "shard_inplace", "shard_linear",
           "sum_gradients"]
