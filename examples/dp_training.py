"""Data-parallel training of a small MLP with average_gradients.

    python -m ringcomm.launch -n 2 examples/dp_training.py     (or -n 4)

Each rank trains on its slice of every batch and averages gradients over the ring; every
rank then checks its weights against single-process training on the whole batches.
"""
import sys

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

import ringcomm
from ringcomm.layers import average_gradients

STEPS, PER_RANK = 20, 16


def model_and_data(size):
    mx.random.seed(0)  # the same model and data on every rank
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    x = mx.random.normal((STEPS, PER_RANK * size, 8))
    y = mx.sin(x.sum(axis=-1, keepdims=True))
    return model, x, y


def loss_fn(model, x, y):
    return ((model(x) - y) ** 2).mean()


def train(model, batches, group=None):
    optimizer = optim.SGD(learning_rate=0.05)
    grad_fn = nn.value_and_grad(model, loss_fn)
    for x, y in batches:
        loss, grads = grad_fn(model, x, y)
        if group is not None:
            grads = average_gradients(grads, group=group)
            loss = group.all_sum(loss) / group.size()
        optimizer.update(model, grads)
        mx.eval(model.parameters(), loss)
    return loss.item()


def main():
    group = ringcomm.init(strict=True)
    r, n = group.rank(), group.size()
    model, x, y = model_and_data(n)
    mine = slice(r * PER_RANK, (r + 1) * PER_RANK)
    loss = train(model, [(x[i][mine], y[i][mine]) for i in range(STEPS)], group)
    reference, x, y = model_and_data(n)
    train(reference, [(x[i], y[i]) for i in range(STEPS)])
    diff = max(mx.abs(a - b).max().item() for (_, a), (_, b) in
               zip(tree_flatten(model.parameters()), tree_flatten(reference.parameters())))
    ok = diff < 1e-5
    print(f"rank {r} of {n}: {STEPS} data-parallel steps, final loss {loss:.4f}, max weight "
          f"difference from single-process training {diff:.2e}: check {'passed' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
