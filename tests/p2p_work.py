"""Rank-side functions for tests/test_p2p_any.py and tests/test_broadcast_alltoall.py (run on
every rank of a tests.cluster ring; importable so they can be sent by reference)."""
from __future__ import annotations

import os
import time

import numpy as np

DTYPES = {"float32": np.float32, "int64": np.int64, "uint8": np.uint8, "float16": np.float16,
          "complex64": np.complex64, "bool": np.bool_, "int8": np.int8, "float64": np.float64}


def data(seed: int, rank: int, shape: tuple, dtype_name: str) -> np.ndarray:
    rng = np.random.default_rng([seed, rank])
    return rng.integers(0, 100, size=shape).astype(DTYPES[dtype_name])


def pairs(group, pairs_list: list, shape: tuple, dtype_name: str, seed: int) -> list:
    """For each (src, dst): src sends its data(seed, i) to dst, which returns what came."""
    got = []
    for i, (src, dst) in enumerate(pairs_list):
        if group.rank() == src:
            group.send(data(seed + i, src, shape, dtype_name), dst)
        elif group.rank() == dst:
            got.append(group.recv(shape, DTYPES[dtype_name], src))
    return got


def check_pairs(got: list, pairs: list, shape: tuple, dtype_name: str, seed: int) -> None:
    """What ``pairs`` returned on every rank is what each source sent, in order."""
    for dst in range(len(got)):
        want = [data(seed + i, s, shape, dtype_name) for i, (s, d) in enumerate(pairs)
                if d == dst]
        assert len(got[dst]) == len(want)
        for g, e in zip(got[dst], want):
            assert g.dtype == e.dtype and g.tobytes() == e.tobytes(), f"rank {dst}"


def check_all_to_all(got: list, shape: tuple, dtype_name: str, seed: int) -> None:
    """What ``all_to_all`` returned on every rank is numpy's answer."""
    size = len(got)
    rows = shape[0] // size
    inputs = [data(seed, r, shape, dtype_name) for r in range(size)]
    for r in range(size):
        want = np.concatenate([x[r * rows:(r + 1) * rows] for x in inputs])
        assert got[r].shape == want.shape and got[r].tobytes() == want.tobytes(), f"rank {r}"


def timed_first_use(group, peer_of: dict, nbytes: int, repeat: int) -> tuple[list, int]:
    """Seconds for the first and then each later send/recv of ``nbytes`` to a peer, and the
    direct queue pairs this rank made (RDMA)."""
    r = group.rank()
    x = np.zeros(nbytes, np.uint8)
    times = []
    for _ in range(repeat):
        group.barrier()
        t = time.perf_counter()
        if r in peer_of:
            group.send(x, peer_of[r])
        elif r in peer_of.values():
            src = next(s for s, d in peer_of.items() if d == r)
            group.recv_like(x, src)
        times.append(time.perf_counter() - t)
    return times, len(group._direct.links._setup.by_number)


def broadcast_all_roots(group, shape: tuple, dtype_name: str, seed: int) -> list:
    out = []
    for root in range(group.size()):
        x = data(seed, root, shape, dtype_name) if group.rank() == root else \
            np.empty(shape, DTYPES[dtype_name])
        out.append(group.broadcast(x, root))
    return out


def all_to_all(group, shape: tuple, dtype_name: str, seed: int) -> np.ndarray:
    return group.all_to_all(data(seed, group.rank(), shape, dtype_name))


def error_of(group, fn_name: str, *args) -> str:
    """Run ``fn_name`` and return the error type and message it raised ('' if none)."""
    try:
        globals()[fn_name](group, *args)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return ""


def mismatched(group, a: int, b: int) -> str:
    """``a`` sends float32 (4,) to ``b``, which expects int64 (4,)."""
    try:
        if group.rank() == a:
            group.send(np.zeros(4, np.float32), b)  # small: done once the kernel has it
        elif group.rank() == b:
            group.recv(4, np.int64, a)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return ""


def mlx_grads(group, shape: tuple, root: int) -> tuple:
    import mlx.core as mx
    r = group.rank()
    x = mx.array(data(7, r, shape, "float32"))
    w = mx.array(data(8, r, shape, "float32"))
    gb = mx.grad(lambda v: (group.broadcast(v, root) * w).sum())(x)
    ga = mx.grad(lambda v: (group.all_to_all(v) * w).sum())(x)
    b = group.broadcast(x, root)
    a = group.all_to_all(x)
    return (np.array(b), np.array(a), np.array(gb), np.array(ga), type(a).__module__)


def broadcast_from(group, roots: list, shape: tuple) -> tuple:
    """Rank r broadcasts with ``roots[r]``, then calls barrier (a root whose sends the kernel
    took returns, as any sender does, and its next call raises): (the first error or '',
    which call raised it, seconds)."""
    t = time.monotonic()
    for call in ("broadcast", "barrier"):
        try:
            if call == "broadcast":
                group.broadcast(np.zeros(shape, np.float32), roots[group.rank()])
            else:
                group.barrier()
        except Exception as e:
            return f"{type(e).__name__}: {e}", call, time.monotonic() - t
    return "", None, time.monotonic() - t


def die_after_send(group, victim: int, receiver: int, opened: bool, messages: int = 1,
                   pause: float = 0.0) -> tuple | None:
    """``victim`` sends ``receiver`` ``messages`` messages (opening their direct link) if
    ``opened``, then exits abruptly; ``receiver``, after ``pause`` seconds, takes them (each
    must arrive whole: the link's failure comes after them) and waits for another: (error,
    text, seconds).  The other ranks go on to a barrier, as a program would."""
    r = group.rank()
    if r == victim:
        if opened:
            for i in range(messages):
                group.send(np.arange(4.0) + i, receiver)
            group._direct.close()  # the messages acknowledged before the process goes
        os._exit(3)
    if r == receiver:
        time.sleep(pause)
        for i in range(messages if opened else 0):
            got = group.recv(4, np.float64, victim)
            assert np.array_equal(got, np.arange(4.0) + i), (i, got)
        t = time.monotonic()
        try:
            group.recv(4, np.float64, victim)
        except Exception as e:
            return type(e).__name__, str(e), time.monotonic() - t
    try:
        group.barrier()
    except Exception as e:
        return type(e).__name__, str(e)
    return None


def direct_address(group, rank: int) -> tuple:
    """Where ``rank``'s direct links bootstrap (RDMA: its listener on the side channel's IP)."""
    return tuple(group._direct.links._addresses[rank])


def direct_token_set(group) -> bool:
    """Whether this rank's direct links prove a token on their bootstrap."""
    return group._direct.links._token is not None
