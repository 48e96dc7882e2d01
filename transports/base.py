"""The one interface collective algorithms see: a rank's connections to its ring neighbours.

A rank has ``K`` full-duplex connections to its left neighbour and ``K`` to its right one.
Each direction of each connection carries at most one posted operation at a time; an algorithm
posts sends and receives, then waits for completions.  Algorithms never touch sockets.
"""
from __future__ import annotations

import abc
import enum
from typing import NamedTuple


class Side(enum.IntEnum):
    """Which neighbour a connection leads to."""

    LEFT = 0   # rank - 1: the connections this rank accepted
    RIGHT = 1  # rank + 1: the connections this rank opened


class Kind(enum.IntEnum):
    SEND = 0
    RECV = 1


class Channel(NamedTuple):
    """One direction of one connection: the unit that carries one posted operation."""

    side: Side
    conn: int
    kind: Kind


class LaneStopped(Exception):
    """Another lane of the same operation failed, or its caller was interrupted: stop
    (``Transport.lanes``)."""


class Transport(abc.ABC):
    """Moves bytes between a rank and its two ring neighbours."""

    rank: int
    size: int
    connections: int  # K, connections per neighbour

    def peer(self, side: Side) -> int:
        """The rank at the other end of ``side``."""
        return (self.rank + (1 if side is Side.RIGHT else -1)) % self.size

    @abc.abstractmethod
    def post_send(self, side: Side, conn: int, data: memoryview,
                  head: bytes | None = None) -> None:
        """Start sending ``data`` (a byte view that must stay alive until completion), after
        ``head`` when given: one completion for both, and no copy to join them."""

    @abc.abstractmethod
    def post_recv(self, side: Side, conn: int, into: memoryview,
                  head: bytearray | None = None) -> None:
        """Start receiving exactly ``len(into)`` bytes into ``into``, after filling ``head``
        when given: one completion for both."""

    @abc.abstractmethod
    def wait(self, deadline: float) -> list[Channel]:
        """Block until at least one posted operation completes; return the completed ones.

        ``deadline`` is a ``time.monotonic()`` value.  Raises ``CommTimeoutError`` past it and
        ``PeerLostError`` when a connection breaks.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection; idempotent."""

    def lanes(self, count: int) -> list[Transport] | None:
        """``count`` views of this transport's connections that separate threads can drive at
        once, each moving the channels of its own streams, or None where the transport has
        none (then one thread moves all).  A lane's ``rearm()`` forgets earlier wakes before
        an operation; its ``wake()``, from any thread, ends its wait with ``LaneStopped``."""
        return None

    def local_ranks(self) -> int:
        """How many ranks of the group run on this rank's host (they share its cores)."""
        return 1

    def abort(self, error: BaseException) -> None:
        """Stop after a failure: tell the neighbours (where the protocol can), then close."""
        self.close()


class LoneTransport(Transport):
    """The transport of a group of one rank: there is nobody to talk to."""

    rank, size, connections = 0, 1, 1

    def post_send(self, side: Side, conn: int, data: memoryview, head: bytes | None = None) -> None:
        raise RuntimeError("a group of size 1 has no neighbours")

    post_recv = post_send

    def wait(self, deadline: float) -> list[Channel]:
        raise RuntimeError("a group of size 1 has no neighbours")

    def close(self) -> None:
        pass
