"""The rendezvous' frames, and every check of what an outsider can put in them.

A frame is ``length:u32`` + UTF-8 JSON.  Anyone who reaches rank 0's port can send a join
frame, and anyone who answers on that port can send a greeting and a reply: each field is
checked by type and range here, before it is used, so that a bad frame ends in a refusal (rank
0 goes on serving) or a ``RingcommError``, never in a bare Python exception.  ``bool`` is not
an ``int`` here, and a "mac" is compared only once it is ASCII (``hmac.compare_digest`` raises
``TypeError`` on other strings).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import socket
import struct

from .transports import Address, ConfigError, parse_hostfile, settings
from .transports.sockets import recv_exactly

MAX_FRAME = 64 << 10       # a greeting or a join frame
ADDRESS_BYTES = 128        # a reply's hostfile: at most this per rank ("[v6 address]:port")
MAX_TEXT = 4096            # a job id, or the words of an error
_LENGTH = struct.Struct("!I")
_NONCE = re.compile(r"[0-9a-f]{32}")
_MAC = re.compile(r"[0-9a-f]{64}")
HELLO_FIELDS = {"rank", "size", "port", "nonce", "mac"}


INCOMPLETE = object()      # complete_frame's "not all of it yet" (JSON's null is None)


class BadFrame(ValueError):
    """A frame that is not the rendezvous' (a stranger on the port, or not ringcomm)."""


def reply_limit(size: int) -> int:
    """The longest reply a rank of ``size`` accepts: the table grows with the ranks."""
    return MAX_FRAME + ADDRESS_BYTES * size


def mac(token: bytes | None, role: bytes, nonce: str, message: dict) -> str:
    """HMAC-SHA256 of the other side's nonce and ``message`` ("" without a token)."""
    if token is None:
        return ""
    body = json.dumps(message, sort_keys=True).encode()
    return hmac.new(token, role + nonce.encode() + body, hashlib.sha256).hexdigest()


def mac_matches(got: object, want: str) -> bool:
    """Whether ``got`` (from the wire: any JSON value) is the MAC ``want``."""
    return isinstance(got, str) and got.isascii() and hmac.compare_digest(got, want)


def is_int(value: object, lo: int, hi: int) -> bool:
    """An int from ``lo`` to ``hi`` (JSON's true and false are not ints here)."""
    return type(value) is int and lo <= value <= hi


# -- the wire -----------------------------------------------------------------------------------

def send(sock: socket.socket, message: dict, deadline: float, now: float) -> None:
    """``message`` as one frame, the whole send bounded by ``deadline`` (sendall's timeout is
    for the whole call)."""
    body = json.dumps(message).encode()
    sock.settimeout(max(deadline - now, 1e-3))
    sock.sendall(_LENGTH.pack(len(body)) + body)


def recv(sock: socket.socket, deadline: float, limit: int = MAX_FRAME) -> object:
    """One frame's JSON, every receive bounded by ``deadline`` (``TimeoutError``): a peer that
    sends a byte a second cannot stretch the wait.  ``BadFrame`` if it is not JSON."""
    (length,) = _LENGTH.unpack(recv_exactly(sock, _LENGTH.size, deadline))
    if length > limit:
        raise BadFrame(f"a rendezvous frame of {length} bytes (at most {limit})")
    return decode(recv_exactly(sock, length, deadline))


