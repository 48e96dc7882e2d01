"""broadcast and all_to_all: the collectives MLX's ring lacks (issue 19).

broadcast runs ``plans.broadcast`` (a pipelined chain from the root, each byte once per
link) on the ring.  all_to_all is a pairwise exchange: its neighbour steps (k = 1 and
k = size - 1) run ``plans.all_to_all_ring`` on the ring, and steps k = 2 .. size - 2
(``plans.pairwise``: send to rank + k, receive from rank - k) go over the direct connections
of ``transports.direct`` (TCP) or the direct queue pairs of ``transports.rdma_direct`` (RDMA).
On MLX arrays both are differentiable: broadcast's cotangent is summed to the root (zeros
elsewhere), all_to_all's is exchanged back by an all_to_all.  broadcast's root travels in its
operation header, so ranks that disagree on it get a ``MismatchError``.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from .transports import ConfigError

from . import memcopy, plans
from .buffers import contiguous, output, same_buffer
from .mlx_arrays import is_mlx_array, new_array, to_numpy
from .ranks import rank_argument

_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # group -> {key: function}


def broadcast(group: Any, x: Any, root: int, out: np.ndarray | None) -> Any:
    """Root's ``x`` on every rank.  A non-root's ``x`` gives the shape and dtype, and is the
    buffer filled when it is a writeable C-contiguous numpy array (and no ``out=``)."""
    n, r = group.size(), group.rank()
    root = rank_argument(root, "root", "broadcast", r, n)
    if is_mlx_array(x):
        if out is not None:
            raise ValueError("broadcast: out= takes numpy arrays; for an mx.array the result "
                             "is a new mx.array")
        return _mlx(group, ("broadcast", int(root)), x)
    a = contiguous(x)
    if out is None and r != root and a is x and a.flags.writeable:
        out = a  # the caller's buffer, filled in place
    result = output(out, a.shape, a.dtype, "broadcast")
    flat = result.reshape(-1).view(np.uint8)
    if r == root:
        mine = a.reshape(-1).view(np.uint8)
        if flat.size and not same_buffer(flat, mine):
            memcopy.copy(flat, mine)
    group._run("broadcast", plans.broadcast(flat.size, n, r, int(root), group._connections()),
               flat, None, a.dtype, a.shape, root=int(root))
    return result


def all_to_all(group: Any, x: Any, out: np.ndarray | None) -> Any:
    """Block j of axis 0 to rank j; the output holds the blocks received, in rank order."""
    if is_mlx_array(x):
        if out is not None:
            raise ValueError("all_to_all: out= takes numpy arrays; for an mx.array the result "
                             "is a new mx.array")
        return _mlx(group, ("all_to_all",), x)
    a = contiguous(x)
    n, r = group.size(), group.rank()
    if a.ndim == 0 or a.shape[0] % n:
        raise ValueError(f"all_to_all: axis 0 of an array of shape {a.shape} must divide by "
                         f"the group size {n}")
    result = output(out, a.shape, a.dtype, "all_to_all")
    if np.may_share_memory(result, a):
        raise ValueError("all_to_all: out= must not overlap the input")
    source, work = a.reshape(-1), result.reshape(-1)
    block = a.nbytes // n
    src, dst = source.view(np.uint8), work.view(np.uint8)
    dst[r * block:(r + 1) * block] = src[r * block:(r + 1) * block]
    if n == 1:
        return result
    steps = plans.pairwise(n, r)
    direct = group._direct
    if steps and (direct is None or direct.links is None):
        raise ConfigError(f"all_to_all on {n} ranks needs direct connections between "
                          "non-neighbours: the ringcomm protocol, over TCP or RDMA (this "
                          "group has none: MLX's protocol)")
    group._run("all_to_all", plans.all_to_all_ring(block, n, r, group._connections()), work,
               None, a.dtype, a.shape, source=source)
    per = a.shape[0] // n
    for _k, to, frm in steps:
        direct.exchange(group, "all_to_all", "all_to_all", a.dtype, a.shape,
                        (to, a[to * per:(to + 1) * per]), (frm, result[frm * per:(frm + 1) * per]))
    return result


def _mlx(group: Any, key: tuple, x: Any) -> Any:
    calls = _CALLS.get(group)
    if calls is None:
        calls = _CALLS[group] = {}
    call = calls.get(key)
    if call is None:  # weakly: the cache must not keep the group alive
        call = calls[key] = _differentiable(weakref.proxy(group), key)
    return call(x)


def _differentiable(group: Any, key: tuple) -> Any:
    import mlx.core as mx
    op = key[0]

    @mx.custom_function
    def f(x):
        a = to_numpy(x)
        if op == "all_to_all" and (a.ndim == 0 or a.shape[0] % group.size()):
            return group.all_to_all(a)  # the numpy path raises its error
        result, view = new_array(a.shape, a.dtype)
        if op == "broadcast":
            group.broadcast(a, key[1], out=view)
        else:
            group.all_to_all(a, out=view)
        return result

    @f.vjp
    def f_vjp(x, cotangent, output):
        if op == "all_to_all":  # block j of the cotangent came from rank j: send it back
            return group.all_to_all(cotangent)
        total = group.all_sum(cotangent)  # every rank's output came from the root's input
        return total if group.rank() == key[1] else mx.zeros_like(cotangent)
    return f
