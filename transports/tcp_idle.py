"""What arrives on a TCP data connection where nothing is posted (ringcomm protocol).

A mixin of ``TcpTransport``, apart so that the data path stays one module: while a rank
sleeps in a send or recv, connection 0 of the sides it reads nothing from is watched, and the
first bytes that arrive there are peeked at and shown to the group's ``Vet``
(``transports.arrivals``); what the group asks to be read ahead goes into a ``Stash`` that
the next receives on that connection drain first.  Meanwhile the group's direct links
(``transports.direct``, ``read_direct``) are read ahead too, so that a cycle of ranks that
all send first, some to neighbours and some not, completes.
"""
from __future__ import annotations

import select
import socket
import time
from typing import Callable, Protocol

from .arrivals import AHEAD_CHUNK, HEAD, PEEK_BYTES, VET_AFTER, Stash, Vet
from .base import Channel, Side
from .posted import Posted
from .tcp_conn import Conn

_POLLIN = select.POLLIN


class DirectReader(Protocol):
    """What ``read_direct`` takes: ``transports.direct.DirectLinks``."""

    def links_to_read(self, skip: int | None = None) -> dict[int, int]: ...

    def read_ahead(self, peer: int) -> bool: ...


class IdleConnections:
    """``vet_idle``, ``read_ahead`` and ``discard`` for ``TcpTransport`` (whose connections
    they watch)."""

    def _init_idle(self) -> None:
        self._vet: Vet | None = None
        self._stuck: Callable[[], None] | None = None
        self._vet_sides: tuple[Side, ...] = ()
        self._vetting = False            # the idle connections are being watched
        self._vet_due = 0.0              # from when (monotonic)
        self._idle: list[Conn] = []     # watched by vet_idle in this operation
        self._stash: dict[Conn, Stash] = {}  # bytes read ahead (see read_ahead)
        self._direct: DirectReader | None = None  # see read_direct
        self._direct_fds: dict[int, int] = {}     # fd -> peer, of the direct links watched

    def read_direct(self, links: DirectReader) -> None:
        """While a send or recv sleeps (as ``vet_idle`` says), read ahead what ``links``
        carry too."""
        self._direct = links

    def vet_idle(self, sides: tuple[Side, ...], vet: Vet | None,
                 stuck: Callable[[], None] | None = None) -> None:
        """Until the next call, once wait() has slept ``VET_AFTER`` since it first slept after
        this call: call ``stuck()``, then show ``vet`` what arrives on connection 0 of
        ``sides`` while nothing is posted there (an operation that ends sooner, or never
        sleeps, costs nothing here)."""
        for c in self._idle if not self._closed else ():
            if c.receiving is None and not self._reading_ahead(c):
                self._watch(c, c.events & ~_POLLIN)
        for fd in self._direct_fds:
            self._poll.unregister(fd)
        self._direct_fds.clear()
        self._vet, self._stuck, self._vet_sides, self._vetting = vet, stuck, sides, False
        self._idle.clear()
        self._vet_due = 0.0

    def _vet_sleep(self, timeout: float) -> float:
        """How long wait() may sleep: until the idle connections are due to be watched."""
        if not self._vet_due:  # the first sleep of this call
            self._vet_due = time.monotonic() + VET_AFTER
        left = self._vet_due - time.monotonic()
        if left > 0:
            return min(timeout, left)
        self._vetting = True
        if self._stuck is not None:
            self._stuck()
        if self._direct is not None and self._vet_sides:
            self._direct_fds = self._direct.links_to_read()
            for fd in self._direct_fds:
                self._poll.register(fd, _POLLIN)
        for side in self._vet_sides:
            c = self._conns[side][0]
            if c.receiving is None and not self._reading_ahead(c):
                self._idle.append(c)
                self._watch(c, c.events | _POLLIN)
                if self._stash.get(c):  # read ahead before: that comes first
                    self._show(c)
        return 0.0 if self._done else timeout

    def read_ahead(self, side: Side, conn: int, nbytes: int) -> None:
        """Take the next ``nbytes`` off the connection as they come (the next receives get
        them first), so that a neighbour blocked sending them can go on."""
        c = self._conns[side][conn]
        self._stash.setdefault(c, Stash()).want += nbytes
        self._watch(c, c.events | _POLLIN)

    def discard(self, side: Side, conn: int, nbytes: int) -> None:
        """Drop the next ``nbytes``, which ``vet`` was just shown (so they are here)."""
        c = self._conns[side][conn]
        stash = self._stash.get(c)
        if stash is not None:
            nbytes -= stash.drop(nbytes)
            if not stash.left() and not stash.want:
                del self._stash[c]
        while nbytes > 0:
            try:
                got = c.sock.recv(min(nbytes, AHEAD_CHUNK))
            except OSError:
                return
            if not got:
                return
            nbytes -= len(got)

    def _reading_ahead(self, c: Conn) -> bool:
        stash = self._stash.get(c)
        return stash is not None and stash.want > 0

    def _show(self, c: Conn) -> None:
        """Show ``vet`` what waits on ``c`` (read ahead first); stop watching unless it asks."""
        stash = self._stash.get(c)
        got = stash.peek(PEEK_BYTES) if stash is not None else b""
        held = len(got)
        if len(got) < PEEK_BYTES:
            try:
                got += c.sock.recv(PEEK_BYTES - len(got), socket.MSG_PEEK)
            except OSError:  # nothing more here (or a loss the receive that wants it reports)
                pass
        keep = bool(got) and self._vet is not None and self._vet(c.side, got, held)
        if not keep and not self._reading_ahead(c):
            self._watch(c, c.events & ~_POLLIN)

    def _on_direct(self, fd: int) -> None:
        """A direct link watched while this call sleeps has bytes: read them ahead."""
        if not self._direct.read_ahead(self._direct_fds[fd]):
            self._poll.unregister(fd)
            del self._direct_fds[fd]

    def _on_idle(self, c: Conn) -> None:
        stash = self._stash.get(c)
        if stash is None or not stash.want:  # watched by vet_idle
            return self._show(c)
        try:
            got = c.sock.recv(min(stash.want, AHEAD_CHUNK))
        except BlockingIOError:
            return
        except OSError:  # the receive that wants these bytes will report it
            got = b""
        if got:
            stash.add(got)
        if not got or not stash.want:  # read as far as asked (or the peer closed)
            stash.want = 0
            if not stash.left():
                del self._stash[c]
            if not (self._vetting and c.index == 0 and c.side in self._vet_sides):
                self._watch(c, c.events & ~_POLLIN)  # else: go on, to show what follows

    def _recv_stashed(self, c: Conn, into: memoryview, head: bytearray | None) -> None:
        """A receive posted where bytes were read ahead: those first, then the socket's."""
        stash, p = self._stash[c], Posted(into, head)
        if head is not None:
            c.head, c.expect = head, bytes(head)
        if stash.serve(p):
            if not stash.left() and not stash.want:
                del self._stash[c]
                self._watch(c, c.events & ~_POLLIN)
            self._done.append(c.recv_done)
            return
        del self._stash[c]  # all handed on; what it still wanted comes to this receive
        c.receiving = p
        if head is not None and head != c.expect:
            self._done.append(Channel(c.side, c.index, HEAD))
        self._watch(c, c.events | _POLLIN)
