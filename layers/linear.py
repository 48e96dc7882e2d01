"""Tensor-parallel linear layers on ringcomm groups, with mlx.nn's names and arguments.

``AllToSharded``: every rank holds the whole input and computes its slice of the outputs
(weight rows sharded); backward, the input gradient is summed over the group.
``ShardedToAll``: every rank holds its slice of the input features and the matching weight
columns; the partial products are summed over the group, then the bias is added, so every
rank ends with the same output.
"""
from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

import ringcomm

from .gradients import sum_gradients
from .shards import (Segments, all_to_sharded_rule, group_or_default, shard_tree,
                     sharded_to_all_rule)


def _per_rank(dims: int, group: ringcomm.Group, what: str) -> int:
    if dims % group.size():
        raise ValueError(f"cannot shard the {what} of size {dims} across {group.size()} ranks")
    return dims // group.size()


def _uniform(shape: tuple[int, ...], input_dims: int) -> mx.array:
    scale = math.sqrt(1.0 / input_dims)
    return mx.random.uniform(low=-scale, high=scale, shape=shape)


def _sharded_copy(cls, linear_layer: nn.Module, rule, group: ringcomm.Group | None):
    """A ``cls`` layer holding this rank's shard of ``linear_layer``'s parameters."""
    group = group_or_default(group)
    out_dims, in_dims = linear_layer.weight.shape
    layer = cls(in_dims, out_dims, "bias" in linear_layer, group)
    layer.update(shard_tree(linear_layer.parameters(), rule, group))
    return layer


class AllToShardedLinear(nn.Module):
    """Replicated input, output features sharded across the group."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True,
                 group: ringcomm.Group | None = None) -> None:
        super().__init__()
        self.group = group_or_default(group)
        rows = _per_rank(output_dims, self.group, "output")
        self.weight = _uniform((rows, input_dims), input_dims)
        if bias:
            self.bias = _uniform((rows,), input_dims)

    def _extra_repr(self) -> str:
        rows, cols = self.weight.shape
        return f"input_dims={cols}, output_dims={rows * self.group.size()}, bias={'bias' in self}"

    def __call__(self, x: mx.array) -> mx.array:
        x = sum_gradients(self.group)(x)
        if "bias" in self:
            return mx.addmm(self["bias"], x, self["weight"].T)
        return x @ self["weight"].T

    @classmethod
    def from_linear(cls, linear_layer: nn.Module, *, segments: Segments = 1,
                    group: ringcomm.Group | None = None) -> "AllToShardedLinear":
        return _sharded_copy(cls, linear_layer, all_to_sharded_rule(segments), group)


class ShardedToAllLinear(nn.Module):
    """Input features sharded across the group, replicated output."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True,
                 group: ringcomm.Group | None = None) -> None:
        super().__init__()
        self.group = group_or_default(group)
        cols = _per_rank(input_dims, self.group, "input")
        self.weight = _uniform((output_dims, cols), input_dims)
        if bias:
            self.bias = _uniform((output_dims,), input_dims)

    def _extra_repr(self) -> str:
        rows, cols = self.weight.shape
        return f"input_dims={cols * self.group.size()}, output_dims={rows}, bias={'bias' in self}"

    def __call__(self, x: mx.array) -> mx.array:
        x = self.group.all_sum(x @ self["weight"].T)
        return x + self["bias"] if "bias" in self else x

    @classmethod
    def from_linear(cls, linear_layer: nn.Module, *, segments: Segments = 1,
                    group: ringcomm.Group | None = None) -> "ShardedToAllLinear":
        return _sharded_copy(cls, linear_layer, sharded_to_all_rule(segments), group)


