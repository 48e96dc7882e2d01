"""TCP sockets as a ring transport: moving bytes over the connections ``tcp_setup`` formed.

Data moves through non-blocking sockets driven by one ``poll()`` loop in the caller's
thread: a send or receive is tried at once, and what the kernel cannot take yet waits for
readiness.  A wait first polls without sleeping for at most ``spin_seconds`` (50 us,
``RINGCOMM_SPIN_US``; 0 turns it off), since a ring step's partner usually answers within tens
of microseconds and a sleeping thread takes as long again to wake; past that bound it sleeps in
``poll()`` (so a blocked rank uses no CPU, and Ctrl-C interrupts).  With ringcomm's protocol a
control connection per neighbour carries abort notices, and a warm-up exchange runs once
after set-up (``_warm_up``).
"""
from __future__ import annotations

import math
import os
import select
import socket
import threading
import time
from typing import Sequence

from . import settings
from .base import Channel, Kind, Side, Transport
from .errors import CommError
from .arrivals import HEAD
from .hostfile import Address
from .posted import Posted
from .sockets import set_congestion
from .tcp_control import ControlConnections
from .tcp_idle import IdleConnections
from .tcp_setup import TcpSetup

_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_POLLBAD = select.POLLERR | select.POLLHUP | select.POLLNVAL  # reported whatever was asked
_IN_READY, _OUT_READY = _POLLIN | _POLLBAD, _POLLOUT | _POLLBAD
MAX_POLL_MS = 1 << 30     # poll() takes int milliseconds
WARMUP_BYTES = 4 << 20   # each way per data connection, ringcomm protocol (see _warm_up)
_yield = getattr(os, "sched_yield", lambda: None)


class _Conn:
    """One socket to a neighbour and the (at most one) send and receive posted on it."""

    __slots__ = ("sock", "fd", "side", "index", "peer", "address", "sending", "receiving",
                 "events", "send_done", "recv_done", "head", "expect")

    def __init__(self, sock: socket.socket, side: Side, index: int, peer: int,
                 address: Address) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.side = side
        self.index = index
        self.peer = peer
        self.address = address
        self.sending: Posted | None = None    # the send the kernel has not taken all of
        self.receiving: Posted | None = None  # the receive still waiting for bytes
        self.events = 0
        self.send_done = Channel(side, index, Kind.SEND)  # what wait() reports, made once
        self.recv_done = Channel(side, index, Kind.RECV)
        self.head: bytearray | None = None  # the posted receive's head, and what it held
        self.expect = b""                   # when posted (the caller's own header): see HEAD


