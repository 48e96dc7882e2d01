"""What arrives on an RDMA link where nothing is posted (ringcomm protocol).

A mixin of ``RdmaTransport``, as ``tcp_idle`` is of TCP's: while a rank naps in a send or
recv, the messages that arrived on link 0 of the sides it reads nothing from are peeked at
and shown to the group's ``Vet`` (``transports.arrivals``); what the group asks to be read
ahead is copied out of the receive slots into a ``Stash`` (which reposts them, so the
neighbour's credits grow and its send goes on), and the next receives drain it first.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from .arrivals import HEAD, PEEK_BYTES, VET_AFTER, Stash, Vet
from .base import Channel, Kind, Side
from .posted import Posted
from .rdma_keeper import locked
from .rdma_stream import payload_at

if TYPE_CHECKING:
    from .rdma_setup import Link


class IdleLinks:
    """``vet_idle``, ``read_ahead`` and ``discard`` for ``RdmaTransport`` (whose links they
    read)."""

    def _init_idle(self) -> None:
        self._vet: Vet | None = None
        self._stuck: Callable[[], None] | None = None
        self._vet_sides: tuple[Side, ...] = ()
        self._done_with: set[Link] = set()    # left alone for the rest of this operation
        self._shown: set[Link] = set()        # what it had read ahead was shown
        self._vet_due = 0.0                   # from when (monotonic)
        self._stash: dict[Link, Stash] = {}   # bytes read ahead (see read_ahead)
        self._expect: dict[Link, tuple[bytearray, bytes]] = {}  # a head, what it held: HEAD

    @locked
    def vet_idle(self, sides: tuple[Side, ...], vet: Vet | None,
                 stuck: Callable[[], None] | None = None) -> None:
        """Until the next call, once wait() has napped ``VET_AFTER`` since its first nap after
        this call: call ``stuck()``, then show ``vet`` what arrives on link 0 of ``sides``
        while nothing is posted there."""
        self._vet, self._stuck, self._vet_sides = vet, stuck, sides
        self._done_with.clear()
        self._shown.clear()
        self._vet_due = 0.0

    def _vet_links(self) -> None:
        """At every nap: from ``VET_AFTER`` after the first, what vet_idle promises."""
        now = time.monotonic()
        if not self._vet_due:
            self._vet_due = now + VET_AFTER
        if now < self._vet_due:
            return
        if self._stuck is not None:
            stuck, self._stuck = self._stuck, None
            stuck()
        for side in self._vet_sides:
            link = self._links[side][0]
            stash = self._stash.get(link)
            if link.receiving is None and link not in self._done_with \
                    and not self._reading_ahead(link) \
                    and (link.arrived or (stash and link not in self._shown)):
                self._shown.add(link)
                if not self._vet(side, self._peek(link), stash.left() if stash else 0):
                    self._done_with.add(link)

    def _peek(self, link: Link) -> bytes:
        """Up to ``PEEK_BYTES`` of what waits (read ahead first), left where it is."""
        stash = self._stash.get(link)
        got, taken = bytearray(stash.peek(PEEK_BYTES) if stash is not None else b""), link.taken
        for slot, length in link.arrived:
            if len(got) >= PEEK_BYTES:
                break
            at = payload_at(slot) + taken
            got += link.mem[at:at + min(length - taken, PEEK_BYTES - len(got))]
            taken = 0
        return bytes(got)

    @locked
    def read_ahead(self, side: Side, conn: int, nbytes: int) -> None:
        """Take the next ``nbytes`` out of the link's slots as they come (the next receives
        get them first), so that a neighbour blocked sending them can go on."""
        link = self._links[side][conn]
        self._stash.setdefault(link, Stash()).want += nbytes
        if link.receiving is None:
            self._drain_ahead(link)

    @locked
    def discard(self, side: Side, conn: int, nbytes: int) -> None:
        """Drop the next ``nbytes``, which ``vet`` was just shown (so they are here)."""
        link = self._links[side][conn]
        stash = self._stash.get(link)
        if stash is not None:
            nbytes -= stash.drop(nbytes)
            if not stash.left() and not stash.want:
                del self._stash[link]
        while nbytes > 0 and link.arrived:
            n = min(link.arrived[0][1] - link.taken, nbytes)
            self._taken(link, n)
            nbytes -= n

    def _reading_ahead(self, link: Link) -> bool:
        stash = self._stash.get(link)
        return stash is not None and stash.want > 0

    def _drain_ahead(self, link: Link) -> None:
        stash = self._stash[link]
        while link.arrived and stash.want > 0:
            slot, length = link.arrived[0]
            at = payload_at(slot) + link.taken
            n = min(length - link.taken, stash.want)
            stash.add(link.mem[at:at + n])
            self._taken(link, n)
        if not stash.want:
            if not stash.left():
                del self._stash[link]
            self._done_with.discard(link)  # what follows it may be shown to vet

    def _recv_stashed(self, link: Link, into: memoryview, head: bytearray | None) -> None:
        """A receive posted where bytes were read ahead: those first, then the slots'."""
        stash, p = self._stash[link], Posted(into, head)
        if head is not None:
            self._expect[link] = (head, bytes(head))
        if stash.serve(p):
            if not stash.left() and not stash.want:
                del self._stash[link]
            self._done.append(Channel(link.side, link.index, Kind.RECV))
            return
        del self._stash[link]  # all handed on; what it still wanted comes to this receive
        link.receiving = p
        if head is not None and head != self._expect[link][1]:  # a byte differs: check it now
            self._done.append(Channel(link.side, link.index, HEAD))
        self._drain(link)
