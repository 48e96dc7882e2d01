"""Forming a TCP ring: every connection to both neighbours, set up exactly as MLX's ring does.

Rank ``r`` accepts one connection on each of its own hostfile addresses, in order (its LEFT
connections), and connects to each address of rank ``r+1``, in order (its RIGHT connections).
Every rank but the last accepts first; the last connects first.  With MLX's protocol no byte
is exchanged during set-up, and connects are tried 6 times, 1, 2, 4, 8 and 16 s apart.
ringcomm's protocol adds a handshake per connection (``transports.handshake``), one control
connection per neighbour (index ``K``) for failure notices, and retries refused connects
quickly until the deadline.  See ``docs/wire-protocol.md``.  Moving bytes over the formed
connections is ``transports.tcp``'s job.

What set-up guarantees, whatever arrives on its ports:

- Every rank binds all its listening sockets first, before it accepts or connects, and keeps
  them bound until its group closes (``TcpTransport.close``).  So a second process on the
  same port (another job started on this hostfile) fails at once naming ``host:port``, and
  no port of a live group can be taken over by another job's rank.
- Every wait ends by the deadline, each receive of the handshake included, however slowly a
  peer sends; the only errors are ``RingcommError``s.
- The acceptor verifies connections side by side (``transports.tcp_accept``): strays,
  silent or dribbling connections and forged HELLOs neither hold up nor displace the real
  neighbour, and a flood of them never evicts a connection that is verifying.
- The connector tries again, until the deadline, when a connection is refused or closed
  during the handshake without a reason (an acceptor that is busy drops what it cannot
  verify in time); a refusal with a reason ends set-up at once, naming it.
- Disagreements (a token on one side only, different tokens or job ids, the warm-up): the
  connector always fails at once with the reason.  The acceptor fails at once only where the
  claim cannot be forged by someone who lacks the token (``transports.tcp_accept``: its
  neighbour has a token and it has none, or the warm-up differs, checked after both proofs);
  otherwise it keeps waiting for a peer that can prove itself, and its deadline error names
  what it refused instead of asking whether the neighbour runs.
"""
from __future__ import annotations

import errno
import socket
import struct
import time
from typing import Sequence

from . import handshake, log, notices
from .base import Side
from .errors import CommError, CommTimeoutError, PeerLostError
from .handshake import MLX_HINT, Hello, Unanswered, job_digest, new_hello
from .hostfile import Address
from .sockets import resolve
from .tcp_accept import Acceptor

CONNECT_RETRY_WAITS = (1.0, 2.0, 4.0, 8.0, 16.0)  # MLX's waits between connect attempts
FIRST_RETRY_WAIT = 0.02   # ringcomm protocol: retry refused connects quickly, doubling ...
MAX_RETRY_WAIT = 1.0      # ... up to this, until the deadline

Formed = tuple[socket.socket, Address]  # a connected, verified socket and the peer's address


