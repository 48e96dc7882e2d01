"""TCP sockets as a ring transport, set up exactly as MLX's ring backend does.

Set-up (see ``docs/wire-protocol.md``): rank ``r`` accepts one connection on each of its own
hostfile addresses, in order (its LEFT connections), and connects to each address of rank
``r+1``, in order (its RIGHT connections).  Every rank but the last accepts first; the last
connects first.  Connects are tried 5 times, 1, 2, 4, 8 and 16 s apart; every wait is bounded
by the caller's deadline.  No byte is exchanged during set-up.

Data moves through non-blocking sockets driven by one ``selectors`` loop in the caller's
thread: a send or receive is tried at once, and what the kernel cannot take yet waits for
readiness in ``select()`` (which sleeps, so a blocked rank uses no CPU, and Ctrl-C interrupts).
"""
from __future__ import annotations

import errno
import selectors
import socket
import time
from typing import Sequence

from .base import Channel, Kind, Side, Transport
from .errors import CommError, CommTimeoutError, ConfigError, PeerLostError
from .hostfile import Address

CONNECT_RETRY_WAITS = (1.0, 2.0, 4.0, 8.0, 16.0)  # MLX's waits between connect attempts
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Conn:
    """One socket to a neighbour and the (at most one) send and receive posted on it."""

    __slots__ = ("sock", "side", "index", "peer", "address", "send_view", "send_pos",
                 "recv_view", "recv_pos", "events")

    def __init__(self, sock: socket.socket, side: Side, index: int, peer: int,
                 address: Address) -> None:
        self.sock = sock
        self.side = side
        self.index = index
        self.peer = peer
        self.address = address
        self.send_view: memoryview | None = None
        self.send_pos = 0
        self.recv_view: memoryview | None = None
        self.recv_pos = 0
        self.events = 0


