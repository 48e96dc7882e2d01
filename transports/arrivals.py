"""Bytes that arrive apart from a completed receive (ringcomm protocol), shared by TCP and RDMA.

Three things let ranks that called different operations find out at once instead of waiting
for their deadline (``docs/wire-protocol.md``, "Operation header"):

- ``HEAD``: a transport reports ``Channel(side, conn, HEAD)`` from ``wait()`` when bytes of a
  posted receive's head arrived, its data is not complete, and a byte differs from what the
  head held when posted (the engine fills it with its own header, which a matched peer's
  equals), so that a mismatch is seen as soon as the header is in, not after data that the
  peer may never send, and a match costs nothing.
- ``Vet``: while a rank is blocked in a send or recv, a connection it reads nothing from may
  receive the start of the neighbour's next operation there; the transport peeks at it and asks
  the group (``Vet``) whether it can be what this rank will do next.
- ``Stash``: what the group then asks to be read ahead (a neighbour's announced message, so
  that two ranks that both send first do not wait on each other forever): bytes taken off the
  connection before any receive asked for them, handed in order to the next receives.
"""
from __future__ import annotations

import enum
from typing import Callable

from .base import Side
from .posted import Posted


class Arrival(enum.IntEnum):
    """A ``Channel.kind`` beyond ``Kind.SEND``/``Kind.RECV``: the receive is not complete."""

    HEAD = 2  # a byte of the posted receive's head differs, its data is not complete


HEAD = Arrival.HEAD

# (side, the first bytes of what waits on that side's connection 0, how many of them were
# read ahead already) -> keep watching?  Raises MismatchError when the bytes cannot be what
# this rank reads there next; may ask the transport to take them off (``discard``,
# ``read_ahead``), and answers True only when it took all it was shown beyond what was read
# ahead (else the connection is left alone for the rest of the call).  Called only while the
# rank sleeps in a call.
Vet = Callable[[Side, bytes, int], bool]

PEEK_BYTES = 1024       # shown at most: the headers that went alone (ringcomm.lone), and one
VET_AFTER = 1e-3        # an operation that sleeps this long after it started looks (Vet): a
                        # shorter one pays nothing for it (a peek is a system call and a wake)
AHEAD_CHUNK = 1 << 20   # a read-ahead takes at most this much per system call


class Stash:
    """Bytes read off one connection ahead of the receives that will want them, in order.

    ``want`` is how many more bytes to read ahead; the memory held is what has arrived and not
    been handed on (at most the announced message).
    """

    __slots__ = ("data", "pos", "want")

    def __init__(self) -> None:
        self.data = bytearray()
        self.pos = 0
        self.want = 0

    def add(self, chunk: bytes | memoryview) -> None:
        self.data += chunk
        self.want -= len(chunk)

    def left(self) -> int:
        """Bytes held and not yet handed to a receive."""
        return len(self.data) - self.pos

    def __bool__(self) -> bool:
        return self.left() > 0

    def peek(self, n: int) -> bytes:
        return bytes(self.data[self.pos:self.pos + n])

    def drop(self, n: int) -> int:
        """Forget up to ``n`` held bytes; how many were."""
        n = min(n, self.left())
        self.pos += n
        if self.pos == len(self.data):
            self.data, self.pos = bytearray(), 0
        return n

    def serve(self, posted: Posted) -> bool:
        """Move what is held into ``posted`` (head first); True when ``posted`` is complete."""
        done = False
        with memoryview(self.data) as held:
            while not done and self.pos < len(held):
                n = min(len(posted.view) - posted.pos, len(held) - self.pos)
                posted.view[posted.pos:posted.pos + n] = held[self.pos:self.pos + n]
                self.pos += n
                done = posted.advance(n)
        if self.pos == len(self.data):  # all handed on: let the memory go
            self.data, self.pos = bytearray(), 0
        return done
