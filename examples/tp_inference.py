"""Tensor-parallel inference of a small transformer block (fused-QKV attention and an MLP).

    python -m ringcomm.launch -n 2 examples/tp_inference.py     (or -n 4)

Written as for MLX's own distributed layers: only the import below differs from
`from mlx.nn.layers.distributed import shard_linear, shard_inplace`, and the group comes
from ringcomm.init().  Every rank checks its output against the unsharded block.
"""
import math
import sys

import mlx.core as mx
import mlx.nn as nn

import ringcomm
from ringcomm.layers import shard_linear, shard_inplace

DIMS, HEADS, HIDDEN = 64, 8, 256


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = HEADS
        self.norm1, self.norm2 = nn.RMSNorm(DIMS), nn.RMSNorm(DIMS)
        self.qkv = nn.Linear(DIMS, 3 * DIMS, bias=False)  # fused: [q | k | v]
        self.out = nn.Linear(DIMS, DIMS, bias=False)
        self.up = nn.Linear(DIMS, HIDDEN)
        self.down = nn.Linear(HIDDEN, DIMS)

    def __call__(self, x):
        b, length, _ = x.shape
        q, k, v = mx.split(self.qkv(self.norm1(x)), 3, axis=-1)
        q, k, v = (t.reshape(b, length, self.heads, -1).transpose(0, 2, 1, 3) for t in (q, k, v))
        a = mx.fast.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(DIMS // HEADS))
        x = x + self.out(a.transpose(0, 2, 1, 3).reshape(b, length, -1))
        return x + self.down(nn.gelu(self.up(self.norm2(x))))


def shard(block, group):
    """Heads split across ranks: each keeps its q, k and v heads and the matching MLP slice."""
    block.qkv = shard_linear(block.qkv, "all-to-sharded", segments=3, group=group)
    block.out = shard_linear(block.out, "sharded-to-all", group=group)
    shard_inplace(block.up, "all-to-sharded", group=group)  # no communication needed here
    block.down = shard_linear(block.down, "sharded-to-all", group=group)
    block.heads //= group.size()


def main():
    group = ringcomm.init(strict=True)
    mx.random.seed(0)  # the same weights and input on every rank
    block = Block()
    x = mx.random.normal((2, 16, DIMS))
    expected = block(x)
    shard(block, group)
    got = block(x)
    diff = mx.abs(got - expected).max().item()
    ok = diff < 1e-4
    print(f"rank {group.rank()} of {group.size()}: tensor-parallel block, max difference from "
          f"the single-process block {diff:.2e}: check {'passed' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
