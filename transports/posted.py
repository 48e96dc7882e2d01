"""One posted send or receive that has not completed yet: an optional head, then the data.

Both transports move a posted operation in pieces (what the socket takes, what a slot holds)
and need to know how far it has got; a head (the operation header) goes first and then the
data, with no copy to join them.
"""
from __future__ import annotations


class Posted:
    """``view[pos:]`` is what is left of the current part; ``next`` is the data after a head."""

    __slots__ = ("view", "pos", "next")

    def __init__(self, data: memoryview, head: bytes | bytearray | None = None) -> None:
        if head is None:
            self.view, self.next = data, None
        else:
            self.view, self.next = memoryview(head), data
        self.pos = 0

    def advance(self, moved: int) -> bool:
        """Count ``moved`` more bytes (they may run past the head); True when all are moved."""
        self.pos += moved
        if self.next is not None and self.pos >= len(self.view):
            self.view, self.pos, self.next = self.next, self.pos - len(self.view), None
        return self.next is None and self.pos == len(self.view)
