"""Accepting the left neighbour's connections (ringcomm protocol), every one verified side by
side, so that no stray, slow, silent or forged connection can hold up or displace the real peer.

Each accepted connection waits in a table, without blocking anything else, until it has sent
its HELLO (52 bytes) and, once that HELLO passed every check, its MAC (32 bytes).  It is
*verifying* from the moment its HELLO passed until its MAC is checked.  Limits:

- A connection gets ``HANDSHAKE_SECONDS`` in all, and nothing waits past the deadline.
- At most ``MAX_PENDING`` connections wait at once.  When the table is full, a new connection
  evicts the oldest one still waiting for its HELLO; if every waiting connection is
  verifying, the new one is closed instead (a real connector tries again until its deadline).
  So a flood of unverified connections never evicts a verifying one, and a verified
  connection has left the table.
- Several connections may verify the same index at once (a forged HELLO and the real one):
  the first whose MAC is right wins, and the others are refused.

What is refused, and whether that ends this rank's set-up (see docs/wire-protocol.md):

- Bytes that are not a HELLO, another job's, another ring's or another rank's HELLO, a
  duplicate index, a wrong MAC: refused (REJECT with the reason where a HELLO came), and
  this rank goes on waiting.  Anyone can send these, so none of them may stop this rank.
- Its left neighbour with a RINGCOMM_TOKEN that this rank lacks: this rank fails at once.
  Without a token of its own this rank cannot authenticate anyone: whoever knows the job
  digest could join as the neighbour (and then break the ring), so trusting the claim gives
  nothing away.  With a token here, a HELLO without one proves nothing and is only refused.
- A warm-up disagreement: checked after both MACs, so only the real peer (with a token), or
  one that knows the job digest (without), can report it; both sides then fail at once.

Every refusal is remembered (a few distinct reasons, with counts and a source address), and a
deadline names them instead of asking whether the neighbour is running.
"""
from __future__ import annotations

import selectors
import socket
import time
from typing import Sequence

from .errors import CommError, CommTimeoutError
from .handshake import (HELLO, MAC_SIZE, MAGIC, MLX_HINT, OK, Hello, identity_differs, mac,
                        new_hello, parse_hello, reject, token_differs, verify, warm_up_differs)
from .hostfile import Address

HANDSHAKE_SECONDS = 5.0   # a connection must finish its half of the handshake within this
MAX_PENDING = 64          # connections waiting in the handshake at once
MAX_REASONS = 6           # distinct refusal reasons remembered for the deadline's message
_READ = selectors.EVENT_READ
_SILENT = ("sent nothing (MLX's ring sends nothing during set-up: if rank {left} is an MLX "
           "process, use protocol='mlx' on the ringcomm ranks)")


class _Pending:
    """One accepted connection in the handshake: what it sent so far and where it stands."""

    __slots__ = ("sock", "source", "started", "buf", "hello", "mine")

    def __init__(self, sock: socket.socket, source: str, started: float) -> None:
        self.sock, self.source, self.started = sock, source, started
        self.buf = bytearray()
        self.hello: Hello | None = None  # set once its HELLO passed: verifying
        self.mine: Hello | None = None   # the HELLO this side answered with


class Refusals:
    """What was refused and why, for the message of a deadline."""

    def __init__(self) -> None:
        self._seen: dict[str, list] = {}  # reason -> [count, first source]

    def add(self, reason: str, source: str) -> None:
        entry = self._seen.get(reason)
        if entry is not None:
            entry[0] += 1
        elif len(self._seen) < MAX_REASONS:
            self._seen[reason] = [1, source]

    def __bool__(self) -> bool:
        return bool(self._seen)

    def __str__(self) -> str:
        return "; ".join(f"{reason} (from {source}" + (f", and {n - 1} more" if n > 1 else "")
                         + ")" for reason, (n, source) in self._seen.items())


