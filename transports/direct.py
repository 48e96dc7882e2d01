"""Direct TCP connections between ranks that are not ring neighbours (ringcomm protocol only).

A rank reaches a non-neighbour over a connection it opens on first use and keeps until the
group closes; each connection carries one direction, opener to acceptor, so that two ranks that
send to each other at once never have to agree on who connects.  The connection is made to the
peer's ring listener (its first hostfile address, bound since set-up) and opens with the ring's
handshake (``transports.handshake``) under the call's deadline, with ``DIRECT_INDEX`` as its
connection index: no ring connection has that index, so a ring's acceptor refuses it (the
opener retries until the peer's set-up is over) and this module's acceptor refuses everything
else.  Strays, other jobs, forged HELLOs and wrong MACs are refused as in ``tcp_accept``.

One acceptor thread per rank serves the listener from set-up on, whatever the rank is doing, so
a send to a non-neighbour never waits for that rank to reach a recv (only for the kernel's
buffers, as a neighbour send does).  Handshakes run side by side in that thread, each within
``HANDSHAKE_SECONDS``, at most ``MAX_PENDING`` at once.  Data moves in the caller's thread
through non-blocking sockets and ``poll()``: no busy-wait, and no copy (the head and the data
go in one ``sendmsg``; receives land in the caller's buffer).

A rank that fails sends an abort notice (``transports.notices``) on the connections it opened,
so a peer waiting for its message raises an error naming the rank that failed first.
"""
from __future__ import annotations

import math
import select
import socket
import struct
import threading
import time
from typing import Callable, Sequence

from . import notices
from .errors import CommError, CommTimeoutError, PeerLostError
from .handshake import (HELLO, MAC_SIZE, OK, Hello, Unanswered, connect, identity_differs,
                        job_digest, mac, new_hello, parse_hello, reject, token_differs, verify)
from .hostfile import Address
from .sockets import recv_exactly

DIRECT_INDEX = 0xFFFFFFFF  # the HELLO index of a direct connection (ring ones are 0..K)
HANDSHAKE_SECONDS = 5.0
MAX_PENDING = 64
RETRY_SECONDS = 0.02       # between attempts while the peer's ring set-up refuses DIRECT_INDEX
HEAD_BYTES = 32            # ringcomm.header's operation header
_IN, _OUT = select.POLLIN, select.POLLOUT
_BAD = select.POLLERR | select.POLLHUP | select.POLLNVAL

HeadCheck = Callable[[bytes], None]  # raises MismatchError when the peer's header differs


class _Refused(Exception):
    pass


class _Pending:
    __slots__ = ("sock", "started", "buf", "hello", "mine")

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock, self.started, self.buf = sock, started, bytearray()
        self.hello: Hello | None = None
        self.mine: Hello | None = None


