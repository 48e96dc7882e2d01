"""Gradient plumbing for sharded and data-parallel training on ringcomm groups."""
from __future__ import annotations

import functools
from typing import Any, Callable

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_unflatten

import ringcomm


@functools.lru_cache(maxsize=None)
def sum_gradients(group: ringcomm.Group) -> Callable[[mx.array], mx.array]:
    """Identity forward; backward, the cotangent summed over ``group`` (identity for one rank).

    Put in front of a layer whose input is replicated and whose output is sharded, so that
    each rank's part of the input gradient adds up to the whole.
    """
    if group.size() == 1:
        return lambda x: x

    @mx.custom_function
    def identity(x):
        return x

    @identity.vjp
    def identity_vjp(x, cotangent, output):
        return group.all_sum(cotangent)

    return identity


def average_gradients(gradients: Any, group: ringcomm.Group | None = None,
                      all_reduce_size: int = 32 * 1024**2, communication_type: Any = None,
                      communication_stream: Any = None) -> Any:
    """The mean of ``gradients`` (a tree of mx.arrays) over ``group``.

    Small arrays are concatenated into batches of at least ``all_reduce_size`` bytes (as
    sent on the wire; 0 or less sends each array alone), one all_sum per batch; a tree with
    several dtypes is batched per dtype.  ``communication_type`` (e.g. ``mx.bfloat16``) is
    the dtype on the wire, cast back afterwards.  ``communication_stream`` is accepted for
    MLX compatibility and ignored: ringcomm's collectives run eagerly on the CPU.
    """
    group = ringcomm.default_group() if group is None else group
    size = group.size()
    if size == 1:
        return gradients

    def mean(x: mx.array) -> mx.array:
        wire = x if communication_type is None else x.astype(communication_type)
        return group.all_sum(wire).astype(x.dtype) / size

    if all_reduce_size <= 0:
        return tree_map(mean, gradients)
    flat = tree_flatten(gradients)
    if not flat:
        return gradients
    averaged: dict[str, mx.array] = {}
    for batch in _batches(flat, all_reduce_size, communication_type):
        joined = mean(mx.concatenate([value.reshape(-1) for _, value in batch]))
        offsets = [0]
        for _, value in batch:
            offsets.append(offsets[-1] + value.size)
        for (key, value), part in zip(batch, mx.split(joined, offsets[1:-1])):
            averaged[key] = part.reshape(value.shape)
    return tree_unflatten([(key, averaged[key]) for key, _ in flat])


def _batches(flat: list, limit: int, communication_type: Any) -> list[list]:
    """Consecutive arrays of one dtype, cut once a batch reaches ``limit`` bytes on the wire."""
    by_dtype: dict[Any, list] = {}
    for item in flat:
        by_dtype.setdefault(item[1].dtype, []).append(item)
    batches = []
    for dtype, items in by_dtype.items():
        itemsize = (communication_type or dtype).size
        batch, nbytes = [], 0
        for item in items:
            batch.append(item)
            nbytes += item[1].size * itemsize
            if nbytes >= limit:
                batches.append(batch)
                batch, nbytes = [], 0
        if batch:
            batches.append(batch)
    return batches
