"""Rank and integer arguments of the public API, checked one way everywhere.

``send(x, True)`` must not mean ``send(x, 1)``: a bool (Python's or numpy's) is an int to
``isinstance``, so every rank argument (send's ``dst``, recv's ``src``, broadcast's ``root``)
and split's ``color`` and ``key`` go through ``integer_argument``, which refuses bools, floats
and anything else that is not an integer with a ``ConfigError`` (a ``ValueError``) saying
which argument of which call on which rank.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .transports import ConfigError, Side

INT64 = 1 << 63


def integer_argument(value: object, name: str, where: str) -> int:
    """``value`` as an ``int``: a Python or numpy integer (never a bool) that fits in 64 bits.
    ``where`` starts the message, e.g. "rank 0: Group.split"."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{where}: {name} must be an integer; got {value!r}")
    if not -INT64 <= int(value) < INT64:
        raise ConfigError(f"{where}: {name}={value} does not fit in 64 bits")
    return int(value)


def rank_argument(value: object, name: str, op: str, rank: int, size: int) -> int:
    """``value`` as a rank of a group of ``size``; ``op`` and ``name`` (e.g. "send", "dst")
    name the call and the argument in the error, raised on ``rank``."""
    if type(value) is int and 0 <= value < size:  # the common case, at once (bool is not int)
        return value
    peer = integer_argument(value, name, f"rank {rank}: {op}")
    if not 0 <= peer < size:
        raise ConfigError(f"rank {rank}: {op}: {name}={value!r} is not a rank of this group "
                          f"of size {size}")
    return peer


def neighbour_side(transport: Any, peer: int, op: str, order: tuple[Side, Side]) -> Side:
    """The side of ``transport``'s ring on which the checked rank ``peer`` sits, tried in
    ``order`` (MLX checks right first for send, left first for recv)."""
    r = transport.rank
    if peer == r:
        raise ConfigError(f"rank {r}: {op}: rank {r} cannot {op} to itself")
    for side in order:
        if transport.peer(side) == peer:
            return side
    raise ConfigError(f"rank {r}: {op}: rank {peer} is not a ring neighbour of rank {r} "
                      f"(neighbours: {transport.peer(Side.LEFT)} and "
                      f"{transport.peer(Side.RIGHT)}); the ring backend only sends between "
                      "neighbours")
