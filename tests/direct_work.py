"""Rank-side functions for tests/test_direct_links.py (run on every rank of a tests.cluster
ring; importable so they can be sent by reference)."""
from __future__ import annotations

import time

import numpy as np


def payload(seed: int, rank: int, nbytes: int) -> np.ndarray:
    return np.frombuffer(np.random.default_rng([seed, rank]).bytes(nbytes), np.uint8)


def all_send_first(group, peer_of: dict, nbytes: int, seed: int, async_op: bool) -> tuple:
    """Each rank in ``peer_of`` sends ``nbytes`` to ``peer_of[rank]`` and then receives from
    the rank that sends to it, blocking or with torch's isend/irecv/wait idiom; the others
    wait in a barrier.  (whether what came is what was sent, seconds)."""
    r = group.rank()
    start = time.monotonic()
    if r in peer_of:
        src = next(s for s, d in peer_of.items() if d == r)
        mine = payload(seed, r, nbytes)
        if async_op:
            sending = group.send(mine, peer_of[r], async_op=True)
            receiving = group.recv(nbytes, np.uint8, src, async_op=True)
            sending.wait()
            got = receiving.wait()
        else:
            group.send(mine, peer_of[r])
            got = group.recv(nbytes, np.uint8, src)
        right = bool(np.array_equal(got, payload(seed, src, nbytes)))
    else:
        right = True
    group.barrier()
    return right, time.monotonic() - start


def messages_read_ahead_in_order(group, a: int, b: int, nbytes: int, count: int) -> bool:
    """``a`` sends ``count`` messages of ``nbytes`` and then one more of another size to
    ``b``, which first sends ``nbytes`` to ``a`` (so its send blocks while ``a``'s messages
    arrive and are read ahead); each then arrives whole and in order."""
    r = group.rank()
    if r == a:
        for i in range(count):
            group.send(payload(i, a, nbytes), b)
        group.send(payload(99, a, 10), b)
        got = group.recv(nbytes, np.uint8, b)
        return bool(np.array_equal(got, payload(0, b, nbytes)))
    if r == b:
        group.send(payload(0, b, nbytes), a)
        ok = [np.array_equal(group.recv(nbytes, np.uint8, a), payload(i, a, nbytes))
              for i in range(count)]
        return all(ok) and bool(np.array_equal(group.recv(10, np.uint8, a),
                                               payload(99, a, 10)))
    return True