class TcpTransport(ControlConnections, IdleConnections, Transport):
    """A rank's K connections to each ring neighbour over TCP.

    ``protocol="mlx"`` is MLX's bare set-up (no byte before the first operation), for rings
    shared with MLX processes.  ``protocol="ringcomm"`` opens every connection with the
    handshake of ``transports.handshake`` (job id, ranks, optional HMAC with ``token``) and
    adds one control connection per neighbour, which carries abort notices: when any rank
    fails, every other rank learns which one and why, instead of waiting for its deadline.
    """

    def __init__(self, rank: int, hostfile: Sequence[Sequence[Address]], *, timeout: float,
                 protocol: str = "mlx", job_id: str = "", token: bytes | None = None,
                 knobs: settings.Settings | None = None,
                 listeners: Sequence[socket.socket] = ()) -> None:
        knobs = settings.load() if knobs is None else knobs
        self.rank = rank
        self.size = len(hostfile)
        self.connections = len(hostfile[0])
        self.protocol = protocol
        self._hostfile = hostfile
        self._warm = protocol == "ringcomm" and knobs.tcp_warmup
        self._poll = select.poll()
        self._polled: dict[int, _Conn] = {}  # fd -> connection, for what is registered
        self._spin = knobs.spin_seconds
        self._done: list[Channel] = []
        self._conns: tuple[list[_Conn], list[_Conn]] = ([], [])
        self._control: dict[Side, _Conn] = {}
        self._closed = False
        self._listeners: list[socket.socket] = []  # tcp_setup's, bound until close()
        self._lanes: list = []  # tcp_lanes.TcpLane views for other threads, made on first use
        self._lanes_errors = threading.Lock()  # the lanes' errors read the control connections
        # what transports.direct opens links to non-neighbours with (ringcomm protocol)
        self.direct_identity = (job_id, token) if protocol == "ringcomm" else None
        self._init_idle()
        self._init_control()
        if self.size == 1:
            return
        deadline = time.monotonic() + timeout
        formed = TcpSetup(rank, hostfile, protocol=protocol, job_id=job_id, token=token,
                          warm_up=self._warm, listeners=listeners)
        formed.form(deadline)
        self._listeners = formed.listeners
        for side in (Side.LEFT, Side.RIGHT):
            peer = self.peer(side)
            self._conns[side].extend(_Conn(sock, side, i, peer, addr)
                                     for i, (sock, addr) in enumerate(formed.conns[side]))
            if side in formed.control:
                sock, addr = formed.control[side]
                self._control[side] = _Conn(sock, side, self.connections, peer, addr)
        for c in self._all_conns():
            c.sock.setblocking(False)
        for conns in self._conns:
            for c in conns:
                set_congestion(c.sock, knobs.tcp_congestion)
        for c in self._control.values():
            self._watch(c, _POLLIN)
        self._track_for_exit()
        if self._warm:
            try:
                self._warm_up(deadline)
            except BaseException as e:  # tell the neighbours, as a failed collective does
                if isinstance(e, CommError):
                    e.op = e.op or "init"
                self.abort(e)
                raise

    def _warm_up(self, deadline: float) -> None:
        """ringcomm protocol: ``WARMUP_BYTES`` each way over every data connection before the
        first operation.  Reno on a new connection moves 256 KiB-2 MiB steps at half the
        speed it reaches once the connection has carried a few MiB (docs/performance.md);
        this pays that once, at set-up (~10 ms on 2 local ranks), instead of in the first
        operations."""
        out, into = memoryview(bytes(WARMUP_BYTES)), memoryview(bytearray(WARMUP_BYTES))
        for side in (Side.LEFT, Side.RIGHT):
            for i in range(self.connections):
                self.post_send(side, i, out)
                self.post_recv(side, i, into)
        pending = 4 * self.connections
        while pending:
            pending -= len(self.wait(deadline))

    @property
    def secure(self) -> bool:
        return self.protocol == "ringcomm"

    def _all_conns(self):
        yield from self._conns[Side.LEFT]
        yield from self._conns[Side.RIGHT]
        yield from self._control.values()

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

    def _on_readable(self, c: _Conn) -> None:
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

    def _on_writable(self, c: _Conn) -> None:
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

    def _watch(self, c: _Conn, events: int) -> None:
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

    def local_ranks(self) -> int:
        host = self._hostfile[self.rank][0].host
        return sum(1 for addresses in self._hostfile if addresses[0].host == host)

    def lanes(self, count: int) -> list[Transport] | None:
        """``count`` views of the data connections that other threads drive at once
        (``tcp_lanes``); None while bytes read ahead wait here, which a lane would not see."""
        if self._stash or self._closed:
            return None
        if len(self._lanes) < count:
            from .tcp_lanes import TcpLane
            self._lanes += [TcpLane(self, self._lanes_errors)
                            for _ in range(count - len(self._lanes))]
        return self._lanes[:count]

    def _address(self, rank: int) -> str | None:
        return str(self._hostfile[rank][0]) if 0 <= rank < self.size else None

    def close(self) -> None:
        if self._closed:
            return
        self._say_goodbye()
        self._closed = True
        for c in self._all_conns():
            c.sock.close()
        for listener in self._listeners:
            listener.close()
        for lane in self._lanes:
            lane.close()
        self._polled.clear()

