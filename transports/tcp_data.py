"""The data path of a TCP ring: moving bytes over connections through one ``poll()`` loop.

Data moves through non-blocking sockets driven by one ``poll()`` loop in the caller's
thread: a send or receive is tried at once, and what the kernel cannot take yet waits for
readiness.  A wait first polls without sleeping for at most ``spin_seconds`` (50 us,
``RINGCOMM_SPIN_US``; 0 turns it off), since a ring step's partner usually answers within tens
of microseconds and a sleeping thread takes as long again to wake; past that bound it sleeps in
``poll()`` (so a blocked rank uses no CPU, and Ctrl-C interrupts).

``TcpDataPath`` is what a ``TcpTransport`` (``tcp``, which forms the connections) and each of
its lanes (``tcp_lanes``, views of the same sockets for other threads) have in common: both
subclass it, so neither module imports the other's class.
"""
from __future__ import annotations

import math
import os
import select
import time
from typing import Sequence

from .base import Channel, Side, Transport
from .arrivals import HEAD
from .hostfile import Address
from .posted import Posted
from .tcp_conn import Conn
from .tcp_control import ControlConnections
from .tcp_idle import IdleConnections

_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_POLLBAD = select.POLLERR | select.POLLHUP | select.POLLNVAL  # reported whatever was asked
_IN_READY, _OUT_READY = _POLLIN | _POLLBAD, _POLLOUT | _POLLBAD
MAX_POLL_MS = 1 << 30     # poll() takes int milliseconds
_yield = getattr(os, "sched_yield", lambda: None)


