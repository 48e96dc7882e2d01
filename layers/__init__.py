"""Sharded MLX layers on ringcomm groups: a drop-in for ``mlx.nn.layers.distributed``.

    from ringcomm.layers import shard_linear          # instead of mlx.nn.layers.distributed
    layer = shard_linear(nn.Linear(64, 128), "all-to-sharded", group=ringcomm.init())

Needs MLX: ``pip install ".[mlx]"`` in a clone of ringcomm (there is no release on PyPI yet,
so ``pip install "ringcomm[mlx]"`` works only once one exists).  The collectives run eagerly
(docs/mlx-programs.md).
"""
from ringcomm.mlx_arrays import require_mlx

require_mlx("ringcomm.layers")

from .gradients import average_gradients, sum_gradients
from .linear import (AllToShardedLinear, QuantizedAllToShardedLinear,
                     QuantizedShardedToAllLinear, ShardedToAllLinear)
from .sharding import shard_inplace, shard_linear

__all__ = ["AllToShardedLinear", "QuantizedAllToShardedLinear", "QuantizedShardedToAllLinear",
           "ShardedToAllLinear", "average_gradients", "shard_inplace", "shard_linear",
           "sum_gradients"]
