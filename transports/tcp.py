"""TCP sockets as a ring transport, set up exactly as MLX's ring backend does.

Set-up (see ``docs/wire-protocol.md``): rank ``r`` accepts one connection on each of its own
hostfile addresses, in order (its LEFT connections), and connects to each address of rank
``r+1``, in order (its RIGHT connections).  Every rank but the last accepts first; the last
connects first.  Connects are tried 5 times, 1, 2, 4, 8 and 16 s apart; every wait is bounded
by the caller's deadline.  With MLX's protocol no byte is exchanged during set-up; ringcomm's
adds a handshake per connection and then the warm-up exchange (``_warm_up``).

Data moves through non-blocking sockets driven by one ``poll()`` loop in the caller's
thread: a send or receive is tried at once, and what the kernel cannot take yet waits for
readiness.  A wait first polls without sleeping for at most ``SPIN_SECONDS`` (50 us,
``RINGCOMM_SPIN_US``; 0 turns it off), since a ring step's partner usually answers within tens
of microseconds and a sleeping thread takes as long again to wake; past that bound it sleeps in
``poll()`` (so a blocked rank uses no CPU, and Ctrl-C interrupts).
"""
from __future__ import annotations

import errno
import math
import os
import select
import selectors
import socket
import struct
import time
from typing import Sequence

from . import handshake, notices
from .base import Channel, Kind, Side, Transport
from .errors import CommError, CommTimeoutError, PeerLostError
from .handshake import (HELLO, MAC_SIZE, MAGIC, OK, Hello, job_digest, mac, mismatch,
                        new_hello, parse_hello, reject, verify)
from .hostfile import Address
from .posted import Posted
from .sockets import recv_exactly, resolve, set_congestion

CONNECT_RETRY_WAITS = (1.0, 2.0, 4.0, 8.0, 16.0)  # MLX's waits between connect attempts
FIRST_RETRY_WAIT = 0.02   # ringcomm protocol: retry refused connects quickly, doubling ...
MAX_RETRY_WAIT = 1.0      # ... up to this, until the deadline
HANDSHAKE_SECONDS = 5.0   # a peer that began a handshake must finish it within this
MAX_PENDING = 64          # unverified connections held at once by an acceptor
NOTICE_GRACE = 0.1        # how long a broken data connection waits for the abort notice
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_POLLBAD = select.POLLERR | select.POLLHUP | select.POLLNVAL  # reported whatever was asked
_IN_READY, _OUT_READY = _POLLIN | _POLLBAD, _POLLOUT | _POLLBAD
MAX_POLL_MS = 1 << 30     # poll() takes int milliseconds


def _spin_seconds() -> float:
    """The bounded busy-poll before a wait sleeps: ``RINGCOMM_SPIN_US`` microseconds (50)."""
    try:
        return max(float(os.environ.get("RINGCOMM_SPIN_US", "50")), 0.0) * 1e-6
    except ValueError:
        return 50e-6


SPIN_SECONDS = _spin_seconds()
WARMUP_BYTES = 4 << 20   # each way per data connection, ringcomm protocol (see _warm_up)
_yield = getattr(os, "sched_yield", lambda: None)


class _Conn:
    """One socket to a neighbour and the (at most one) send and receive posted on it."""

    __slots__ = ("sock", "fd", "side", "index", "peer", "address", "sending", "receiving",
                 "events", "send_done", "recv_done")

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


