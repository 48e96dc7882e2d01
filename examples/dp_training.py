"""Data-parallel training of an MLP: gradients averaged with average_gradients, or with
``--overlap``, each layer's gradient reduced (async all_sum) as soon as it exists
(``--layerwise``: the same order with blocking all_sums, to compare with).

    python -m ringcomm.launch -n 2 examples/dp_training.py     (or -n 4)
    python -m ringcomm.launch -n 2 examples/dp_training.py --overlap
    python -m ringcomm.launch -n 2 examples/dp_training.py --width 1024 --layers 8 \\
        --batch 16 --timing [--layerwise | --overlap]

Each rank trains on its slice of every batch; every rank then checks its weights against
single-process training on the whole batches.  ``--timing`` prints the median step time.
"""
import argparse
import statistics
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

import ringcomm
from ringcomm.layers import average_gradients


def model_and_data(size, args):
    mx.random.seed(0)  # the same model and data on every rank
    hidden = [nn.Linear(args.width, args.width) for _ in range(args.layers - 2)]
    model = nn.Sequential(nn.Linear(8, args.width), nn.ReLU(),
                          *[m for layer in hidden for m in (layer, nn.ReLU())],
                          nn.Linear(args.width, 1))
    x = mx.random.normal((args.steps, args.batch * size, 8))
    y = mx.sin(x.sum(axis=-1, keepdims=True))
    return model, x, y


def loss_fn(model, x, y):
    return ((model(x) - y) ** 2).mean()


def layerwise_mean(grads, loss, group, overlap, blocked):
    """The mean over ``group``, one gradient at a time from the last layer back (the order
    backpropagation produces them in).  With ``overlap`` each all_sum starts as soon as its
    gradient is evaluated and runs on the group's progress thread while the next one is
    computed; all are waited for before returning (the optimizer step needs them).  Without,
    each all_sum blocks: the same evaluation order, for a fair comparison.  Appends to
    ``blocked`` the seconds this thread spent in the all_sums or waiting for them."""
    works, seconds = [], 0.0
    for key, grad in reversed(tree_flatten(grads)):
        mx.eval(grad)
        start = time.perf_counter()
        works.append((key, group.all_sum(grad, async_op=overlap)))
        seconds += time.perf_counter() - start
    works.append((None, group.all_sum(loss, async_op=overlap)))
    start = time.perf_counter()
    means = [(key, (work.wait() if overlap else work) / group.size()) for key, work in works]
    blocked.append(seconds + time.perf_counter() - start)
    return tree_unflatten(means[-2::-1]), means[-1][1]


def train(model, batches, group=None, mode="batched"):
    optimizer = optim.SGD(learning_rate=0.05)
    grad_fn = nn.value_and_grad(model, loss_fn)
    times, blocked = [], []
    for x, y in batches:
        start = time.perf_counter()
        loss, grads = grad_fn(model, x, y)
        if group is not None and mode != "batched":
            grads, loss = layerwise_mean(grads, loss, group, mode == "overlap", blocked)
        elif group is not None:
            grads = average_gradients(grads, group=group)
            loss = group.all_sum(loss) / group.size()
        optimizer.update(model, grads)
        mx.eval(model.parameters(), loss)
        times.append(time.perf_counter() - start)
    return loss.item(), times, blocked


def main():
    parser = argparse.ArgumentParser(description=__doc__,  # with its commands, as written
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--overlap", action="store_true",
                       help="reduce each layer's gradient as soon as it exists (async_op)")
    modes.add_argument("--layerwise", action="store_true",
                       help="as --overlap, but each all_sum blocks (the baseline for it)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--batch", type=int, default=16, help="rows per rank per step")
    parser.add_argument("--width", type=int, default=64, help="hidden layers' width (default 64)")
    parser.add_argument("--layers", type=int, default=3, help="linear layers, at least 2")
    parser.add_argument("--timing", action="store_true",
                        help="print the median step time (the first two steps left out)")
    args = parser.parse_args()
    group = ringcomm.init(strict=True)
    r, n = group.rank(), group.size()
    model, x, y = model_and_data(n, args)
    mine = slice(r * args.batch, (r + 1) * args.batch)
    mode = "overlap" if args.overlap else "layerwise" if args.layerwise else "batched"
    batches = [(x[i][mine], y[i][mine]) for i in range(args.steps)]
    loss, times, blocked = train(model, batches, group, mode)
    reference, x, y = model_and_data(n, args)
    train(reference, [(x[i], y[i]) for i in range(args.steps)])
    diff = max(mx.abs(a - b).max().item() for (_, a), (_, b) in
               zip(tree_flatten(model.parameters()), tree_flatten(reference.parameters())))
    ok = diff < 1e-5
    if args.timing:
        waited = (f", of which in all_sum or waiting for it "
                  f"{statistics.median(blocked[2:]) * 1e3:.1f} ms" if blocked else "")
        print(f"rank {r}: gradient reduction {mode}: median step "
              f"{statistics.median(times[2:]) * 1e3:.1f} ms{waited} ({len(times[2:])} steps)")
    print(f"rank {r} of {n}: {args.steps} data-parallel steps, final loss {loss:.4f}, max weight "
          f"difference from single-process training {diff:.2e}: check {'passed' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
