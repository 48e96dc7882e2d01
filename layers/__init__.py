"""Sharded MLX layers on ringcomm groups (AllToShardedLinear, shard_linear, ...).

Not written yet: this package is reserved for them so that the import path stays stable.
It exports nothing today.
"""