class TcpTransport(Transport):
    """A rank's K connections to each ring neighbour over TCP.

    ``protocol="mlx"`` is MLX's bare set-up (no byte before the first operation), for rings
    shared with MLX processes.  ``protocol="ringcomm"`` opens every connection with the
    handshake of ``transports.handshake`` (job id, ranks, optional HMAC with ``token``) and
    adds one control connection per neighbour, which carries abort notices: when any rank
    fails, every other rank learns which one and why, instead of waiting for its deadline.
    """

    def __init__(self, rank: int, hostfile: Sequence[Sequence[Address]], *, timeout: float,
                 protocol: str = "mlx", job_id: str = "", token: bytes | None = None) -> None:
        self.rank = rank
        self.size = len(hostfile)
        self.connections = len(hostfile[0])
        self.protocol = protocol
        self._hostfile = hostfile
        self._job = job_digest(job_id)
        self._token = token
        # ringcomm protocol: warm the data connections up, unless RINGCOMM_TCP_WARMUP=0
        self._warm = protocol == "ringcomm" and os.environ.get("RINGCOMM_TCP_WARMUP",
                                                               "1").strip() != "0"
        self._poll = select.poll()
        self._polled: dict[int, _Conn] = {}  # fd -> connection, for what is registered
        self._spin = SPIN_SECONDS
        self._done: list[Channel] = []
        self._conns: tuple[list[_Conn], list[_Conn]] = ([], [])
        self._control: dict[Side, _Conn] = {}
        self._closed = False
        if self.size == 1:
            return
        deadline = time.monotonic() + timeout
        own, right_addrs = hostfile[rank], hostfile[(rank + 1) % self.size]
        for addr in own:  # every name resolves, or ConfigError, before any socket opens
            resolve(addr, rank, passive=True)
        for addr in right_addrs:
            resolve(addr, rank, passive=False)
        steps = (lambda: self._accept_all(own, deadline),
                 lambda: self._connect_all(right_addrs, deadline))
        try:
            for step in (steps if self.peer(Side.RIGHT) > rank else steps[::-1]):
                step()
        except BaseException:
            self.close()
            raise
        for c in self._all_conns():
            c.sock.setblocking(False)
        for conns in self._conns:
            for c in conns:
                set_congestion(c.sock)
        for c in self._control.values():
            self._watch(c, _POLLIN)
        if self._warm:
            try:
                self._warm_up(deadline)
            except BaseException:
                self.close()
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

    # -- set-up: accepting ------------------------------------------------------------------

    def _accept_all(self, own: Sequence[Address], deadline: float) -> None:
        left = self.peer(Side.LEFT)
        if not self.secure:  # MLX: one address at a time, the first connection wins
            for i, addr in enumerate(own):
                with self._listen(addr) as listener:
                    sock = self._accept_one(listener, addr, left, deadline)
                self._conns[Side.LEFT].append(_Conn(sock, Side.LEFT, i, left, addr))
            return
        listeners = [self._listen(addr) for addr in own]
        try:
            self._accept_verified(listeners, own, left, deadline)
        finally:
            for listener in listeners:
                listener.close()

    def _listen(self, addr: Address) -> socket.socket:
        family, _, _, _, sockaddr = resolve(addr, self.rank, passive=True)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # SO_REUSEADDR lets a restarted job rebind at once; no SO_REUSEPORT, so two jobs
            # cannot silently share one port (MLX sets it; see docs/wire-protocol.md).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(0 if not self.secure else 16)
        except OSError as e:
            sock.close()
            hint = " (is another job using this hostfile?)" if e.errno == errno.EADDRINUSE else ""
            raise CommError(f"cannot listen on {addr}: {e.strerror or e}{hint}",
                            rank=self.rank, op="init") from e
        return sock

    def _accept_one(self, listener: socket.socket, addr: Address, left: int,
                    deadline: float) -> socket.socket:
        listener.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            sock, _ = listener.accept()
        except socket.timeout:
            raise self._no_peer(addr, left) from None
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _no_peer(self, addr: Address, left: int) -> CommTimeoutError:
        return CommTimeoutError(f"no connection arrived on {addr} within the timeout; "
                                f"is rank {left} running with the same hostfile?",
                                rank=self.rank, peer=left, op="init")

    def _accept_verified(self, listeners: list[socket.socket], own: Sequence[Address],
                         left: int, deadline: float) -> None:
        """Accept until every connection from the left neighbour has passed the handshake.

        Unverified connections wait side by side, so a silent or garbled one (a port
        scanner, another job) cannot hold up the right peer; each is dropped when its HELLO
        is wrong, or after HANDSHAKE_SECONDS.
        """
        k = self.connections
        wanted = {i: own[i] for i in range(k)} | {k: own[0]}  # index k: the control connection
        got: dict[int, socket.socket] = {}
        pending: dict[socket.socket, tuple[bytearray, float]] = {}
        sel = selectors.DefaultSelector()
        for listener in listeners:
            listener.setblocking(False)
            sel.register(listener, _READ, None)
        try:
            while len(got) < len(wanted):
                now = time.monotonic()
                if now >= deadline:
                    raise self._no_peer(own[min(set(wanted) - set(got)) % k], left)
                for sock, (_, started) in list(pending.items()):
                    if now - started > HANDSHAKE_SECONDS:
                        sel.unregister(sock)
                        del pending[sock]
                        sock.close()
                for key, _ in sel.select(min(deadline - now, 0.5)):
                    if key.data is None:
                        self._take_pending(key.fileobj, sel, pending)
                        continue
                    sock = key.fileobj
                    buf, _ = pending[sock]
                    hello = self._read_pending(sock, buf)
                    if hello is None:
                        continue
                    sel.unregister(sock)
                    del pending[sock]
                    index = self._verify_connector(sock, hello, left, got, deadline)
                    if index is None:
                        sock.close()
                    else:
                        got[index] = sock
        except BaseException:
            for sock in [*pending, *got.values()]:
                sock.close()
            raise
        finally:
            sel.close()
        for i in range(k):
            self._conns[Side.LEFT].append(_Conn(got[i], Side.LEFT, i, left, own[i]))
        self._control[Side.LEFT] = _Conn(got[k], Side.LEFT, k, left, own[0])

    def _take_pending(self, listener: socket.socket, sel: selectors.BaseSelector,
                      pending: dict) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        if len(pending) >= MAX_PENDING:  # drop the oldest unverified connection
            oldest = next(iter(pending))
            sel.unregister(oldest)
            del pending[oldest]
            oldest.close()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending[sock] = (bytearray(), time.monotonic())
        sel.register(sock, _READ, True)

    def _read_pending(self, sock: socket.socket, buf: bytearray) -> Hello | bytes | None:
        """Read toward a HELLO: the HELLO, or b"" when the bytes are not one, or None for more."""
        try:
            data = sock.recv(HELLO.size - len(buf))
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""
        if not data:
            return b""
        buf += data
        if len(buf) < HELLO.size and buf[:4] == MAGIC[:len(buf[:4])]:
            return None
        try:
            return parse_hello(bytes(buf))
        except (ValueError, struct.error):
            return b""

    def _verify_connector(self, sock: socket.socket, hello: Hello | bytes, left: int,
                          got: dict, deadline: float) -> int | None:
        """Finish the acceptor's half of the handshake; the connection index, or None."""
        if not isinstance(hello, Hello):
            return None
        index = hello.index
        want = Hello(self._job, left, self.size, index, self._token is not None, b"",
                     self._warm)
        why = mismatch(hello, want)
        if why is None and (index > self.connections or index in got):
            why = f"connection {index} is not expected (already have it, or out of range)"
        sock.setblocking(True)
        sock.settimeout(max(min(deadline - time.monotonic(), HANDSHAKE_SECONDS), 1e-3))
        try:
            if why is not None:
                sock.sendall(reject(f"rank {self.rank} refused: {why}"))
                return None
            mine = new_hello(self._job, self.rank, self.size, index, self._token, self._warm)
            sock.sendall(mine.pack() + mac(self._token, b"acceptor", hello, mine))
            their_mac = recv_exactly(sock, MAC_SIZE)
            if not verify(self._token, b"connector", hello, mine, their_mac):
                sock.sendall(reject(f"rank {self.rank} refused: wrong RINGCOMM_TOKEN"))
                return None
            sock.sendall(OK)
        except OSError:
            return None
        return index

    # -- set-up: connecting -----------------------------------------------------------------

    def _connect_all(self, addrs: Sequence[Address], deadline: float) -> None:
        right = self.peer(Side.RIGHT)
        for i, addr in enumerate(addrs):
            sock = self._connect_one(addr, right, i, deadline)
            self._conns[Side.RIGHT].append(_Conn(sock, Side.RIGHT, i, right, addr))
        if self.secure:
            k = self.connections
            self._control[Side.RIGHT] = _Conn(self._connect_one(addrs[0], right, k, deadline),
                                              Side.RIGHT, k, right, addrs[0])

    def _retry_waits(self):
        if not self.secure:
            return iter((*CONNECT_RETRY_WAITS, None))
        return _doubling(FIRST_RETRY_WAIT, MAX_RETRY_WAIT)

    def _connect_one(self, addr: Address, right: int, index: int,
                     deadline: float) -> socket.socket:
        family, socktype, proto, _, sockaddr = resolve(addr, self.rank, passive=False)
        error: OSError | None = None
        attempts = 0
        for wait in self._retry_waits():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            sock = socket.socket(family, socktype, proto)
            sock.settimeout(remaining)
            try:
                sock.connect(sockaddr)
            except OSError as e:
                sock.close()
                error = e
                if wait is None:
                    raise PeerLostError(
                        f"could not connect to {addr} after {attempts} attempts "
                        f"({e.strerror or e}); is rank {right} running?",
                        rank=self.rank, peer=right, address=str(addr), op="init") from e
                time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.secure:
                try:
                    self._handshake_as_connector(sock, addr, right, index, deadline)
                except BaseException:
                    sock.close()
                    raise
            return sock
        raise CommTimeoutError(f"timed out connecting to {addr}"
                               + (f" (last error: {error.strerror or error})" if error else ""),
                               rank=self.rank, peer=right, address=str(addr), op="init")

    def _handshake_as_connector(self, sock: socket.socket, addr: Address, right: int,
                                index: int, deadline: float) -> None:
        def refused(why: str) -> CommError:
            return CommError(f"{addr} refused the connection: {why}", rank=self.rank,
                             peer=right, address=str(addr), op="init")
        mine = new_hello(self._job, self.rank, self.size, index, self._token, self._warm)
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            handshake.connect(sock, mine, Hello(self._job, right, self.size, index,
                                                self._token is not None, b"", self._warm),
                              self._token, refused)
        except socket.timeout:
            raise CommTimeoutError(f"handshake with {addr} timed out", rank=self.rank,
                                   peer=right, address=str(addr), op="init") from None
        except (ValueError, struct.error) as e:
            raise refused(f"it does not speak the ringcomm protocol ({e}); "
                          "for MLX peers use protocol='mlx'") from None
        except ConnectionError as e:
            raise refused(f"the connection closed during the handshake ({e})") from None
        sock.settimeout(None)

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
        total = len(into) + (0 if head is None else len(head))
        got = 0
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
        c.receiving = Posted(into, head)
        c.receiving.advance(max(got, 0))
        self._watch(c, c.events | _POLLIN)

    def wait(self, deadline: float) -> list[Channel]:
        """Completions so far; else poll without sleeping for at most ``self._spin`` seconds,
        then sleep in poll() until something completes or ``deadline`` passes."""
        if not self._done:
            poll = self._poll.poll
            spin_until = time.perf_counter() + self._spin if self._spin else 0.0
            while True:
                if spin_until and time.perf_counter() < spin_until:
                    _yield()  # a peer sharing this core runs now instead of after the spin
                    events = poll(0)
                else:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        raise self._timed_out()
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
                continue
            if c.index == self.connections:
                self._on_notice(c)
                continue
            if ev & _IN_READY and c.receiving is not None:
                self._on_readable(c)
            if ev & _OUT_READY and c.sending is not None:
                self._on_writable(c)

    def _on_readable(self, c: _Conn) -> None:
        p = c.receiving
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

    def _lost(self, c: _Conn, what: str, e: OSError | None) -> CommError:
        """The error for a broken data connection: the neighbour's abort notice if it sent
        one (it does so just before closing), else a PeerLostError blaming the neighbour."""
        control = self._control.get(c.side)
        if control is not None:
            ready = selectors.DefaultSelector()
            try:
                ready.register(control.sock, _READ)
                if ready.select(NOTICE_GRACE):
                    self._on_notice(control)
            except CommError as notice:
                return notice
            finally:
                ready.close()
        reason = "peer closed the connection" if e is None else (e.strerror or str(e))
        return PeerLostError(f"connection {c.side.name.lower()}[{c.index}] lost during "
                             f"{what}: {reason}", rank=self.rank, peer=c.peer,
                             address=str(c.address))

    def _timed_out(self) -> CommTimeoutError:
        pending = [(c, k) for conns in self._conns for c in conns
                   for k, v in (("send to", c.sending), ("receive from", c.receiving))
                   if v is not None]
        c, what = pending[0] if pending else (None, "progress with")
        detail = "; ".join(f"{k} rank {p.peer} on {p.side.name.lower()}[{p.index}]"
                           for p, k in pending)
        return CommTimeoutError(f"deadline passed while waiting to {detail or what}; "
                                "a peer may be frozen, overloaded or in a different operation",
                                rank=self.rank, peer=c.peer if c else None,
                                address=str(c.address) if c else None)

    # -- failure notices (ringcomm protocol) -------------------------------------------------

    def abort(self, error: BaseException) -> None:
        """Tell both neighbours why this rank stops (they pass it on), then close.

        Best effort and non-blocking: a notice that does not fit in the socket buffer is
        dropped, and the neighbour still learns of the failure from the closed connections.
        """
        if self._closed:
            return
        if self.secure:
            notice = notices.encode(error, self.rank)
            for c in self._control.values():
                try:
                    c.sock.send(notice)
                except OSError:
                    pass
        self.close()

    def _on_notice(self, c: _Conn) -> None:
        """Raise the error a neighbour's abort notice reports.

        A control connection that just closes means the neighbour closed its group (or died):
        that alone is no error, since it may have finished everything it had for this rank;
        the data connections report a real loss when an operation needs that neighbour.
        """
        c.sock.settimeout(1.0)
        try:
            kind, origin, failed, text = notices.decode(
                recv_exactly(c.sock, notices.ABORT.size), lambda n: recv_exactly(c.sock, n))
        except (OSError, ValueError, struct.error):
            self._watch(c, 0)
            c.sock.close()
            del self._control[c.side]
            return
        raise notices.to_error(kind, origin, failed, text, rank=self.rank,
                               address=lambda r: str(self._hostfile[r][0]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in self._all_conns():
            c.sock.close()
        self._polled.clear()


def _doubling(first: float, cap: float):
    wait = first
    while True:
        yield wait
        wait = min(wait * 2, cap)