class Acceptor:
    """Accepts, on ``listeners``, the ``connections + 1`` connections (data, then control)
    of rank ``left``, and verifies each with the handshake of ``transports.handshake``."""

    def __init__(self, rank: int, size: int, left: int, connections: int, *, job: bytes,
                 token: bytes | None, warm_up: bool, left_address: str) -> None:
        self.rank, self.size, self.left, self.k = rank, size, left, connections
        self._job, self._token, self._warm = job, token, warm_up
        self._left_address = left_address
        self.refused = Refusals()
        self._pending: dict[socket.socket, _Pending] = {}  # oldest first
        self._got: dict[int, socket.socket] = {}

    def run(self, listeners: Sequence[socket.socket], own: Sequence[Address],
            deadline: float) -> dict[int, socket.socket]:
        """The verified connections by index (``connections`` is the control connection)."""
        sel = selectors.DefaultSelector()
        try:
            for listener in listeners:
                listener.setblocking(False)
                sel.register(listener, _READ, None)
            while len(self._got) <= self.k:
                now = time.monotonic()
                if now >= deadline:
                    raise self._deadline(own)
                for p in [p for p in self._pending.values()
                          if now - p.started >= HANDSHAKE_SECONDS]:
                    self._drop(p, sel, self._stalled(p))
                wake = min([deadline] + [p.started + HANDSHAKE_SECONDS
                                         for p in self._pending.values()])
                for key, _ in sel.select(max(min(wake - now, 0.5), 0.0)):
                    if key.data is None:
                        self._admit(key.fileobj, sel)
                        continue
                    p = self._pending.get(key.fileobj)
                    if p is not None:  # else dropped earlier in this batch
                        self._advance(p, sel)
            return self._got
        except BaseException:
            for sock in self._got.values():
                sock.close()
            raise
        finally:
            for sock in self._pending:  # never handed out, whatever happened
                sock.close()
            sel.close()

    # -- the table ------------------------------------------------------------------------------

    def _admit(self, listener: socket.socket, sel: selectors.BaseSelector) -> None:
        try:
            sock, peer = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as e:  # e.g. out of file descriptors
            raise CommError(f"cannot accept connections on {_source(listener.getsockname())}: "
                            f"{e.strerror or e}", rank=self.rank, op="init") from e
        source = _source(peer)
        if len(self._pending) >= MAX_PENDING:
            oldest = next((p for p in self._pending.values() if p.hello is None), None)
            if oldest is None:  # every one is verifying: none of them is evicted
                self.refused.add(f"closed at once: {MAX_PENDING} connections were verifying",
                                 source)
                sock.close()
                return
            self._drop(oldest, sel, "evicted before it sent a whole HELLO: "
                                    f"{MAX_PENDING} newer connections were waiting")
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # already reset by its sender
            sock.close()
            return
        self._pending[sock] = _Pending(sock, source, time.monotonic())
        sel.register(sock, _READ, True)

    def _drop(self, p: _Pending, sel: selectors.BaseSelector, why: str | None) -> None:
        sel.unregister(p.sock)
        del self._pending[p.sock]
        p.sock.close()
        if why is not None:
            self.refused.add(why, p.source)

    def _stalled(self, p: _Pending) -> str:
        if p.hello is not None:
            return (f"rank {self.left} sent a HELLO but never its proof of RINGCOMM_TOKEN"
                    if self._token is not None else
                    f"rank {self.left} sent a HELLO but never finished the handshake (its MAC)")
        if not p.buf:
            return _SILENT.format(left=self.left)
        return f"sent {len(p.buf)} bytes of a HELLO and stopped"

    # -- one connection's handshake ----------------------------------------------------------------

    def _advance(self, p: _Pending, sel: selectors.BaseSelector) -> None:
        """Read what ``p`` sent and take the next step of its handshake."""
        need = (HELLO.size if p.hello is None else MAC_SIZE) - len(p.buf)
        try:
            data = p.sock.recv(need)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(p, sel, self._closed(p))
            return
        p.buf += data
        if p.hello is None:
            if not MAGIC.startswith(bytes(p.buf[:len(MAGIC)])):
                self._drop(p, sel, f"sent bytes that are not a ringcomm HELLO (first bytes "
                                   f"{bytes(p.buf[:8])!r}: "
                                   f"{MLX_HINT.format(peer=self.left)})")
            elif len(p.buf) == HELLO.size:
                self._on_hello(p, sel)
        elif len(p.buf) == MAC_SIZE:
            self._on_mac(p, sel)

    def _closed(self, p: _Pending) -> str:
        if p.hello is None:
            return "closed the connection before sending a whole HELLO"
        return (f"rank {self.left} closed the connection instead of proving RINGCOMM_TOKEN "
                "(does it have a different token?)" if self._token is not None else
                f"rank {self.left} closed the connection during the handshake")

    def _on_hello(self, p: _Pending, sel: selectors.BaseSelector) -> None:
        try:
            hello = parse_hello(bytes(p.buf))
        except ValueError as e:  # another version of the protocol
            self._refuse(p, sel, str(e))
            return
        want = self._want(hello.index)
        why = identity_differs(hello, want, self.rank)
        if why is None and (hello.index > self.k or hello.index in self._got):
            why = (f"rank {self.left} sent connection {hello.index} twice, or one out of range "
                   f"(0 to {self.k})")
        if why is not None:
            self._refuse(p, sel, why)
            return
        why = token_differs(hello, want, self.rank)
        if why is not None:
            self._refuse(p, sel, why)
            if self._token is None:  # nothing here to authenticate with: see the docstring
                raise self._disagreement(why)
            return
        p.hello, p.mine = hello, new_hello(self._job, self.rank, self.size, hello.index,
                                           self._token, self._warm)
        p.buf.clear()
        if not self._send(p, p.mine.pack() + mac(self._token, b"acceptor", hello, p.mine)):
            self._drop(p, sel, None)

    def _on_mac(self, p: _Pending, sel: selectors.BaseSelector) -> None:
        hello = p.hello
        if not verify(self._token, b"connector", hello, p.mine, bytes(p.buf)):
            self._refuse(p, sel, f"rank {self.left}'s proof of RINGCOMM_TOKEN is wrong: the "
                                 f"ranks have different tokens, or it is not rank {self.left}")
            return
        why = warm_up_differs(hello, self._want(hello.index), self.rank)
        if why is not None:  # from the real peer (with a token, its MAC says so)
            self._refuse(p, sel, why)
            raise self._disagreement(why)
        if hello.index in self._got:  # another connection verified this index first
            self._refuse(p, sel, f"rank {self.left} sent connection {hello.index} twice")
            return
        if not self._send(p, OK):
            self._drop(p, sel, None)
            return
        sel.unregister(p.sock)
        del self._pending[p.sock]
        p.sock.setblocking(True)
        self._got[hello.index] = p.sock

    def _want(self, index: int) -> Hello:
        return Hello(self._job, self.left, self.size, index, self._token is not None, b"",
                     self._warm)

    def _refuse(self, p: _Pending, sel: selectors.BaseSelector, why: str) -> None:
        self._send(p, reject(why))
        self._drop(p, sel, why)

    @staticmethod
    def _send(p: _Pending, data: bytes) -> bool:
        """Send a few bytes on a fresh non-blocking socket (they fit its buffer), or False."""
        try:
            return p.sock.send(data) == len(data)
        except OSError:
            return False

    # -- errors -------------------------------------------------------------------------------

    def _disagreement(self, why: str) -> CommError:
        return CommError(why, rank=self.rank, peer=self.left, address=self._left_address,
                         op="init")

    def _deadline(self, own: Sequence[Address]) -> CommTimeoutError:
        for p in self._pending.values():
            self.refused.add(self._stalled(p), p.source)
        missing = min(set(range(self.k + 1)) - set(self._got))
        where = own[missing % self.k]
        what = (f"no connection from rank {self.left} passed the handshake on {where} within "
                f"the timeout; it refused or dropped: {self.refused}" if self.refused else
                f"no connection arrived on {where} within the timeout; is rank {self.left} "
                "running with the same hostfile?")
        return CommTimeoutError(what, rank=self.rank, peer=self.left,
                                address=self._left_address, op="init")


def _source(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)
