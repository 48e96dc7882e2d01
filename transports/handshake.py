"""ringcomm's own connection set-up: who is on the other end, and may it join this ring?

Every connection of the "ringcomm" protocol opens with (all integers big-endian):

    connector -> acceptor  HELLO   "RCMH" version:u16 flags:u16 job:16s rank:u32 size:u32
                                   index:u32 nonce:16s                        (52 bytes)
    acceptor  -> connector HELLO + MAC(32)          or REJECT "RCMX" len:u16 reason
    connector -> acceptor  MAC(32)
    acceptor  -> connector OK "\\x01"                or REJECT

``job`` is the first 16 bytes of SHA-256 of the job id; ``index`` is the connection's index
(``K`` for the control connection); flag 1 says a token is set.  With a shared secret
(``RINGCOMM_TOKEN``) the MACs are HMAC-SHA256 over both HELLOs, prefixed ``b"acceptor"`` or
``b"connector"``, so each side proves it knows the token without sending it; without one they
are zeros.  An acceptor drops a connection whose HELLO is wrong (random bytes, another job,
the wrong rank) and goes on listening, so the ring still forms with the right peers
(``transports.tcp_accept``).  Every reason names both ranks, so that it reads the same on
either side; a warm-up disagreement is checked only after both MACs, so that with a token
only the real peer can report it.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
from typing import Callable, NamedTuple

from .sockets import read_reason, recv_exactly

MAGIC = b"RCMH"
REJECT = b"RCMX"
VERSION = 2  # 2: data connections carry a warm-up exchange after set-up
FLAG_TOKEN = 1
FLAG_WARM_UP = 2  # the data connections carry the warm-up exchange (transports.tcp)
HELLO = struct.Struct("!4sHH16sIII16s")
MAC_SIZE = 32
OK = b"\x01"
MLX_HINT = "if rank {peer} is an MLX process, use protocol='mlx' on the ringcomm ranks"


class Hello(NamedTuple):
    job: bytes
    rank: int
    size: int
    index: int
    has_token: bool
    nonce: bytes
    warm_up: bool = False

    def pack(self) -> bytes:
        flags = (FLAG_TOKEN if self.has_token else 0) | (FLAG_WARM_UP if self.warm_up else 0)
        return HELLO.pack(MAGIC, VERSION, flags, self.job, self.rank, self.size, self.index,
                          self.nonce)


def job_digest(job_id: str) -> bytes:
    return hashlib.sha256(job_id.encode()).digest()[:16]


def new_hello(job: bytes, rank: int, size: int, index: int, token: bytes | None,
              warm_up: bool = False) -> Hello:
    return Hello(job, rank, size, index, token is not None, os.urandom(16), warm_up)


def parse_hello(data: bytes) -> Hello:
    """Decode a HELLO; ValueError says why bytes are not one (a stray connection)."""
    if data[:4] == REJECT:
        raise ValueError("the peer rejected this connection")
    magic, version, flags, job, rank, size, index, nonce = HELLO.unpack(data)
    if magic != MAGIC:
        raise ValueError(f"not a ringcomm peer (first bytes {data[:4]!r})")
    if version != VERSION:
        raise ValueError(f"protocol version {version}, this side speaks {VERSION}")
    return Hello(job, rank, size, index, bool(flags & FLAG_TOKEN), nonce,
                 bool(flags & FLAG_WARM_UP))


def identity_differs(got: Hello, want: Hello, me: int | None = None) -> str | None:
    """Why ``got`` is not the peer expected (``want``): another job, ring, rank or connection.

    ``me`` is this side's rank; every message names both ranks, so that it reads the same
    on either side of the connection.
    """
    this = "this rank" if me is None else f"rank {me}"
    if got.job != want.job:
        return (f"rank {got.rank} belongs to another job (a different RINGCOMM_JOB_ID or "
                "hostfile)")
    if got.size != want.size:
        return f"rank {got.rank} is in a ring of {got.size} ranks and {this} in one of {want.size}"
    if got.rank != want.rank:
        return f"rank {got.rank} answered where {this} expects rank {want.rank}"
    if got.index != want.index:
        return f"rank {got.rank} sent connection {got.index} where {want.index} was expected"
    return None


def token_differs(got: Hello, want: Hello, me: int | None = None) -> str | None:
    """Why a peer that is who it should be cannot join: one side has a token, the other not."""
    if got.has_token == want.has_token:
        return None
    this = "this rank" if me is None else f"rank {me}"
    has, lacks = (f"rank {got.rank}", this) if got.has_token else (this, f"rank {got.rank}")
    return (f"{has} has RINGCOMM_TOKEN set and {lacks} has none; set the same token on every "
            "rank")


def warm_up_differs(got: Hello, want: Hello, me: int | None = None) -> str | None:
    """Why the data connections cannot be used: one side warms them up, the other not."""
    if got.warm_up == want.warm_up:
        return None
    this = "this rank" if me is None else f"rank {me}"
    warm, cold = (f"rank {got.rank}", this) if got.warm_up else (this, f"rank {got.rank}")
    return (f"{warm} warms its connections up (RINGCOMM_TCP_WARMUP=1) and {cold} does not "
            "(RINGCOMM_TCP_WARMUP=0); set it alike on every rank")


def mismatch(got: Hello, want: Hello, me: int | None = None) -> str | None:
    """Why ``got`` is not the peer this side expects (``want``), or None."""
    return (identity_differs(got, want, me) or token_differs(got, want, me)
            or warm_up_differs(got, want, me))


def mac(token: bytes | None, role: bytes, connector: Hello, acceptor: Hello) -> bytes:
    if token is None:
        return bytes(MAC_SIZE)
    return hmac.new(token, role + connector.pack() + acceptor.pack(), hashlib.sha256).digest()


def verify(token: bytes | None, role: bytes, connector: Hello, acceptor: Hello,
           got: bytes) -> bool:
    return hmac.compare_digest(mac(token, role, connector, acceptor), got)


def reject(reason: str) -> bytes:
    text = reason.encode()[:1000]
    return REJECT + struct.pack("!H", len(text)) + text


class Unanswered(TimeoutError):
    """The deadline passed during the handshake, when ``received`` bytes had come back."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the handshake did not finish by the deadline ({received} bytes "
                         "came back)")
        self.received = received


