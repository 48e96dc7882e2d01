"""Forming a TCP ring: every connection to both neighbours, set up exactly as MLX's ring does.

Rank ``r`` accepts one connection on each of its own hostfile addresses, in order (its LEFT
connections), and connects to each address of rank ``r+1``, in order (its RIGHT connections).
Every rank but the last accepts first; the last connects first.  With MLX's protocol no byte
is exchanged during set-up, and connects are tried 6 times, 1, 2, 4, 8 and 16 s apart.
ringcomm's protocol adds a handshake per connection (``transports.handshake``), one control
connection per neighbour (index ``K``) for failure notices, and retries refused connects
quickly until the deadline.  Every wait is bounded by the caller's deadline.  See
``docs/wire-protocol.md``.  Moving bytes over the formed connections is ``transports.tcp``'s job.
"""
from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from typing import Sequence

from . import handshake, notices
from .base import Side
from .errors import CommError, CommTimeoutError, PeerLostError
from .handshake import (HELLO, MAC_SIZE, MAGIC, OK, Hello, job_digest, mac, mismatch,
                        new_hello, parse_hello, reject, verify)
from .hostfile import Address
from .sockets import recv_exactly, resolve

CONNECT_RETRY_WAITS = (1.0, 2.0, 4.0, 8.0, 16.0)  # MLX's waits between connect attempts
FIRST_RETRY_WAIT = 0.02   # ringcomm protocol: retry refused connects quickly, doubling ...
MAX_RETRY_WAIT = 1.0      # ... up to this, until the deadline
HANDSHAKE_SECONDS = 5.0   # a peer that began a handshake must finish it within this
MAX_PENDING = 64          # unverified connections held at once by an acceptor
_READ = selectors.EVENT_READ

Formed = tuple[socket.socket, Address]  # a connected, verified socket and the address it used


class TcpSetup:
    """One rank's set-up: after ``form()``, ``conns[side]`` holds the K data connections to
    that neighbour and ``control[side]`` its control connection (ringcomm protocol), each as
    (blocking socket, address)."""

    def __init__(self, rank: int, hostfile: Sequence[Sequence[Address]], *, protocol: str,
                 job_id: str, token: bytes | None, warm_up: bool) -> None:
        self.rank = rank
        self.size = len(hostfile)
        self.connections = len(hostfile[0])
        self.secure = protocol == "ringcomm"
        self._hostfile = hostfile
        self._job = job_digest(job_id)
        self._token = token
        self._warm = warm_up
        self.conns: tuple[list[Formed], list[Formed]] = ([], [])
        self.control: dict[Side, Formed] = {}

    def peer(self, side: Side) -> int:
        return (self.rank + (1 if side is Side.RIGHT else -1)) % self.size

    def form(self, deadline: float) -> None:
        """Accept from the left and connect to the right, in MLX's order; on failure every
        socket opened so far is closed."""
        own = self._hostfile[self.rank]
        right_addrs = self._hostfile[(self.rank + 1) % self.size]
        for addr in own:  # every name resolves, or ConfigError, before any socket opens
            resolve(addr, self.rank, passive=True)
        for addr in right_addrs:
            resolve(addr, self.rank, passive=False)
        steps = (lambda: self._accept_all(own, deadline),
                 lambda: self._connect_all(right_addrs, deadline))
        try:
            for step in (steps if self.peer(Side.RIGHT) > self.rank else steps[::-1]):
                step()
        except BaseException as e:  # the neighbours already connected learn why (notices)
            notices.send((sock for sock, _ in self.control.values()),
                         notices.encode(e, self.rank))
            self.close()
            raise

    def close(self) -> None:
        for sock, _ in [*self.conns[Side.LEFT], *self.conns[Side.RIGHT], *self.control.values()]:
            sock.close()

    # -- set-up: accepting ------------------------------------------------------------------

    def _accept_all(self, own: Sequence[Address], deadline: float) -> None:
        left = self.peer(Side.LEFT)
        if not self.secure:  # MLX: one address at a time, the first connection wins
            for i, addr in enumerate(own):
                with self._listen(addr) as listener:
                    sock = self._accept_one(listener, addr, left, deadline)
                self.conns[Side.LEFT].append((sock, addr))
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
        self.conns[Side.LEFT].extend((got[i], own[i]) for i in range(k))
        self.control[Side.LEFT] = (got[k], own[0])

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
            self.conns[Side.RIGHT].append((sock, addr))
        if self.secure:
            self.control[Side.RIGHT] = (self._connect_one(addrs[0], right, self.connections,
                                                          deadline), addrs[0])

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


def _doubling(first: float, cap: float):
    wait = first
    while True:
        yield wait
        wait = min(wait * 2, cap)
