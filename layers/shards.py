"""Cutting a parameter tree into this rank's shard, and the rules of the two layer kinds.

The layer classes (``linear``) and the functions that pick one (``sharding``) both use this;
it needs neither of them.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import mlx.core as mx
from mlx.utils import tree_map_with_path

import ringcomm

Segments = Union[int, Sequence[float]]


def group_or_default(group: ringcomm.Group | None) -> ringcomm.Group:
    return ringcomm.default_group() if group is None else group


def _segments(weight: mx.array, segments: Segments, axis: int) -> list[mx.array]:
    """Split into ``segments`` equal parts, or at the given fractions (e.g. fused QKV)."""
    if isinstance(segments, int):
        return mx.split(weight, segments, axis=axis)
    if all(isinstance(s, int) for s in segments):
        return mx.split(weight, list(segments), axis=axis)
    length = weight.shape[axis]
    return mx.split(weight, [int(f * length) for f in segments], axis=axis)


def shard_tree(parameters: dict, rule: Callable[[str, mx.array], Any],
               group: ringcomm.Group) -> dict:
    """This rank's part of every array that ``rule(path, array)`` says to shard.

    ``rule`` returns None (keep whole), an axis, or (axis, segments): each segment is cut
    into ``size`` pieces along the axis and this rank keeps piece ``rank`` of each.
    """
    size, rank = group.size(), group.rank()

    def cut(path: str, value: Any) -> Any:
        if not isinstance(value, mx.array):
            return value
        spec = rule(path, value)
        if spec is None:
            return value
        if isinstance(spec, int):
            axis, segments = spec, 1
        elif isinstance(spec, tuple) and len(spec) == 2:
            axis, segments = spec
        else:
            raise ValueError(f"sharding rule for {path!r} returned {spec!r}; expected None, "
                             "an axis, or (axis, segments)")
        for part in _segments(value, segments, axis):
            if part.shape[axis] % size:
                raise ValueError(f"{path}: a segment of {part.shape[axis]} along axis {axis} "
                                 f"does not divide among {size} ranks")
        pieces = [_segments(part, size, axis)[rank] for part in _segments(value, segments, axis)]
        return mx.contiguous(mx.concatenate(pieces, axis=axis))

    return tree_map_with_path(cut, parameters)


def all_to_sharded_rule(segments: Segments) -> Callable[[str, mx.array], Any]:
    """Shard output features: weights along their output axis, the bias along its only one."""
    return lambda path, w: (-1, segments) if path.endswith("bias") else \
        (max(w.ndim - 2, 0), segments)


def sharded_to_all_rule(segments: Segments) -> Callable[[str, mx.array], Any]:
    """Shard input features: weights along their last axis; the bias stays whole."""
    return lambda path, w: None if path.endswith("bias") else (-1, segments)
