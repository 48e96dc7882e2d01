"""Direct TCP connections between ranks that are not ring neighbours (ringcomm protocol only).

A rank reaches a non-neighbour over a connection it opens on first use and keeps until the
group closes; each connection carries one direction, opener to acceptor, so that two ranks that
send to each other at once never have to agree on who connects.  The connection is made to the
peer's ring listener (its first hostfile address, bound since set-up) and opens with the ring's
handshake (``transports.handshake``) under the call's deadline, with ``DIRECT_INDEX`` as its
connection index: no ring connection has that index, so a ring's acceptor refuses it (the
opener retries until the peer's set-up is over) and this rank's acceptor thread
(``transports.direct_accept``) refuses everything else.

Data moves in the caller's thread through non-blocking sockets and ``poll()``: no busy-wait,
and no copy (the head and the data go in one ``sendmsg``; receives land in the caller's
buffer).  While it waits, a rank also

- reads ahead what its other direct links carry (``transports.direct_ahead``; a ring call
  does too, ``transports.tcp_idle``), so that ranks that all send first, of any size and over
  any links, complete;
- listens to the ring (``ring``: the TCP transport's control connections,
  ``transports.tcp_control``): a failure notice, or a neighbour whose process is gone,
  ends the wait at once with that error, as it ends a ring wait; and it answers the
  neighbours' liveness probes.

A rank that fails sends an abort notice (``transports.notices``) on the connections it opened,
so a peer waiting for its message raises an error naming the rank that failed first.
"""
from __future__ import annotations

import math
import os
import select
import socket
import struct
import threading
import time
from typing import Callable, Protocol, Sequence

from . import notices
from .arrivals import VET_AFTER
from .direct_accept import DIRECT_INDEX, HANDSHAKE_SECONDS, DirectAcceptor
from .direct_ahead import Ahead, Announced, ReadsAhead
from .errors import CommError, CommTimeoutError, PeerLostError
from .handshake import Hello, Unanswered, connect, job_digest, new_hello
from .hostfile import Address
from .sockets import recv_exactly

__all__ = ["DIRECT_INDEX", "HANDSHAKE_SECONDS", "DirectLinks", "HeadCheck", "Ring"]

RETRY_SECONDS = 0.02       # between attempts while the peer's ring set-up refuses DIRECT_INDEX
NOTICE_SECONDS = 1.0       # to read the rest of an abort notice that came instead of a message
_IN, _OUT = select.POLLIN, select.POLLOUT

HeadCheck = Callable[[bytes], None]  # raises MismatchError when the peer's header differs


class Ring(Protocol):
    """What a direct wait hears from the ring (``transports.tcp_control``)."""

    def control_sockets(self) -> list[socket.socket]: ...

    def hear(self, sock: socket.socket) -> None: ...

    def check_departed(self) -> None: ...


class _Refused(Exception):
    pass


