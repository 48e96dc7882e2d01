"""Rank side of the layer tests: sharded layers against the unsharded ones, on every rank.

Every rank seeds MLX the same way, so it can build the whole layer and input itself and
compare its shard's result with plain slices of the unsharded result (no sharding helper of
ours is used to build the expectation).
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from ringcomm import layers

OUT, BATCH = 192, 8
IN = {False: 192, True: 256}  # quantized: every rank's input slice a multiple of group size 32


def _pieces(total: int, segments, size: int, rank: int) -> list[tuple[int, int]]:
    """[start, stop) of this rank's piece of each segment of a ``total``-long axis."""
    if isinstance(segments, int):
        cuts = [total * i // segments for i in range(segments + 1)]
    else:
        cuts = [0, *[int(f * total) for f in segments], total]
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        piece = (hi - lo) // size
        out.append((lo + rank * piece, lo + (rank + 1) * piece))
    return out


def _take(a: mx.array, spans: list[tuple[int, int]], axis: int) -> mx.array:
    return mx.concatenate([mx.take(a, mx.arange(lo, hi), axis=axis) for lo, hi in spans], axis=axis)


def _full_layer(quantized: bool, bias: bool, seed: int):
    mx.random.seed(seed)
    full = nn.Linear(IN[quantized], OUT, bias=bias)
    if quantized:
        full = nn.QuantizedLinear.from_linear(full, group_size=32, bits=4)
    x = mx.random.normal((BATCH, IN[quantized]))
    return full, x


def forward_and_grads(group, sharding: str, segments, quantized: bool, bias: bool, seed: int):
    """Max differences of output, input gradient and weight gradient vs the unsharded layer."""
    full, x = _full_layer(quantized, bias, seed)
    size, rank = group.size(), group.rank()
    layer = layers.shard_linear(full, sharding, segments=segments, group=group)
    if sharding == "all-to-sharded":
        spans = _pieces(OUT, segments, size, rank)
        want = _take(full(x), spans, axis=-1)
        got = layer(x)
        dx = mx.grad(lambda v: (layer(v) ** 2).sum())(x)           # summed over ranks
        dx_want = mx.grad(lambda v: (full(v) ** 2).sum())(x)
    else:
        spans = _pieces(IN[quantized], segments, size, rank)
        x_mine = _take(x, spans, axis=-1)
        want, got = full(x), layer(x_mine)
        dx = mx.grad(lambda v: (layer(v) ** 2).sum())(x_mine)
        dx_want = _take(mx.grad(lambda v: (full(v) ** 2).sum())(x), spans, axis=-1)
    result = {"out": float(mx.abs(got - want).max()), "dx": float(mx.abs(dx - dx_want).max()),
              "type": type(layer).__name__}
    if not quantized:
        g = nn.value_and_grad(layer, lambda v: (layer(v) ** 2).sum())(
            x if sharding == "all-to-sharded" else x_mine)[1]["weight"]
        g_full = nn.value_and_grad(full, lambda v: (full(v) ** 2).sum())(x)[1]["weight"]
        g_want = _take(g_full, spans, axis=0 if sharding == "all-to-sharded" else -1)
        result["dw"] = float(mx.abs(g - g_want).max())
    return result


def average(group, all_reduce_size: int, communication_type: str | None, mixed: bool):
    """average_gradients of a tree whose leaves are (rank + 1) * base; counts the all_sums."""
    calls = []
    real = group.all_sum
    def counting(x, **kw):  # counts the MLX-level calls (their numpy halves pass through too)
        if not isinstance(x, np.ndarray):
            calls.append(x.size)
        return real(x, **kw)
    group.all_sum = counting
    try:
        rng = np.random.default_rng(0)
        base = {"a": rng.normal(size=(3, 5)), "b": [rng.normal(size=(40,)), rng.normal(size=(2, 2))],
                "c": {"d": rng.normal(size=(7,))}}
        grads = tree_map(lambda v: mx.array(v.astype(np.float32)) * (group.rank() + 1), base)
        if mixed:
            grads["b"][1] = grads["b"][1].astype(mx.float16)
        ctype = getattr(mx, communication_type) if communication_type else None
        out = layers.average_gradients(grads, group=group, all_reduce_size=all_reduce_size,
                                       communication_type=ctype)
    finally:
        del group.all_sum
    factor = (group.size() + 1) / 2
    errors = {k: float(np.max(np.abs(np.array(v.astype(mx.float32)) - factor *
                                     np.array(mx.array(dict(tree_flatten(base))[k].astype(np.float32))))))
              for k, v in tree_flatten(out)}
    dtypes = {k: str(v.dtype) for k, v in tree_flatten(out)}
    return {"calls": calls, "errors": errors, "dtypes": dtypes}


def data_parallel_sgd(group, steps: int = 3):
    """Weights after a few SGD steps, data-parallel vs one process on the whole batch."""
    def model_and_data():
        mx.random.seed(7)
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        xs = mx.random.normal((steps, 8 * group.size(), 10))
        ys = mx.random.normal((steps, 8 * group.size(), 3))
        return model, xs, ys

    def loss(model, x, y):
        return ((model(x) - y) ** 2).mean()

    single, xs, ys = model_and_data()
    opt = optim.SGD(learning_rate=0.1)
    for step in range(steps):
        grads = nn.value_and_grad(single, loss)(single, xs[step], ys[step])[1]
        opt.update(single, grads)
    mx.eval(single.parameters())

    parallel, xs, ys = model_and_data()
    opt = optim.SGD(learning_rate=0.1)
    r, per = group.rank(), 8
    for step in range(steps):
        mine = slice(r * per, (r + 1) * per)
        grads = nn.value_and_grad(parallel, loss)(parallel, xs[step][mine], ys[step][mine])[1]
        opt.update(parallel, layers.average_gradients(grads, group=group))
    mx.eval(parallel.parameters())
    a, b = dict(tree_flatten(single.parameters())), dict(tree_flatten(parallel.parameters()))
    return max(float(mx.abs(a[k] - b[k]).max()) for k in a)