class _QuantizedSharded(nn.Module):
    """Shared by the quantized layers: frozen quantized weights, like nn.QuantizedLinear."""

    def __init__(self, weight: mx.array, bias_dims: int | None, group_size: int, bits: int,
                 mode: str, group: ringcomm.Group) -> None:
        super().__init__()
        self.group_size, self.bits, self.mode, self.group = group_size, bits, mode, group
        self.weight, self.scales, *biases = mx.quantize(weight, group_size, bits, mode=mode)
        self.biases = biases[0] if biases else None
        if bias_dims is not None:
            self.bias = mx.zeros((bias_dims,))
        self.freeze()

    def unfreeze(self, *args: Any, **kwargs: Any) -> None:
        """Unfreeze children, never the quantized parameters themselves."""
        super().unfreeze(*args, **kwargs)
        self.freeze(recurse=False)

    def _matmul(self, x: mx.array) -> mx.array:
        return mx.quantized_matmul(x, self["weight"], scales=self["scales"],
                                   biases=self.get("biases"), transpose=True,
                                   group_size=self.group_size, bits=self.bits, mode=self.mode)

    def _dims(self) -> tuple[int, int]:
        rows, packed = self.weight.shape
        return rows, packed * 32 // self.bits

    @classmethod
    def _from(cls, layer: nn.Module, rule, segments: Segments, group: ringcomm.Group | None):
        group = group_or_default(group)
        out_dims, packed = layer.weight.shape
        sharded = cls(packed * 32 // layer.bits, out_dims, "bias" in layer,
                      group_size=layer.group_size, bits=layer.bits,
                      mode=getattr(layer, "mode", "affine"), group=group)
        sharded.update(shard_tree(layer.parameters(), rule(segments), group))
        return sharded


class QuantizedAllToShardedLinear(_QuantizedSharded):
    """AllToShardedLinear with a quantized weight (frozen)."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True,
                 group_size: int = 64, bits: int = 4, mode: str = "affine",
                 group: ringcomm.Group | None = None) -> None:
        group = group_or_default(group)
        rows = _per_rank(output_dims, group, "output")
        super().__init__(_uniform((rows, input_dims), input_dims), rows if bias else None,
                         group_size, bits, mode, group)

    def _extra_repr(self) -> str:
        rows, cols = self._dims()
        return (f"input_dims={cols}, output_dims={rows * self.group.size()}, "
                f"bias={'bias' in self}, group_size={self.group_size}, bits={self.bits}, "
                f"mode={self.mode}")

    def __call__(self, x: mx.array) -> mx.array:
        x = self._matmul(sum_gradients(self.group)(x))
        return x + self["bias"] if "bias" in self else x

    @classmethod
    def from_quantized_linear(cls, quantized_linear_layer: nn.Module, *, segments: Segments = 1,
                              group: ringcomm.Group | None = None):
        return cls._from(quantized_linear_layer, all_to_sharded_rule, segments, group)


class QuantizedShardedToAllLinear(_QuantizedSharded):
    """ShardedToAllLinear with a quantized weight (frozen)."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True,
                 group_size: int = 64, bits: int = 4, mode: str = "affine",
                 group: ringcomm.Group | None = None) -> None:
        group = group_or_default(group)
        cols = _per_rank(input_dims, group, "input")
        super().__init__(_uniform((output_dims, cols), input_dims),
                         output_dims if bias else None, group_size, bits, mode, group)

    def _extra_repr(self) -> str:
        rows, cols = self._dims()
        return (f"input_dims={cols * self.group.size()}, output_dims={rows}, "
                f"bias={'bias' in self}, group_size={self.group_size}, bits={self.bits}, "
                f"mode={self.mode}")

    def __call__(self, x: mx.array) -> mx.array:
        x = self.group.all_sum(self._matmul(x))
        return x + self["bias"] if "bias" in self else x

    @classmethod
    def from_quantized_linear(cls, quantized_linear_layer: nn.Module, *, segments: Segments = 1,
                              group: ringcomm.Group | None = None):
        return cls._from(quantized_linear_layer, sharded_to_all_rule, segments, group)
