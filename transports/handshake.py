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
the wrong rank) and goes on listening, so the ring still forms with the right peers.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
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


def mismatch(got: Hello, want: Hello) -> str | None:
    """Why ``got`` is not the peer this side expects (``want``), or None."""
    if got.job != want.job:
        return "it belongs to another job (different RINGCOMM_JOB_ID or hostfile)"
    if got.size != want.size:
        return f"it is in a ring of {got.size} ranks, this one has {want.size}"
    if got.rank != want.rank:
        return f"it is rank {got.rank}, the expected neighbour is rank {want.rank}"
    if got.index != want.index:
        return f"it is connection {got.index}, expected connection {want.index}"
    if got.has_token != want.has_token:
        return ("it has RINGCOMM_TOKEN set and this rank does not" if got.has_token
                else "this rank requires RINGCOMM_TOKEN and the peer has none")
    if got.warm_up != want.warm_up:
        return ("it warms its connections up and this rank does not (RINGCOMM_TCP_WARMUP=0 "
                "here); set it alike on every rank" if got.warm_up else
                "it does not warm its connections up (RINGCOMM_TCP_WARMUP=0 there); set it "
                "alike on every rank")
    return None


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


def connect(sock: socket.socket, mine: Hello, want: Hello, token: bytes | None,
            refused: Callable[[str], Exception]) -> None:
    """The connector's side, on a blocking socket whose timeout bounds every step.

    ``want`` is the HELLO expected back (its nonce is not compared); a refusal raises
    ``refused(reason)``.  Malformed replies raise ValueError or struct.error, a closed
    connection ConnectionError and a slow peer socket.timeout, for the caller to word.
    """
    sock.sendall(mine.pack())
    head = recv_exactly(sock, 4)
    if head == REJECT:
        raise refused(read_reason(sock))
    theirs = parse_hello(head + recv_exactly(sock, HELLO.size - 4))
    why = mismatch(theirs, want)
    if why is not None:
        raise refused(why)
    if not verify(token, b"acceptor", mine, theirs, recv_exactly(sock, MAC_SIZE)):
        raise refused("its proof of RINGCOMM_TOKEN is wrong (a different token?)")
    sock.sendall(mac(token, b"connector", mine, theirs))
    answer = recv_exactly(sock, 1)
    if answer != OK:
        raise refused(read_reason(sock) if answer == REJECT[:1] else "bad answer")