class DirectLinks(DirectAcceptor, ReadsAhead):
    """This rank's direct connections: opened to peers on first use, accepted from them.

    ``ring`` (TCP) is what a wait hears from the ring; ``announced`` reads a message head
    for the read-ahead (both optional: without them a wait does neither)."""

    def __init__(self, rank: int, size: int, addresses: Sequence[Address],
                 listener: socket.socket, *, job_id: str, token: bytes | None,
                 ring: Ring | None = None, announced: Announced | None = None) -> None:
        self.rank, self.size = rank, size
        self._addresses = list(addresses)  # rank -> the address its listener is bound to
        self._listener = listener
        self._job = job_digest(job_id)
        self._token = token
        self._ring, self._announced = ring, announced
        self._heard: CommError | None = None      # a failure the ring reported (see exchange)
        self._out: dict[int, socket.socket] = {}  # opened here: this rank's messages to a peer
        self._in: dict[int, socket.socket] = {}   # accepted: a peer's messages to this rank
        self._ahead: dict[int, Ahead] = {}        # what an accepted link carried unasked
        self._sending: set[int] = set()           # peers with a message half sent
        self._cond = threading.Condition()
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._arrived_r, self._arrived_w = os.pipe()  # the acceptor added a link: wake a wait
        os.set_blocking(self._arrived_r, False)
        os.set_blocking(self._arrived_w, False)
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

        The received head is checked (``check``) before any data byte is taken.  A failure
        heard from the ring ends the wait as soon as it would block: what the links hold
        already (messages a dead peer sent before it died) is still delivered."""
        failure = self._heard_failure()
        if failure is not None and send is not None and send[0] not in self._out:
            raise failure
        out = self._opened(send[0], deadline, op) if send is not None else None
        poll = select.poll()
        sent, total_out = 0, 0
        if out is not None:
            total_out = len(send[1]) + len(send[2])
            poll.register(out, _OUT)
        got, total_in, into = 0, 0, None
        if recv is not None:
            total_in = len(recv[1]) + len(recv[2])
            into = self._in.get(recv[0])
            if into is not None:
                got = self._start_receive(poll, into, recv)
        ring = {sock.fileno(): sock for sock in
                (self._ring.control_sockets() if self._ring is not None else ())}
        for fd in ring:
            poll.register(fd, _IN)
        poll.register(self._arrived_r, _IN)
        ahead: dict[int, int] | None = None  # fd -> peer, once reading ahead
        started = time.monotonic()
        while sent < total_out or got < total_in:
            now = time.monotonic()
            if self._closed:
                raise CommError("the group was closed during a direct send or receive",
                                rank=self.rank, op=op)
            if now >= deadline:
                raise failure or self._timed_out(send, recv, sent, total_out, got, total_in,
                                                 into, op)
            if ahead is None and now - started >= VET_AFTER and self._announced is not None:
                ahead = {}
                self._watch_ahead(poll, ahead, recv)
            if failure is not None:
                wake = now  # take what is there already, then raise it
            elif ahead is None and self._announced is not None:
                wake = min(deadline, started + VET_AFTER)  # then read ahead too
            else:
                wake = deadline
            events = poll.poll(max(min(math.ceil((wake - now) * 1000), 1 << 30), 0))
            if not events and failure is not None:
                raise failure  # nothing more has come: the wait would block
            for fd, _ in events:
                try:
                    if out is not None and fd == out.fileno() and sent < total_out:
                        sent = self._push(out, send, sent, op)
                        if sent == total_out:
                            poll.unregister(out)
                            self._sending.discard(send[0])
                        elif sent:  # a notice must not land inside this message now
                            self._sending.add(send[0])
                    elif into is not None and fd == into.fileno() and got < total_in:
                        got = self._pull(into, recv, got, op)
                        if got == total_in:
                            poll.unregister(into)
                    elif fd in ring:
                        failure = self._hear(poll, ring, fd) or failure
                    elif fd == self._arrived_r:
                        _drain(self._arrived_r)
                        if into is None and recv is not None and recv[0] in self._in:
                            into = self._in[recv[0]]
                            got = self._start_receive(poll, into, recv)
                        if ahead is not None:
                            self._watch_ahead(poll, ahead, recv)
                    elif ahead is not None and fd in ahead:
                        self._read_ahead(poll, ahead, fd, op)
                except PeerLostError as e:  # a link broke: the failure heard first, if any
                    raise (failure or e) from None

    def _heard_failure(self) -> CommError | None:
        """A failure the ring reported to an earlier wait, or a neighbour found gone."""
        if self._heard is None and self._ring is not None:
            try:
                self._ring.check_departed()
            except CommError as e:
                self._heard = e
        return self._heard

    def _start_receive(self, poll: select.poll, into: socket.socket,
                       recv: tuple[int, bytearray, memoryview, HeadCheck]) -> int:
        """What was read ahead from the peer first; then poll its link for the rest."""
        peer, head, buf, check = recv
        stashed = self._ahead.get(peer)
        got = stashed.take(head, buf, check) if stashed is not None else 0
        if got < len(head) + len(buf):
            poll.register(into, _IN)
        return got

    def _hear(self, poll: select.poll, ring: dict[int, socket.socket],
              fd: int) -> CommError | None:
        """A ring control connection spoke: the failure it reports (a notice, or a dead
        neighbour), kept for every later wait, or None."""
        sock = ring[fd]
        try:
            self._ring.hear(sock)
        except CommError as e:
            self._heard = self._heard or e
        if sock.fileno() == -1 or self._heard is not None:  # closed, or heard enough
            poll.unregister(fd)
            del ring[fd]
        return self._heard

    def _timed_out(self, send: tuple | None, recv: tuple | None, sent: int, total_out: int,
                   got: int, total_in: int, into: socket.socket | None,
                   op: str) -> CommTimeoutError:
        if recv is not None and into is None:
            peer = recv[0]
            return CommTimeoutError(f"rank {peer} opened no direct connection to rank "
                                    f"{self.rank} by the deadline: it never reached a send to "
                                    f"it (if rank {peer} is waiting to receive from rank "
                                    f"{self.rank}, {notices.DEADLOCK})", rank=self.rank,
                                    peer=peer, address=self.address(peer), op=op)
        who, what = (send[0], "send to") if sent < total_out else (recv[0], "receive from")
        return CommTimeoutError(
            f"the direct {what} rank {who} did not finish by the deadline ({sent} of "
            f"{total_out} bytes sent, {got} of {total_in} received)", rank=self.rank,
            peer=who, address=self.address(who), op=op)

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
        """The abort notice ``peer`` sent where its message was due (read within
        ``NOTICE_SECONDS`` in all, however slowly it comes)."""
        sock.setblocking(True)
        left = bytearray(first)
        deadline = time.monotonic() + NOTICE_SECONDS

        def read(k: int) -> bytes:
            have = bytes(left[:k])
            del left[:k]
            return have + (recv_exactly(sock, k - len(have), deadline)
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
        for wake in (lambda: self._wake_w.send(b"x"), lambda: os.write(self._arrived_w, b"x")):
            try:
                wake()
            except OSError:
                pass
        self._thread.join(2.0)
        for sock in [*self._out.values(), *self._in.values(), self._wake_r, self._wake_w]:
            sock.close()
        self._out.clear()
        self._in.clear()
        self._ahead.clear()
        if not self._thread.is_alive():  # else it may still write: leave the pipe open
            for fd in (self._arrived_r, self._arrived_w):
                os.close(fd)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
