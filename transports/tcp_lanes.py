"""Lanes of a TCP transport: views of its connections that other threads can drive at once.

A large operation's streams use disjoint channels (one direction of one connection each), so
they can progress on several cores: socket ``send``/``recv_into`` and numpy's folds release the
GIL.  A lane is a ``TcpTransport`` in all but set-up (both are a ``tcp_data.TcpDataPath``): it
has its own ``poll()`` set, its own completion list and its own per-connection state over the
transport's sockets, so two lanes never share a mutable field (one lane may poll a socket for
reading while another polls the same socket for writing).  A lane waits as the transport does
(bounded spin, then sleep, under the deadline; without the spin, 2-rank all_sum and all_gather
of 2-8 MiB were up to 2x slower on 16 cores in a 3-repetition A/B, though a 2-repetition one on
another host leaned the other way: docs/performance.md).  ``wake()`` ends a lane's wait from
another thread with ``LaneStopped``, through a pipe in its poll set, so a failure on one lane
stops the others at once with no polling.
Errors that read the control connections (a lost peer's notice, a deadline's liveness probe)
are made under one lock, so two lanes never read one notice in halves.
"""
from __future__ import annotations

import os
import select
import threading

from .base import LaneStopped, Side
from .errors import CommError
from .tcp_conn import Conn
from .tcp_data import TcpDataPath


class TcpLane(TcpDataPath):
    """A view of a ``TcpTransport``'s data connections with its own progress state."""

    def __init__(self, parent: TcpDataPath, lock: threading.Lock) -> None:
        # No set-up: the parent formed the ring; a lane only moves bytes on it.
        self.rank, self.size, self.connections = parent.rank, parent.size, parent.connections
        self.protocol = parent.protocol
        self._hostfile = parent._hostfile
        self._spin = parent._spin
        self._poll = select.poll()
        self._polled: dict[int, Conn] = {}
        self._done = []
        self._conns = tuple([Conn(c.sock, c.side, c.index, c.peer, c.address)
                             for c in parent._conns[side]] for side in (Side.LEFT, Side.RIGHT))
        self._control = parent._control  # read for notices and probes, under the lock
        self._closed = False
        self._listeners = []
        self.direct_identity = None
        self._init_idle()
        self._init_control(parent._heard)  # what the control connections said: shared
        self._errors_lock = lock
        self._wake_in, self._wake_out = os.pipe()
        os.set_blocking(self._wake_in, False)
        os.set_blocking(self._wake_out, False)
        self._poll.register(self._wake_in, select.POLLIN)

    def wake(self) -> None:
        """Make this lane's current or next wait raise ``LaneStopped`` (from any thread)."""
        try:
            os.write(self._wake_out, b"x")
        except OSError:
            pass  # the pipe is full (woken already) or closed (the lane is gone)

    def rearm(self) -> None:
        """Forget earlier wakes, before this lane runs a new operation."""
        try:
            while os.read(self._wake_in, 4096):
                pass
        except OSError:
            pass

    def _on_events(self, events: list[tuple[int, int]]) -> None:
        for fd, _ in events:
            if fd == self._wake_in:
                self.rearm()
                raise LaneStopped()
        super()._on_events(events)

    def _lost(self, c: Conn, what: str, e: OSError | None) -> CommError:
        with self._errors_lock:
            return super()._lost(c, what, e)

    def _timed_out(self) -> CommError:
        with self._errors_lock:
            return super()._timed_out()

    def abort(self, error: BaseException) -> None:
        raise RuntimeError("a lane cannot abort: abort its transport")

    def close(self) -> None:
        """Release the wake pipe; the sockets belong to the transport."""
        if self._closed:
            return
        self._closed = True
        self._poll.unregister(self._wake_in)
        os.close(self._wake_in)
        os.close(self._wake_out)