def decode(body: bytes) -> object:
    try:
        return json.loads(body.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: an int too long
        raise BadFrame("a rendezvous frame that is not JSON") from None


def complete_frame(buf: bytearray) -> object:
    """The decoded frame once ``buf`` holds all of it, INCOMPLETE before, BadFrame if it
    cannot be one (too long, more than one frame, not JSON)."""
    if len(buf) < _LENGTH.size:
        return INCOMPLETE
    (length,) = _LENGTH.unpack_from(buf)
    if length > MAX_FRAME or len(buf) > _LENGTH.size + length:
        raise BadFrame("a frame too long, or more than one")
    if len(buf) < _LENGTH.size + length:
        return INCOMPLETE
    return decode(bytes(buf[_LENGTH.size:]))


# -- what each side accepts ---------------------------------------------------------------------

def greeting_nonce(frame: object) -> str:
    """Rank 0's nonce from its greeting ``{"nonce"}``; BadFrame otherwise."""
    if not isinstance(frame, dict) or frame.keys() != {"nonce"} or \
            not isinstance(frame["nonce"], str) or not _NONCE.fullmatch(frame["nonce"]):
        raise BadFrame("a greeting that is not the rendezvous' (no 32-digit hex nonce)")
    return frame["nonce"]


def check_hello(hello: object, nonce: str, size: int, token: bytes | None) -> str | None:
    """Why the join frame ``hello`` cannot join (None: it can).  Its shape and types first,
    then its MAC (nothing a stranger sends past that is believed), then its values."""
    if not isinstance(hello, dict) or not HELLO_FIELDS <= hello.keys() <= HELLO_FIELDS | {"host"}:
        return "not a ringcomm rendezvous message (wrong fields)"
    for field, lo, hi in (("rank", 0, settings.MAX_WORLD_SIZE),
                          ("size", 1, settings.MAX_WORLD_SIZE), ("port", 1, 65535)):
        if not is_int(hello[field], lo, hi):
            return (f"not a ringcomm rendezvous message ({field} is not an integer from {lo} "
                    f"to {hi})")
    if not isinstance(hello["nonce"], str) or not _NONCE.fullmatch(hello["nonce"]):
        return "not a ringcomm rendezvous message (nonce is not 32 hex digits)"
    if "host" in hello and not _is_host_ip(hello["host"]):
        return "not a ringcomm rendezvous message (host is not an IP address to listen on)"
    body = {k: v for k, v in hello.items() if k != "mac"}
    if not mac_matches(hello["mac"], mac(token, b"join", nonce, body)):
        return ("its RINGCOMM_TOKEN (or the token derived from the launcher) differs from "
                "rank 0's (or one side has none)")
    if hello["size"] != size:
        return f"it is in a world of {hello['size']} ranks, rank 0's has {size}"
    if not 0 < hello["rank"] < size:
        return f"rank {hello['rank']} is not a rank of {size} other than 0"
    return None


def _is_host_ip(value: object) -> bool:
    if not isinstance(value, str) or not value.isascii() or len(value) > 45:
        return False
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast or value == "255.255.255.255")


def reply_refusal(reply: dict, size: int) -> tuple[str, int | None, str | None]:
    """(rank 0's words, the rank they blame, "missing" or "claimed") from an error reply,
    each checked: the words are cut to ``MAX_TEXT`` printable characters."""
    words = reply.get("error")
    text = "".join(c if c.isprintable() else "?" for c in words[:MAX_TEXT]) \
        if isinstance(words, str) else "(no reason given)"
    for kind in ("missing", "claimed"):
        if is_int(reply.get(kind), 1, size - 1):
            return text, reply[kind], kind
    return text, None, None


def reply_table(reply: dict, size: int, nonce: str,
                token: bytes | None) -> tuple[list[list[Address]], str] | None:
    """The ring's hostfile and job id from rank 0's reply, None if its MAC is wrong;
    BadFrame if it is not a reply, or its table cannot be this job's ring."""
    if reply.keys() != {"hostfile", "job_id", "mac"}:
        raise BadFrame("a reply that is not the rendezvous' (wrong fields)")
    job = reply["job_id"]
    if not isinstance(job, str) or not 0 < len(job) <= MAX_TEXT:
        raise BadFrame("a reply whose job id is not text")
    body = {k: v for k, v in reply.items() if k != "mac"}
    if not mac_matches(reply["mac"], mac(token, b"table", nonce, body)):
        return None
    try:
        table = parse_hostfile(reply["hostfile"], source="the rendezvous' hostfile")
    except ConfigError as e:
        raise BadFrame(str(e)) from None
    if len(table) != size:
        raise BadFrame(f"the rendezvous' hostfile has {len(table)} ranks, not {size}")
    return table, job