class DirectLinks:
    """This rank's direct connections: opened to peers on first use, accepted from them."""

    def __init__(self, rank: int, size: int, addresses: Sequence[Address],
                 listener: socket.socket, *, job_id: str, token: bytes | None) -> None:
        self.rank, self.size = rank, size
        self._addresses = list(addresses)  # rank -> the address its listener is bound to
        self._listener = listener
        self._job = job_digest(job_id)
        self._token = token
        self._out: dict[int, socket.socket] = {}  # opened here: this rank's messages to a peer
        self._in: dict[int, socket.socket] = {}   # accepted: a peer's messages to this rank
        self._sending: set[int] = set()           # peers with a message half sent
        self._cond = threading.Condition()
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        listener.setblocking(False)
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"ringcomm-direct-accept-{rank}")
        self._thread.start()

    def address(self, rank: int) -> str | None:
        return str(self._addresses[rank]) if 0 <= rank < self.size else None

    # -- moving one message each way ----------------------------------------------------------

    def exchange(self, send: tuple[int, bytes, memoryview] | None,
                 recv: tuple[int, bytearray, memoryview, HeadCheck] | None,
                 deadline: float, op: str) -> None:
        """Send (peer, head, data) and receive (peer, head buffer, into, check) at once.

        The received head is checked (``check``) before any data byte is taken."""
        out = self._opened(send[0], deadline, op) if send is not None else None
        into = self._accepted(recv[0], deadline, op) if recv is not None else None
        poll = select.poll()
        sent, total_out = 0, 0
        if out is not None:
            peer, head, data = send
            total_out = len(head) + len(data)
            self._sending.add(peer)
            poll.register(out, _OUT)
        got, total_in, head_in = 0, 0, None
        if into is not None:
            rpeer, head_in, buf, check = recv
            total_in = len(head_in) + len(buf)
            poll.register(into, _IN)
        while sent < total_out or got < total_in:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                who, what = (send[0], "send to") if sent < total_out else \
                    (recv[0], "receive from")
                raise CommTimeoutError(
                    f"the direct {what} rank {who} did not finish by the deadline ({sent} of "
                    f"{total_out} bytes sent, {got} of {total_in} received)", rank=self.rank,
                    peer=who, address=self.address(who), op=op)
            for fd, ev in poll.poll(min(math.ceil(timeout * 1000), 1 << 30)):
                if out is not None and fd == out.fileno() and sent < total_out:
                    sent = self._push(out, send, sent, op)
                    if sent == total_out:
                        poll.unregister(out)
                        self._sending.discard(send[0])
                elif into is not None and fd == into.fileno() and got < total_in:
                    got = self._pull(into, recv, got, op)
                    if got == total_in:
                        poll.unregister(into)

    def _push(self, sock: socket.socket, send: tuple[int, bytes, memoryview], sent: int,
              op: str) -> int:
        peer, head, data = send
        try:
            if sent < len(head):
                return sent + sock.sendmsg((memoryview(head)[sent:], data))
            return sent + sock.send(data[sent - len(head):])
        except BlockingIOError:
            return sent
        except OSError as e:
            raise self._lost(peer, op, f"sending failed ({e})") from e

    def _pull(self, sock: socket.socket, recv: tuple, got: int, op: str) -> int:
        peer, head, buf, check = recv
        n = len(head)
        try:
            if got < n:
                k = sock.recv_into(memoryview(head)[got:])
            else:
                k = sock.recv_into(buf[got - n:]) if len(buf) else 0
        except BlockingIOError:
            return got
        except OSError as e:
            raise self._lost(peer, op, f"receiving failed ({e})") from e
        if k == 0:
            if got >= 4 and head[:4] == notices.ABORT_MAGIC:
                raise self._notice(sock, bytes(head[:got]), peer)
            raise self._lost(peer, op, "the direct connection closed")
        if got < n <= got + k:
            if head[:4] == notices.ABORT_MAGIC:
                raise self._notice(sock, bytes(head), peer)
            check(bytes(head))
        return got + k

    def _notice(self, sock: socket.socket, first: bytes, peer: int) -> CommError:
        """The abort notice ``peer`` sent where its message was due."""
        sock.setblocking(True)
        left = bytearray(first)

        def read(k: int) -> bytes:
            have = bytes(left[:k])
            del left[:k]
            return have + (recv_exactly(sock, k - len(have), time.monotonic() + 1.0)
                           if len(have) < k else b"")
        try:
            notice = notices.decode(read(notices.ABORT.size), read)
        except (OSError, ValueError, struct.error):
            notice = notices.Notice(notices.GARBAGE, notices.NO_RANK, notices.NO_RANK,
                                    "a broken abort notice")
        return notices.to_error(notice, rank=self.rank, size=self.size, sender=peer,
                                address=self.address)

    def _lost(self, peer: int, op: str, what: str) -> PeerLostError:
        return PeerLostError(f"{what}: rank {peer} (a direct link, not a ring neighbour) "
                             "failed, was killed, or closed its group", rank=self.rank,
                             peer=peer, address=self.address(peer), op=op)

    # -- connections --------------------------------------------------------------------------

    def _opened(self, peer: int, deadline: float, op: str) -> socket.socket:
        sock = self._out.get(peer)
        if sock is not None:
            return sock
        addr = self._addresses[peer]
        mine = new_hello(self._job, self.rank, self.size, DIRECT_INDEX, self._token)
        want = Hello(self._job, peer, self.size, DIRECT_INDEX, self._token is not None, b"")
        last = "no answer"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommTimeoutError(f"could not open a direct connection to rank {peer} by "
                                       f"the deadline (last: {last})", rank=self.rank,
                                       peer=peer, address=str(addr), op=op)
            try:
                sock = socket.create_connection((addr.host, addr.port), timeout=left)
            except ConnectionRefusedError as e:  # its listener is bound from set-up to close
                raise self._lost(peer, op, f"its listener refused the connection ({e})") from e
            except OSError as e:
                last = str(e)
                time.sleep(min(RETRY_SECONDS, max(deadline - time.monotonic(), 0)))
                continue
            try:
                connect(sock, mine, want, self._token, _Refused, deadline)
            except (_Refused, Unanswered, OSError, ValueError, struct.error) as e:
                sock.close()
                last = str(e) or type(e).__name__
                time.sleep(min(RETRY_SECONDS, max(deadline - time.monotonic(), 0)))
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._out[peer] = sock
            return sock

    def _accepted(self, peer: int, deadline: float, op: str) -> socket.socket:
        with self._cond:
            while peer not in self._in:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise CommTimeoutError(f"rank {peer} opened no direct connection to this "
                                           "rank by the deadline", rank=self.rank, peer=peer,
                                           address=self.address(peer), op=op)
                self._cond.wait(left)
            return self._in[peer]

    # -- the acceptor thread ------------------------------------------------------------------

    def _serve(self) -> None:
        poll = select.poll()
        poll.register(self._listener, _IN)
        poll.register(self._wake_r, _IN)
        pending: dict[int, _Pending] = {}
        try:
            while True:
                now = time.monotonic()
                for fd, p in list(pending.items()):
                    if now - p.started > HANDSHAKE_SECONDS:
                        self._drop(poll, pending, fd, None)
                wait = min((p.started + HANDSHAKE_SECONDS - now for p in pending.values()),
                           default=None)
                events = poll.poll(None if wait is None else max(math.ceil(wait * 1000), 1))
                for fd, _ in events:
                    if fd == self._wake_r.fileno():
                        return
                    if fd == self._listener.fileno():
                        self._take(poll, pending)
                    elif fd in pending:
                        self._advance(poll, pending, fd)
        except OSError:
            return  # the listener closed under us: the group is closing
        finally:
            for p in pending.values():
                p.sock.close()

    def _take(self, poll: select.poll, pending: dict[int, _Pending]) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            if len(pending) >= MAX_PENDING:  # evict the oldest that has not verified yet
                waiting = [fd for fd, p in pending.items() if p.hello is None]
                if not waiting:
                    sock.close()
                    continue
                self._drop(poll, pending, min(waiting, key=lambda fd: pending[fd].started), None)
            sock.setblocking(False)
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

    # -- the end ------------------------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        """Tell the peers this rank sends to (where no message is half sent), then close."""
        notices.send((s for peer, s in self._out.items() if peer not in self._sending),
                     notices.encode(error, self.rank))
        self.close()

    def close(self) -> None:
        """Stop the acceptor (before the transport closes the listener) and close every link."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(2.0)
        for sock in [*self._out.values(), *self._in.values(), self._wake_r, self._wake_w]:
            sock.close()
        self._out.clear()
        self._in.clear()
