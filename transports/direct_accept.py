"""The acceptor thread of a rank's direct links (``transports.direct``): verifies every
connection that arrives on the ring listener and hands the verified ones to the rank.

One thread per rank serves the listener from set-up on, whatever the rank is doing, so a send
to a non-neighbour never waits for that rank to reach a recv.  Handshakes run side by side in
that thread, each within ``HANDSHAKE_SECONDS``, at most ``MAX_PENDING`` at once; strays, other
jobs, forged HELLOs and wrong MACs are refused as in ``tcp_accept``.

Only closing the group stops the thread.  An ``accept()`` that fails for a reason that passes
(out of file descriptors or memory for a moment, a connection reset in the backlog, a signal)
is retried after a pause that starts at ``FIRST_PAUSE`` and doubles up to ``MAX_PAUSE``, with
the listener left out of the poll meanwhile (the connection waits in the kernel's backlog),
so that the thread neither dies nor spins.
"""
from __future__ import annotations

import errno
import math
import os
import select
import socket
import struct
import threading
import time

from .handshake import (HELLO, MAC_SIZE, OK, Hello, identity_differs, mac, new_hello,
                        parse_hello, reject, token_differs, verify)

DIRECT_INDEX = 0xFFFFFFFF  # the HELLO index of a direct connection (ring ones are 0..K)
HANDSHAKE_SECONDS = 5.0
MAX_PENDING = 64
FIRST_PAUSE, MAX_PAUSE = 0.01, 0.5  # seconds between attempts after accept() failed
# accept() errors that end the thread: the listener itself is gone (the group is closing)
_LISTENER_GONE = frozenset({errno.EBADF, errno.EINVAL, errno.ENOTSOCK})
_IN = select.POLLIN


class _Pending:
    __slots__ = ("sock", "started", "buf", "hello", "mine")

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock, self.started, self.buf = sock, started, bytearray()
        self.hello: Hello | None = None
        self.mine: Hello | None = None


