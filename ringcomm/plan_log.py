"""``RINGCOMM_LOG=debug``: each operation's plan in one line of the ``ringcomm`` log.

The group checks ``debug_on()`` (the logger's own cached level check) before calling
``operation``, so that with the logger at its default level a collective pays one method
call and describes nothing.
"""
from __future__ import annotations

import numpy as np

from .transports import Side
from .transports.log import DEBUG, logger

from .plans import Plan

debug_on = logger.isEnabledFor  # debug_on(DEBUG): the hot path's whole cost when it is off
__all__ = ["DEBUG", "debug_on", "operation"]


def operation(rank: int, name: str, dtype: np.dtype, shape: tuple[int, ...], plan: Plan,
              threads: int, message: tuple[Side, bool] | None) -> None:
    """One line: the operation, and its plan's streams, steps, bytes each way and threads."""
    sends = [s.send for stream in plan for s in stream if s.send is not None]
    recvs = [s.recv for stream in plan for s in stream if s.recv is not None]
    sides = sorted({m.side.name.lower() for m in sends + recvs})
    conns = sorted({m.conn for m in sends + recvs})
    towards = "" if message is None else \
        f" ({'to' if message[1] else 'from'} the {message[0].name.lower()} neighbour)"
    logger.debug("rank %d: %s %s %s%s: %d stream(s), %d step(s), %d bytes out and %d in over "
                 "%s connection(s) %s, %d thread(s)", rank, name, np.dtype(dtype).name,
                 tuple(shape), towards, len(plan), sum(len(s) for s in plan),
                 sum(m.stop - m.start for m in sends), sum(m.stop - m.start for m in recvs),
                 "/".join(sides) or "no", ",".join(map(str, conns)) or "-", threads)