class TcpSetup:
    """One rank's set-up: after ``form()``, ``conns[side]`` holds the K data connections to
    that neighbour and ``control[side]`` its control connection (ringcomm protocol), each as
    (blocking socket, the neighbour's hostfile address for that connection)."""

    def __init__(self, rank: int, hostfile: Sequence[Sequence[Address]], *, protocol: str,
                 job_id: str, token: bytes | None, warm_up: bool,
                 listeners: Sequence[socket.socket] = ()) -> None:
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
        self.listeners: list[socket.socket] = []  # bound until the group closes
        self._bound = list(listeners)  # listening on own addresses already (ringcomm.split)

    def peer(self, side: Side) -> int:
        return (self.rank + (1 if side is Side.RIGHT else -1)) % self.size

    def form(self, deadline: float) -> None:
        """Bind every own address, then accept from the left and connect to the right, in
        MLX's order; on failure every socket opened so far is closed.  On success the
        listeners stay open (``self.listeners``): the caller closes them with the group."""
        own = self._hostfile[self.rank]
        right_addrs = self._hostfile[(self.rank + 1) % self.size]
        for addr in own:  # every name resolves, or ConfigError, before any socket opens
            resolve(addr, self.rank, passive=True)
        for addr in right_addrs:
            resolve(addr, self.rank, passive=False)
        steps = ((Side.LEFT, lambda: self._accept_all(own, deadline)),
                 (Side.RIGHT, lambda: self._connect_all(right_addrs, deadline)))
        try:
            self.listeners.extend(self._bound)  # the caller's, bound before it published them
            for addr in own[len(self.listeners):]:
                self.listeners.append(self._listen(addr))
            log.logger.debug("rank %d of %d: listening on %s", self.rank, self.size,
                             ", ".join(map(str, own)))
            for side, step in (steps if self.peer(Side.RIGHT) > self.rank else steps[::-1]):
                peer = self.peer(side)
                with log.waiting(self.rank, f"rank {peer} at {self._hostfile[peer][0]}",
                                 deadline):
                    step()
                log.logger.debug("rank %d: connected to rank %d (%s), %d connection(s)",
                                 self.rank, peer, side.name.lower(), self.connections)
        except BaseException as e:  # the neighbours already connected learn why (notices)
            notices.send((sock for sock, _ in self.control.values()),
                         notices.encode(e, self.rank))
            self.close()
            raise

    def close(self) -> None:
        for sock, _ in [*self.conns[Side.LEFT], *self.conns[Side.RIGHT], *self.control.values()]:
            sock.close()
        for sock in self.listeners:
            sock.close()

    # -- set-up: accepting ------------------------------------------------------------------

    def _accept_all(self, own: Sequence[Address], deadline: float) -> None:
        """Accept the left neighbour's connections.  Each is recorded with the neighbour's
        hostfile address (where it listens: what a user knows it by), never with this
        rank's own address it arrived on, so that a lost connection names the right host."""
        left = self.peer(Side.LEFT)
        theirs = self._hostfile[left]
        if not self.secure:  # MLX: one address at a time, the first connection wins
            for i, (addr, listener) in enumerate(zip(own, self.listeners)):
                sock = self._accept_one(listener, addr, left, theirs[i], deadline)
                self.conns[Side.LEFT].append((sock, theirs[i]))
            return
        got = Acceptor(self.rank, self.size, left, self.connections, job=self._job,
                       token=self._token, warm_up=self._warm,
                       left_address=str(theirs[0])).run(self.listeners, own, deadline)
        k = self.connections
        self.conns[Side.LEFT].extend((got[i], theirs[i]) for i in range(k))
        self.control[Side.LEFT] = (got[k], theirs[0])

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
                    left_address: Address, deadline: float) -> socket.socket:
        listener.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            sock, _ = listener.accept()
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except socket.timeout:
            raise CommTimeoutError(f"no connection arrived on {addr} within the timeout; is "
                                   f"rank {left} running with the same hostfile?",
                                   rank=self.rank, peer=left, address=str(left_address),
                                   op="init") from None
        except OSError as e:  # e.g. out of file descriptors
            raise CommError(f"cannot accept a connection on {addr}: {e.strerror or e}",
                            rank=self.rank, peer=left, address=str(left_address),
                            op="init") from e
        return sock

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
        attempts = dropped = 0  # dropped: accepted, then closed without an answer
        for wait in self._retry_waits():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            try:
                sock = socket.socket(family, socktype, proto)
            except OSError as e:  # e.g. out of file descriptors
                raise CommError(f"cannot open a socket to {addr}: {e.strerror or e}",
                                rank=self.rank, peer=right, address=str(addr), op="init") from e
            try:
                sock.settimeout(remaining)
                sock.connect(sockaddr)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.secure:
                    dropped += 1  # until the handshake passes
                    self._handshake_as_connector(sock, addr, right, index, deadline)
                return sock
            except CommError:
                sock.close()
                raise
            except OSError as e:  # refused, unreachable, or closed during the handshake
                sock.close()
                error = e
                if wait is None:
                    raise PeerLostError(
                        f"could not connect to {addr} after {attempts} attempts "
                        f"({e.strerror or e}); is rank {right} running?",
                        rank=self.rank, peer=right, address=str(addr), op="init") from e
                time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
            except BaseException:
                sock.close()
                raise
        raise CommTimeoutError(f"timed out connecting to {addr}"
                               + (f" (last error: {error.strerror or error})" if error else "")
                               + (f"; rank {right} accepted {dropped} connection(s) and closed "
                                  "them without answering the handshake (an MLX rank would: "
                                  f"{MLX_HINT.format(peer=right)})" if dropped else ""),
                               rank=self.rank, peer=right, address=str(addr), op="init")

    def _handshake_as_connector(self, sock: socket.socket, addr: Address, right: int,
                                index: int, deadline: float) -> None:
        """The connector's half; CommError ends set-up, OSError (the connection closed before
        an answer) lets ``_connect_one`` try again."""
        def error(why: str, kind: type[CommError] = CommError) -> CommError:
            return kind(why, rank=self.rank, peer=right, address=str(addr), op="init")
        mine = new_hello(self._job, self.rank, self.size, index, self._token, self._warm)
        try:
            handshake.connect(sock, mine, Hello(self._job, right, self.size, index,
                                                self._token is not None, b"", self._warm),
                              self._token, error, deadline)
        except Unanswered as e:
            raise error(f"rank {right} accepted the connection but sent nothing back by the "
                        "deadline: it does not speak ringcomm's protocol (MLX's ring sends "
                        "nothing during set-up: if it is an MLX process, use protocol='mlx' on "
                        "the ringcomm ranks), is frozen, or is another job's rank whose ring already "
                        "formed on this port" if not e.received else
                        f"the handshake with rank {right} did not finish by the deadline "
                        f"({e.received} bytes came back): the peer is too slow, or not a "
                        f"ringcomm rank ({MLX_HINT.format(peer=right)})",
                        CommTimeoutError) from None
        except (ValueError, struct.error) as e:
            raise error(f"rank {right} does not speak ringcomm's protocol ({e}); "
                        + MLX_HINT.format(peer=right)) from None
        sock.settimeout(None)


def _doubling(first: float, cap: float):
    wait = first
    while True:
        yield wait
        wait = min(wait * 2, cap)