class TcpTransport(Transport):
    """A rank's K connections to each ring neighbour over TCP."""

    def __init__(self, rank: int, hostfile: Sequence[Sequence[Address]], *,
                 timeout: float) -> None:
        self.rank = rank
        self.size = len(hostfile)
        self.connections = len(hostfile[0])
        self._sel = selectors.DefaultSelector()
        self._done: list[Channel] = []
        self._conns: tuple[list[_Conn], list[_Conn]] = ([], [])
        self._closed = False
        if self.size == 1:
            return
        deadline = time.monotonic() + timeout
        own, right_addrs = hostfile[rank], hostfile[(rank + 1) % self.size]
        try:
            if self.peer(Side.RIGHT) > rank:
                self._accept_all(own, deadline)
                self._connect_all(right_addrs, deadline)
            else:
                self._connect_all(right_addrs, deadline)
                self._accept_all(own, deadline)
        except BaseException:
            self.close()
            raise
        for conns in self._conns:
            for c in conns:
                c.sock.setblocking(False)

    # -- set-up -------------------------------------------------------------------------------

    def _accept_all(self, own: Sequence[Address], deadline: float) -> None:
        left = self.peer(Side.LEFT)
        for i, addr in enumerate(own):
            with self._listen(addr) as listener:
                sock = self._accept_one(listener, addr, left, deadline)
            self._conns[Side.LEFT].append(_Conn(sock, Side.LEFT, i, left, addr))

    def _listen(self, addr: Address) -> socket.socket:
        family, _, _, _, sockaddr = _resolve(addr, self.rank, passive=True)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # SO_REUSEADDR lets a restarted job rebind at once; no SO_REUSEPORT, so two jobs
            # cannot silently share one port (MLX sets it; see docs/wire-protocol.md).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(0)
        except OSError as e:
            sock.close()
            hint = " (is another job using this hostfile?)" if e.errno == errno.EADDRINUSE else ""
            raise CommError(f"cannot listen on {addr}: {e.strerror or e}{hint}",
                            rank=self.rank, op="init") from e
        return sock

    def _accept_one(self, listener: socket.socket, addr: Address, left: int,
                    deadline: float) -> socket.socket:
        remaining = deadline - time.monotonic()
        listener.settimeout(max(remaining, 1e-3))
        try:
            sock, _ = listener.accept()
        except socket.timeout:
            raise CommTimeoutError(f"no connection arrived on {addr} within the timeout; "
                                   f"is rank {left} running with the same hostfile?",
                                   rank=self.rank, peer=left, op="init") from None
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _connect_all(self, addrs: Sequence[Address], deadline: float) -> None:
        right = self.peer(Side.RIGHT)
        for i, addr in enumerate(addrs):
            sock = self._connect_one(addr, right, deadline)
            self._conns[Side.RIGHT].append(_Conn(sock, Side.RIGHT, i, right, addr))

    def _connect_one(self, addr: Address, right: int, deadline: float) -> socket.socket:
        family, socktype, proto, _, sockaddr = _resolve(addr, self.rank, passive=False)
        error: OSError | None = None
        for wait in (*CONNECT_RETRY_WAITS, None):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock = socket.socket(family, socktype, proto)
            sock.settimeout(remaining)
            try:
                sock.connect(sockaddr)
            except OSError as e:
                sock.close()
                error = e
                if wait is None:
                    raise PeerLostError(
                        f"could not connect to {addr} after {len(CONNECT_RETRY_WAITS) + 1} "
                        f"attempts ({e.strerror or e}); is rank {right} running?",
                        rank=self.rank, peer=right, address=str(addr), op="init") from e
                time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise CommTimeoutError(f"timed out connecting to {addr}"
                               + (f" (last error: {error.strerror or error})" if error else ""),
                               rank=self.rank, peer=right, address=str(addr), op="init")

    # -- data ---------------------------------------------------------------------------------

    def post_send(self, side: Side, conn: int, data: memoryview) -> None:
        c = self._conns[side][conn]
        if c.send_view is not None:
            raise RuntimeError(f"a send is already posted on {side.name}[{conn}]")
        sent = 0
        if len(data):
            try:
                sent = c.sock.send(data)
            except BlockingIOError:
                pass
            except OSError as e:
                raise self._lost(c, "send", e) from e
        if sent == len(data):
            self._done.append(Channel(side, conn, Kind.SEND))
            return
        c.send_view, c.send_pos = data, sent
        self._watch(c, c.events | _WRITE)

    def post_recv(self, side: Side, conn: int, into: memoryview) -> None:
        c = self._conns[side][conn]
        if c.recv_view is not None:
            raise RuntimeError(f"a receive is already posted on {side.name}[{conn}]")
        got = 0
        if len(into):
            try:
                got = c.sock.recv_into(into)
            except BlockingIOError:
                got = -1
            except OSError as e:
                raise self._lost(c, "receive", e) from e
            if got == 0:
                raise self._lost(c, "receive", None)
        if got == len(into):
            self._done.append(Channel(side, conn, Kind.RECV))
            return
        c.recv_view, c.recv_pos = into, max(got, 0)
        self._watch(c, c.events | _READ)

    def wait(self, deadline: float) -> list[Channel]:
        select = self._sel.select
        while not self._done:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise self._timed_out()
            for key, events in select(timeout):
                c: _Conn = key.data
                if events & _READ and c.recv_view is not None:
                    self._on_readable(c)
                if events & _WRITE and c.send_view is not None:
                    self._on_writable(c)
        done, self._done = self._done, []
        return done

    def _on_readable(self, c: _Conn) -> None:
        view = c.recv_view
        try:
            got = c.sock.recv_into(view[c.recv_pos:])
        except BlockingIOError:
            return
        except OSError as e:
            raise self._lost(c, "receive", e) from e
        if got == 0:
            raise self._lost(c, "receive", None)
        c.recv_pos += got
        if c.recv_pos == len(view):
            c.recv_view = None
            self._watch(c, c.events & ~_READ)
            self._done.append(Channel(c.side, c.index, Kind.RECV))

    def _on_writable(self, c: _Conn) -> None:
        view = c.send_view
        try:
            sent = c.sock.send(view[c.send_pos:])
        except BlockingIOError:
            return
        except OSError as e:
            raise self._lost(c, "send", e) from e
        c.send_pos += sent
        if c.send_pos == len(view):
            c.send_view = None
            self._watch(c, c.events & ~_WRITE)
            self._done.append(Channel(c.side, c.index, Kind.SEND))

    def _watch(self, c: _Conn, events: int) -> None:
        if events == c.events:
            return
        if not c.events:
            self._sel.register(c.sock, events, c)
        elif not events:
            self._sel.unregister(c.sock)
        else:
            self._sel.modify(c.sock, events, c)
        c.events = events

    def _lost(self, c: _Conn, what: str, e: OSError | None) -> PeerLostError:
        reason = "peer closed the connection" if e is None else (e.strerror or str(e))
        return PeerLostError(f"connection {c.side.name.lower()}[{c.index}] lost during "
                             f"{what}: {reason}", rank=self.rank, peer=c.peer,
                             address=str(c.address))

    def _timed_out(self) -> CommTimeoutError:
        pending = [(c, k) for conns in self._conns for c in conns
                   for k, v in (("send to", c.send_view), ("receive from", c.recv_view))
                   if v is not None]
        c, what = pending[0] if pending else (None, "progress with")
        detail = "; ".join(f"{k} rank {p.peer} on {p.side.name.lower()}[{p.index}]"
                           for p, k in pending)
        return CommTimeoutError(f"deadline passed while waiting to {detail or what}; "
                                "a peer may be frozen, overloaded or in a different operation",
                                rank=self.rank, peer=c.peer if c else None,
                                address=str(c.address) if c else None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conns in self._conns:
            for c in conns:
                c.sock.close()
        self._sel.close()


def _resolve(addr: Address, rank: int, *, passive: bool) -> tuple:
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as e:
        raise ConfigError(f"rank {rank}: cannot resolve host {addr.host!r} of {addr}: "
                            f"{e.strerror}") from e
    return infos[0]
