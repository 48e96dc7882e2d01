"""The failure behind a broken direct link: what the ring reports, if it does so in time.

A rank that finds a direct link to a non-neighbour gone (its listener refuses, or the link
closes) often sees only the echo of a failure elsewhere: the peer failed in a collective with
its own ring neighbours (a ``MismatchError``, say, in an all_to_all whose ring steps this rank
completed) and closed its group.  That failure's abort notice travels the ring and reaches
this rank within milliseconds, so before blaming the peer, this rank listens on the ring for
up to ``GRACE`` seconds (as a broken ring connection waits for its neighbour's notice,
``transports.tcp.NOTICE_GRACE``) and reports the failure that came first.
"""
from __future__ import annotations

import time
from typing import Any

from .transports import liveness
from .transports.errors import CommError

GRACE = 0.25  # seconds: a notice relayed by a loaded 2-core machine's ranks comes in ~10 ms


def reported(transport: Any, seconds: float = GRACE) -> CommError | None:
    """The failure a ring neighbour reports within ``seconds`` (TCP: its control connections;
    RDMA: the side channel), or None."""
    control = getattr(transport, "_control", None)
    if control:  # TcpTransport, ringcomm protocol
        heard = liveness.listen(transport.rank, transport.size,
                                [(c.peer, c.sock) for c in control.values()],
                                transport._address, probe=False, seconds=seconds)
        return heard.notice
    side = getattr(transport, "_side", None)
    if side is None:  # RdmaTransport's side channel (none: closed, or a group of one)
        return None
    end = time.monotonic() + seconds
    try:
        while end > time.monotonic():
            side.watch(end - time.monotonic())
    except CommError as notice:
        return notice
    return None
