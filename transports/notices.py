"""Control messages: abort notices, which tell every rank which rank failed and why, and the
liveness probes that find a frozen rank (``transports.liveness``).

Every message is ``"RCAB" kind:u8 origin:u32 failed:u32 length:u16`` then ``length`` bytes of
UTF-8 text (big-endian).

- An abort notice (kind 0-3: the error class, so the receiver raises the same type): ``origin``
  is the rank that saw the failure, ``failed`` the rank it blames (the dead, frozen or
  disagreeing peer, or ``origin`` itself when it failed on its own, e.g. Ctrl-C), and the text
  is what ``origin`` saw, in its own words.  A rank that stops because of a notice forwards
  that notice unchanged, so however many hops it travels, every rank reads one layer:
  "rank 3: all_sum: rank 1 failed first; rank 0 reported: <text> [peer rank 1 (address)]".
- A probe (kind 16) asks a neighbour whether it is alive; the answer is kind 17.  Both have
  ``failed`` = ``NO_RANK``; a probe has no text, and an answer's text lists the ranks its
  sender is waiting to receive from (decimal, space-separated, maybe none), so that two
  ranks that each wait to receive from the other can say so (``transports.liveness``).
- A goodbye (kind 18, ``failed`` = ``NO_RANK``, no text) goes just before a rank closes its
  group normally, so that a connection closing without one tells its death
  (``transports.tcp_control``).

Every rank a message names is checked against the group's size: a message that names a rank
outside the group, or that is not a control message at all, is a ``MismatchError`` naming
the neighbour that sent it.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Callable, Iterable, NamedTuple

from .errors import CommError, CommTimeoutError, MismatchError, PeerLostError
from .sockets import recv_exactly

ABORT = struct.Struct("!4sBIIH")
ABORT_MAGIC = b"RCAB"
NO_RANK = 0xFFFFFFFF
ABORT_KINDS: dict[int, type[CommError]] = {0: PeerLostError, 1: CommTimeoutError,
                                           2: MismatchError, 3: PeerLostError}
PROBE, ALIVE, BYE = 16, 17, 18
GARBAGE = 255            # what ``read`` makes of bytes that are not a control message
MAX_TEXT = 60000

Address = Callable[[int], "str | None"]  # rank -> its address, for error messages


class Notice(NamedTuple):
    kind: int
    origin: int
    failed: int
    text: str


def blame(error: BaseException, rank: int) -> int:
    """The rank that ``error``, seen on ``rank``, holds responsible: the peer that was lost,
    did not answer or disagreed; else ``rank`` itself (Ctrl-C, a bad setting, a queue pair
    that failed here: a plain ``CommError`` names the peer it was talking to, not a culprit)."""
    if isinstance(error, CommError):
        if error.origin is not None:
            return error.failed if error.failed is not None else error.origin
        if error.peer is not None and isinstance(error, (PeerLostError, CommTimeoutError,
                                                         MismatchError)):
            return error.peer
    return rank


def describe(error: BaseException) -> str:
    """The words a notice carries for ``error``: its own, never a relayed layer."""
    if isinstance(error, CommError):
        return error.reported if error.origin is not None and error.reported else error.what
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def encode(error: BaseException, rank: int) -> bytes:
    """The notice for ``error`` seen on ``rank`` (a relayed error keeps its origin)."""
    kind = next((k for k, cls in ((2, MismatchError), (1, CommTimeoutError),
                                  (0, PeerLostError)) if isinstance(error, cls)), 3)
    relayed = isinstance(error, CommError) and error.origin is not None
    origin = error.origin if relayed else rank  # type: ignore[union-attr]
    return pack(kind, origin, blame(error, rank), describe(error))


def pack(kind: int, origin: int, failed: int | None, text: str = "") -> bytes:
    data = text.encode()[:MAX_TEXT]
    return ABORT.pack(ABORT_MAGIC, kind, origin, NO_RANK if failed is None else failed,
                      len(data)) + data


def probe(rank: int) -> bytes:
    return pack(PROBE, rank, None)


def alive(rank: int, receiving_from: Iterable[int] = ()) -> bytes:
    """The answer to a probe: ``rank`` is alive, waiting to receive from ``receiving_from``."""
    return pack(ALIVE, rank, None, " ".join(map(str, sorted(set(receiving_from)))))


def receiving_from(answer: Notice, size: int) -> frozenset[int]:
    """The ranks a probe's answer says its sender waits to receive from: none when the text
    is not such a list (an older ringcomm sends none), never a rank outside the group."""
    words = answer.text.split()
    if len(words) > size or not all(w.isascii() and w.isdigit() and len(w) < 10
                                    for w in words):
        return frozenset()
    return frozenset(r for r in map(int, words) if r < size)


DEADLOCK = "each waits for the other, a likely deadlock in the program"


def each_waits(rank: int, peer: int) -> str:
    """Words for neighbour ``peer`` waiting to receive from ``rank``, which waits for it."""
    return (f"rank {peer} was itself waiting to receive from rank {rank}: {DEADLOCK} (a recv, "
            "or a send too large for the socket buffers, that the other rank never matches "
            "before its own recv)")


def goodbye(rank: int) -> bytes:
    return pack(BYE, rank, None)


def decode(head: bytes, read: Callable[[int], bytes]) -> Notice:
    """The message from its fixed part and a reader for the rest; ValueError if not one."""
    magic, kind, origin, failed, length = ABORT.unpack(head)
    if magic != ABORT_MAGIC:
        raise ValueError(f"bytes that are not a control message ({head[:8].hex()}...)")
    return Notice(kind, origin, failed, read(length).decode(errors="replace"))


def read(sock: socket.socket, seconds: float = 1.0) -> Notice | None:
    """One message from a control connection, or None when it closed (or broke, or did not
    send the whole message within ``seconds``: a peer that dribbles cannot stretch that).

    The socket is left non-blocking, as the TCP transport keeps its control connections.
    """
    deadline = time.monotonic() + seconds
    try:
        head = recv_exactly(sock, ABORT.size, deadline)
        return decode(head, lambda n: recv_exactly(sock, n, deadline))
    except ValueError as e:
        return Notice(GARBAGE, NO_RANK, NO_RANK, str(e))
    except (OSError, struct.error):
        return None
    finally:
        try:
            sock.setblocking(False)
        except OSError:
            pass


def malformed(notice: Notice, size: int) -> str | None:
    """Why ``notice`` cannot come from a rank of a group of ``size`` ranks, or None."""
    if notice.kind == GARBAGE:
        return notice.text
    if notice.kind not in ABORT_KINDS and notice.kind not in (PROBE, ALIVE, BYE):
        return f"a control message of unknown kind {notice.kind}"
    if not 0 <= notice.origin < size:
        return f"it names rank {notice.origin}, but the group has {size} ranks"
    if notice.kind in ABORT_KINDS and not 0 <= notice.failed < size:
        return f"it blames rank {notice.failed}, but the group has {size} ranks"
    return None


def to_error(notice: Notice, *, rank: int, size: int, sender: int, address: Address,
             receiving_from: Iterable[int] = ()) -> CommError:
    """The error an abort notice from neighbour ``sender`` reports on ``rank`` (a
    MismatchError naming ``sender`` when the message is not a valid notice).

    A notice that blames ``rank`` itself (its origin waited for this rank, or disagreed with
    it) names the origin instead, never "rank <this rank> failed first"; when the origin
    reached its deadline and this rank is waiting to receive from it (``receiving_from``),
    the two wait for each other, and the error says so."""
    why = malformed(notice, size)
    if why is None and notice.kind == BYE:  # it closed its group while this rank needed it
        return PeerLostError(f"rank {notice.origin} closed its group (or its program ended) "
                             "while this rank still needed it", rank=rank, peer=notice.origin,
                             address=address(notice.origin))
    if why is None and notice.kind not in ABORT_KINDS:
        why = f"a {'probe' if notice.kind == PROBE else 'probe answer'} where a notice was due"
    if why is not None:
        return MismatchError(f"rank {sender} sent a control message that this group cannot "
                             f"take ({why}): a peer of another ringcomm version, or not a "
                             "ringcomm peer", rank=rank, peer=sender, address=address(sender))
    kind, origin, failed, text = notice
    if failed != rank:
        error = ABORT_KINDS[kind](f"rank {failed} failed first; rank {origin} reported: {text}",
                                  rank=rank, peer=failed, address=address(failed))
    else:  # about this rank: whom it concerns is the origin
        timed_out = ABORT_KINDS[kind] is CommTimeoutError and origin != rank
        both = "" if DEADLOCK in text else f": {DEADLOCK}"
        what = (f"this rank was waiting to receive from rank {origin}, which reached its "
                f"deadline waiting for this rank{both}; rank {origin} reported: {text}"
                if timed_out and origin in set(receiving_from) else
                f"rank {origin} reached its deadline waiting for this rank; it reported: {text}"
                if timed_out else f"rank {origin} reported: {text}")
        error = ABORT_KINDS[kind](what, rank=rank, peer=origin, address=address(origin))
    error.origin, error.failed, error.reported = origin, failed, text
    return error


def send(socks: Iterable[socket.socket], data: bytes) -> None:
    """Best effort and non-blocking: a failing rank must never wait on a peer."""
    for sock in socks:
        try:
            sock.setblocking(False)
            sock.send(data)
        except OSError:
            pass