class DirectAcceptor:
    """The acceptor thread's side of ``DirectLinks`` (a mixin: it fills ``self._in``)."""

    # set by DirectLinks
    rank: int
    size: int
    _job: bytes
    _token: bytes | None
    _listener: socket.socket
    _wake_r: socket.socket         # closing the group wakes the thread: it ends
    _arrived_w: int                # a pipe: a verified link wakes a waiting receive
    _in: dict[int, socket.socket]  # verified links by peer (only this thread adds)
    _cond: threading.Condition
    _closed: bool

    def _serve(self) -> None:
        poll = select.poll()
        poll.register(self._listener, _IN)
        poll.register(self._wake_r, _IN)
        pending: dict[int, _Pending] = {}
        pause, resume = FIRST_PAUSE, None  # after a failed accept(): listen again at resume
        try:
            while True:
                now = time.monotonic()
                for fd, p in list(pending.items()):
                    if now - p.started > HANDSHAKE_SECONDS:
                        self._drop(poll, pending, fd, None)
                if resume is not None and now >= resume:
                    poll.register(self._listener, _IN)
                    resume = None
                wake = [p.started + HANDSHAKE_SECONDS for p in pending.values()]
                if resume is not None:
                    wake.append(resume)
                wait = min(wake, default=None)
                events = poll.poll(None if wait is None else
                                   max(math.ceil((wait - now) * 1000), 1))
                for fd, _ in events:
                    if fd == self._wake_r.fileno():
                        return
                    if fd == self._listener.fileno() and resume is None:
                        if self._take(poll, pending):
                            pause = FIRST_PAUSE
                        else:  # out of descriptors, say: the connection waits in the backlog
                            poll.unregister(self._listener)
                            resume, pause = time.monotonic() + pause, min(pause * 2, MAX_PAUSE)
                    elif fd in pending:
                        self._advance(poll, pending, fd)
        except _ListenerGone:
            return  # the listener closed under us: the group is closing
        finally:
            for p in pending.values():
                p.sock.close()

    def _take(self, poll: select.poll, pending: dict[int, _Pending]) -> bool:
        """Accept what waits on the listener; False when accept() failed for a reason that
        passes (then try again later)."""
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno in _LISTENER_GONE or self._closed:
                    raise _ListenerGone() from e
                if e.errno in (errno.EINTR, errno.ECONNABORTED):
                    continue  # a signal, or a connection reset while in the backlog
                return False  # EMFILE, ENFILE, ENOBUFS, ENOMEM, EPERM, network errors...
            if len(pending) >= MAX_PENDING:  # evict the oldest that has not verified yet
                waiting = [fd for fd, p in pending.items() if p.hello is None]
                if not waiting:
                    sock.close()
                    continue
                self._drop(poll, pending, min(waiting, key=lambda fd: pending[fd].started), None)
            try:
                sock.setblocking(False)
            except OSError:
                sock.close()
                continue
            pending[sock.fileno()] = _Pending(sock, time.monotonic())
            poll.register(sock, _IN)

    def _advance(self, poll: select.poll, pending: dict[int, _Pending], fd: int) -> None:
        p = pending[fd]
        need = HELLO.size if p.hello is None else MAC_SIZE
        try:
            data = p.sock.recv(need - len(p.buf))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return self._drop(poll, pending, fd, None)
        p.buf += data
        if len(p.buf) < need:
            return
        if p.hello is None:
            try:
                hello = parse_hello(bytes(p.buf))
            except (ValueError, struct.error) as e:
                return self._drop(poll, pending, fd, f"not a direct connection: {e}")
            why = self._identity(hello)
            if why is not None:
                return self._drop(poll, pending, fd, why)
            p.hello, p.mine, p.buf = hello, new_hello(self._job, self.rank, self.size,
                                                      DIRECT_INDEX, self._token), bytearray()
            try:
                p.sock.send(p.mine.pack() + mac(self._token, b"acceptor", hello, p.mine))
            except OSError:
                return self._drop(poll, pending, fd, None)
            return
        if not verify(self._token, b"connector", p.hello, p.mine, bytes(p.buf)):
            return self._drop(poll, pending, fd, f"rank {p.hello.rank}'s proof of "
                              "RINGCOMM_TOKEN is wrong")
        if p.hello.rank in self._in:  # only this thread adds to it
            return self._drop(poll, pending, fd, f"rank {p.hello.rank} already has a "
                              f"direct connection to rank {self.rank}")
        poll.unregister(fd)
        del pending[fd]
        try:
            p.sock.send(OK)
            p.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._adopt(p.hello.rank, p.sock)
        except Exception:  # noqa: BLE001 - the opener sees the connection close
            p.sock.close()
            return
        with self._cond:
            self._in[p.hello.rank] = p.sock
            self._cond.notify_all()
        try:
            os.write(self._arrived_w, b"x")  # wakes a wait for this link (transports.direct)
        except OSError:
            pass  # the pipe is full: the waiter is woken already

    def _adopt(self, peer: int, sock: socket.socket) -> None:
        """A verified connection from ``peer``, before receives may use it: nothing to do
        here (``transports.rdma_direct`` sets up a queue pair over it)."""

    def _identity(self, hello: Hello) -> str | None:
        if hello.index != DIRECT_INDEX:
            return (f"rank {hello.rank} sent ring connection {hello.index} to rank {self.rank}, "
                    "whose ring is formed")
        if not 0 <= hello.rank < self.size or hello.rank == self.rank:
            return f"rank {hello.rank} is not another rank of this group of {self.size}"
        want = Hello(self._job, hello.rank, self.size, DIRECT_INDEX, self._token is not None,
                     b"")
        return identity_differs(hello, want, self.rank) or token_differs(hello, want, self.rank)

    def _drop(self, poll: select.poll, pending: dict[int, _Pending], fd: int,
              reason: str | None) -> None:
        p = pending.pop(fd)
        poll.unregister(fd)
        if reason is not None:
            try:
                p.sock.send(reject(reason))
            except OSError:
                pass
        p.sock.close()


class _ListenerGone(Exception):
    pass