class TcpDataPath(ControlConnections, IdleConnections, Transport):
    """Posting sends and receives on ``Conn``s and waiting for them to complete.

    The subclass's set-up provides ``rank``, ``size``, ``connections``, ``protocol``,
    ``_hostfile``, ``_spin``, ``_poll``, ``_polled``, ``_done``, ``_conns``, ``_control`` and
    ``_closed``, and calls ``_init_idle`` and ``_init_control``.
    """

    protocol: str
    _hostfile: Sequence[Sequence[Address]]
    _spin: float
    _poll: select.poll
    _polled: dict[int, Conn]        # fd -> connection, for what is registered
    _done: list[Channel]            # completions not yet returned by wait()
    _conns: tuple[list[Conn], list[Conn]]  # the data connections, per side
    _control: dict[Side, Conn]      # the control connections (ringcomm protocol)
    _closed: bool

    @property
    def secure(self) -> bool:
        return self.protocol == "ringcomm"

    def local_ranks(self) -> int:
        host = self._hostfile[self.rank][0].host
        return sum(1 for addresses in self._hostfile if addresses[0].host == host)

    def _address(self, rank: int) -> str | None:
        return str(self._hostfile[rank][0]) if 0 <= rank < self.size else None

    # -- data ---------------------------------------------------------------------------------

    def post_send(self, side: Side, conn: int, data: memoryview,
                  head: bytes | None = None) -> None:
        c = self._conns[side][conn]
        if c.sending is not None:
            raise RuntimeError(f"a send is already posted on {side.name}[{conn}]")
        total = len(data) + (0 if head is None else len(head))
        sent = 0
        try:
            if head is not None:  # both in one system call (and one segment when small)
                sent = c.sock.sendmsg((head, data))
            elif total:
                sent = c.sock.send(data)
        except BlockingIOError:
            pass
        except OSError as e:
            raise self._lost(c, "send", e) from e
        if sent == total:
            self._done.append(c.send_done)
            return
        c.sending = Posted(data, head)
        c.sending.advance(sent)
        self._watch(c, c.events | _POLLOUT)

    def post_recv(self, side: Side, conn: int, into: memoryview,
                  head: bytearray | None = None) -> None:
        c = self._conns[side][conn]
        if c.receiving is not None:
            raise RuntimeError(f"a receive is already posted on {side.name}[{conn}]")
        if self._stash and c in self._stash:
            return self._recv_stashed(c, into, head)
        total = len(into) + (0 if head is None else len(head))
        got = 0
        if head is not None:  # what the caller expects: HEAD only when a byte differs
            c.head, c.expect = head, bytes(head)
        if total:
            try:
                got = c.sock.recv_into(into) if head is None else \
                    c.sock.recvmsg_into((head, into))[0]
            except BlockingIOError:
                got = -1
            except OSError as e:
                raise self._lost(c, "receive", e) from e
            if got == 0:
                raise self._lost(c, "receive", None)
        if got == total:
            self._done.append(c.recv_done)
            return
        c.receiving = p = Posted(into, head)
        if got > 0:
            p.advance(got)
            if head is not None and head != c.expect:  # check it before the data is all in
                self._done.append(Channel(side, conn, HEAD))
        self._watch(c, c.events | _POLLIN)

    def wait(self, deadline: float) -> list[Channel]:
        """Completions so far; else poll without sleeping for at most ``self._spin`` seconds,
        then sleep in poll() until something completes or ``deadline`` passes."""
        if not self._done:
            poll = self._poll.poll
            spin_until = time.perf_counter() + min(self._spin, deadline - time.monotonic()) \
                if self._spin else 0.0  # the spin ends by the deadline too
            while True:
                if spin_until and time.perf_counter() < spin_until:
                    _yield()  # a peer sharing this core runs now instead of after the spin
                    events = poll(0)
                else:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        raise self._timed_out()
                    if self._vet is not None and not self._vetting:
                        timeout = self._vet_sleep(timeout)
                    events = poll(min(math.ceil(timeout * 1000), MAX_POLL_MS))
                if events:
                    self._on_events(events)
                    if self._done:
                        break
        done, self._done = self._done, []
        return done

    def _on_events(self, events: list[tuple[int, int]]) -> None:
        polled = self._polled
        for fd, ev in events:
            c = polled.get(fd)
            if c is None:
                if fd in self._direct_fds:  # a direct link, read ahead while this call sleeps
                    self._on_direct(fd)
                continue
            if c.index == self.connections:
                self._on_notice(c)
                continue
            if ev & _IN_READY:
                if c.receiving is not None:
                    self._on_readable(c)
                elif c.events & _POLLIN:  # watched while nothing is posted: see vet_idle
                    self._on_idle(c)
            if ev & _OUT_READY and c.sending is not None:
                self._on_writable(c)

    def _on_readable(self, c: Conn) -> None:
        p = c.receiving
        in_head = p.next is not None
        try:
            got = c.sock.recv_into(p.view[p.pos:]) if p.next is None else \
                c.sock.recvmsg_into((p.view[p.pos:], p.next))[0]
        except BlockingIOError:
            return
        except OSError as e:
            raise self._lost(c, "receive", e) from e
        if got == 0:
            raise self._lost(c, "receive", None)
        if p.advance(got):
            c.receiving = None
            self._watch(c, c.events & ~_POLLIN)
            self._done.append(c.recv_done)
        elif in_head and c.head != c.expect:  # a head byte differs: check it now
            self._done.append(Channel(c.side, c.index, HEAD))

    def _on_writable(self, c: Conn) -> None:
        p = c.sending
        try:
            sent = c.sock.send(p.view[p.pos:]) if p.next is None else \
                c.sock.sendmsg((p.view[p.pos:], p.next))
        except BlockingIOError:
            return
        except OSError as e:
            raise self._lost(c, "send", e) from e
        if p.advance(sent):
            c.sending = None
            self._watch(c, c.events & ~_POLLOUT)
            self._done.append(c.send_done)

    def _watch(self, c: Conn, events: int) -> None:
        """Poll ``c`` for ``events`` (none: not at all).  poll()'s registrations are plain
        bookkeeping in this process, so changing them costs no system call."""
        if events == c.events:
            return
        if events:
            self._poll.register(c.fd, events)
            self._polled[c.fd] = c
        else:
            self._poll.unregister(c.fd)
            del self._polled[c.fd]
        c.events = events
