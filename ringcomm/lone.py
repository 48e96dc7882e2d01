"""Operation headers that travel alone (ringcomm protocol), kept per group.

A collective sends its header to both neighbours and expects one from both, on connection 0
each way (``docs/wire-protocol.md``, "Operation header"); where its plan sends no data, or
receives none, the header travels alone.  Sending and taking such a header at once would cost
a small collective a system call each way (on loopback a send is ~4 us of kernel time, which
measured +20 us per 8-byte all_sum on 2 ranks), so they wait instead, in order:

- to go out ahead of the next data this rank sends on that connection (same system call), or
  every ``LIMIT``-th one, or as soon as this rank sleeps in a call (``flush``);
- to be taken ahead of the next data this rank receives there, or every ``LIMIT``-th one,
  and meanwhile to be looked at, when this rank sleeps in a call, where they wait (``prefix``).

Both ends of a connection count the same headers, so they agree, without a word, on where
each one is.  A rank that waits on a neighbour therefore always shows it every header it owes
it, and sees every header the neighbour owes it, within ``transports.arrivals.VET_AFTER`` of
sleeping: a mismatch never waits for the deadline.  Memory: 32 bytes per header waiting,
at most ``LIMIT`` per side and direction.
"""
from __future__ import annotations

from typing import Callable

from .transports import Side

LIMIT = 16   # headers that wait, per side and direction, before they go (resp. are taken)
SIZE = 32    # bytes of one header (header.HEADER.size)
_NONE: tuple = ()


class Alone:
    """The headers that wait, by side: ``out`` not yet sent, ``into`` not yet taken."""

    __slots__ = ("out", "into", "sent", "taken", "idle")

    def __init__(self) -> None:
        self.out: tuple[list[bytes], list[bytes]] = ([], [])
        self.into: tuple[list[bytes], list[bytes]] = ([], [])
        self.sent = [0, 0]   # how many ever went alone to each side (both ends count alike)
        self.taken = [0, 0]  # ... came alone from each side
        self.idle: Idle | None = None  # single.run's, made once (same transport and check)

    def begin(self, header: bytes, lone_out: tuple[Side, ...], lone_in: tuple[Side, ...],
              eager: bool) -> tuple[list[tuple[Side, bytes]], list[Side]]:
        """This call's headers alone: (what to send now, the sides to take from at the end)."""
        send = take = None
        for side in lone_out:
            self.out[side].append(header)
            self.sent[side] += 1
            if eager or self.sent[side] % LIMIT == 0:
                send = (send or []) + [(side, self.take_out(side))]
        for side in lone_in:
            self.into[side].append(header)
            self.taken[side] += 1
            if eager or self.taken[side] % LIMIT == 0:
                take = (take or []) + [side]
        return send or _NONE, take or _NONE

    def lead(self, side: Side, conn: int, header: bytes) -> bytes:
        """What a stream's first send on ``conn`` to ``side`` carries: the headers waiting to
        go there (connection 0), then ``header``."""
        return self.take_out(side) + header if conn == 0 and self.out[side] else header

    def expect(self, side: Side, conn: int, header: bytes) -> bytes:
        """What a stream's first receive on ``conn`` from ``side`` must take: the headers
        waiting from there (connection 0), then ``header``."""
        return self.take_in(side) + header if conn == 0 and self.into[side] else header

    def take_out(self, side: Side) -> bytes:
        """The waiting headers to ``side``, to go out now (ahead of data)."""
        return _drain(self.out[side])

    def take_in(self, side: Side) -> bytes:
        """The waiting headers from ``side``, to be taken now (ahead of data)."""
        return _drain(self.into[side])

    def seen(self, side: Side, count: int) -> None:
        """The first ``count`` headers waiting from ``side`` were checked where they wait
        (and taken off the connection): nothing takes them again."""
        del self.into[side][:count]


class Idle:
    """What a call does once its rank sleeps in it (``Transport.vet_idle``): the headers it
    owes go out (``stuck``: through ``send_alone``, else posted here and counted in
    ``sent``), and what arrives on connection 0 where nothing is posted is judged
    (``judge``); a header that differs goes to ``check`` (as ``report`` does)."""

    __slots__ = ("transport", "alone", "quiet", "vet", "check", "send_alone", "sent")

    def __init__(self, transport, alone: Alone, quiet: tuple[Side, ...], vet, check,
                 send_alone: Callable[[Side, bytes], None] | None = None) -> None:
        self.transport, self.alone, self.quiet, self.vet = transport, alone, quiet, vet
        self.check, self.send_alone, self.sent = check, send_alone, 0

    def stuck(self) -> None:
        """This rank sleeps in the call: the headers it owes go now."""
        alone = self.alone
        for side in (Side.LEFT, Side.RIGHT):
            if alone.out[side]:  # (no stream sends there in this call)
                if self.send_alone is not None:
                    self.send_alone(side, alone.take_out(side))
                else:
                    self.sent += 1
                    self.transport.post_send(side, 0, memoryview(alone.take_out(side)))

    def judge(self, side: Side, got: bytes, held: int) -> bool:
        """What arrived on connection 0 of ``side`` while nothing is posted there: the
        headers this rank waits for from there first (checked, then taken off), then, in a
        send or recv, the start of the neighbour's next operation there (after the ``held``
        bytes of messages read ahead).  True: keep watching (all was taken)."""
        alone = self.alone
        pre = b"".join(alone.into[side])
        if not pre:
            got = got[held:]  # messages this rank read ahead and counted
        n = min(len(got), len(pre))
        if got[:n] != pre[:n]:
            report(self.check, pre[:n], got[:n], side)
        whole = n // SIZE
        if whole:
            self.transport.discard(side, 0, whole * SIZE)
            alone.seen(side, whole)
        if n < len(pre):  # all of it waited here: watch for the rest (if all was taken)
            return n % SIZE == 0
        if side not in self.quiet:  # (a collective: what follows is the neighbour's next call)
            return False
        rest = got[n:]
        if not rest:
            return True
        wanted = self.vet(side, rest)
        for conn, nbytes in wanted:
            self.transport.read_ahead(side, conn, nbytes)
        return bool(wanted)


def report(check: Callable[[bytes, Side, bytes], None], want: bytes, got: bytes | bytearray,
           side: Side) -> None:
    """``check`` the first header-sized slot where ``got`` differs from ``want``."""
    ours, theirs = first_difference(want, got)
    check(theirs, side, ours)


def first_difference(want: bytes, got: bytes) -> tuple[bytes, bytes]:
    """The first header-sized slot where ``got`` differs from ``want``: (ours, theirs)."""
    for at in range(0, len(want), SIZE):
        if got[at:at + SIZE] != want[at:at + SIZE]:
            return want[at:at + SIZE], bytes(got[at:at + SIZE])
    return want[-SIZE:], bytes(got[-SIZE:])


def _drain(queue: list[bytes]) -> bytes:
    """Everything in ``queue``, joined, and the queue emptied."""
    if not queue:
        return b""
    got = b"".join(queue)
    queue.clear()
    return got
