"""Sharding modules in place, or into new sharded layers: shard_inplace and shard_linear."""
from __future__ import annotations

from typing import Any, Callable, Union

import mlx.core as mx
import mlx.nn as nn

import ringcomm

from .linear import (AllToShardedLinear, QuantizedAllToShardedLinear,
                     QuantizedShardedToAllLinear, ShardedToAllLinear)
from .shards import (Segments, all_to_sharded_rule, group_or_default, shard_tree,
                     sharded_to_all_rule)

Sharding = Union[str, Callable[[str, mx.array], Any]]
SHARDINGS = ("all-to-sharded", "sharded-to-all")


def _rule(sharding: Sharding, segments: Segments) -> Callable[[str, mx.array], Any]:
    if callable(sharding):
        return sharding
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS} or a callable; got {sharding!r}")
    return (all_to_sharded_rule if sharding == "all-to-sharded" else sharded_to_all_rule)(segments)


def shard_inplace(module: nn.Module, sharding: Sharding, *, segments: Segments = 1,
                  group: ringcomm.Group | None = None) -> None:
    """Replace ``module``'s parameters with this rank's shards (its forward is unchanged)."""
    module.update(shard_tree(module.parameters(), _rule(sharding, segments),
                             group_or_default(group)))


def shard_linear(module: nn.Module, sharding: str, *, segments: Segments = 1,
                 group: ringcomm.Group | None = None) -> nn.Module:
    """A new sharded layer from an ``nn.Linear`` or ``nn.QuantizedLinear``."""
    _rule(sharding, segments)  # validates the name
    quantized = isinstance(module, nn.QuantizedLinear)
    if not quantized and not isinstance(module, nn.Linear):
        raise TypeError(f"shard_linear takes nn.Linear or nn.QuantizedLinear; got "
                        f"{type(module).__name__} (use shard_inplace for other modules)")
    cls = {("all-to-sharded", False): AllToShardedLinear,
           ("sharded-to-all", False): ShardedToAllLinear,
           ("all-to-sharded", True): QuantizedAllToShardedLinear,
           ("sharded-to-all", True): QuantizedShardedToAllLinear}[sharding, quantized]
    make = cls.from_quantized_linear if quantized else cls.from_linear
    return make(module, segments=segments, group=group)