def connect(sock: socket.socket, mine: Hello, want: Hello, token: bytes | None,
            refused: Callable[[str], Exception], deadline: float | None = None) -> None:
    """The connector's side, on a blocking socket; every receive ends by ``deadline`` (default:
    the socket's timeout from now), however slowly the peer sends.

    ``want`` is the HELLO expected back (its nonce is not compared); a refusal, or an answer
    from the wrong peer, raises ``refused(reason)``.  The deadline raises ``Unanswered``;
    bytes that are not this protocol ValueError or struct.error, and a connection that closes
    before any answer ConnectionError (the caller may try again: a busy acceptor drops what
    it cannot verify in time).  A first byte or four that cannot start a HELLO or a refusal
    (an MLX rank's data) is a ValueError at once, before the peer can close or go quiet.

    A warm-up disagreement is found after both proofs, so that each side knows it comes from
    the real peer (with a token) and both refuse at once.
    """
    if deadline is None:
        deadline = time.monotonic() + (sock.gettimeout() or 0.0)
    received = 0

    def take(n: int) -> bytes:
        nonlocal received
        try:
            data = recv_exactly(sock, n, deadline)
        except TimeoutError:
            raise Unanswered(received) from None
        received += n
        return data

    sock.settimeout(max(deadline - time.monotonic(), 1e-3))
    sock.sendall(mine.pack())
    head = take(1)
    if head != MAGIC[:1]:  # REJECT starts alike: anything else is not this protocol, at once
        raise ValueError(f"it sent {head!r} where a ringcomm HELLO starts")
    head += take(3)
    if head == REJECT:
        raise refused(f"rank {want.rank} refused the connection: {read_reason(sock, deadline)}")
    if head != MAGIC:
        raise ValueError(f"it sent {head!r} where a ringcomm HELLO starts")
    theirs = parse_hello(head + take(HELLO.size - 4))
    why = identity_differs(theirs, want, mine.rank) or token_differs(theirs, want, mine.rank)
    if why is not None:
        raise refused(why)
    if not verify(token, b"acceptor", mine, theirs, take(MAC_SIZE)):
        raise refused(f"rank {want.rank}'s proof of RINGCOMM_TOKEN is wrong: the ranks have "
                      f"different tokens, or it is not rank {want.rank}")
    sock.sendall(mac(token, b"connector", mine, theirs))
    late = warm_up_differs(theirs, want, mine.rank)
    answer = take(1)
    if late is not None:  # the acceptor refuses too, having checked this side's proof
        raise refused(late)
    if answer == OK:
        return
    if answer + take(3) == REJECT:
        raise refused(f"rank {want.rank} refused the connection: {read_reason(sock, deadline)}")
    raise ValueError(f"answer {answer!r} is neither OK nor a refusal")
