"""Abort notices: how a failing rank tells the others which rank failed and why.

A notice is ``"RCAB" kind:u8 origin:u32 failed:u32 length:u16`` then ``length`` bytes of
UTF-8 text (big-endian).  ``origin`` is the rank that saw the failure, ``failed`` the rank it
blames (``NO_RANK`` for none) and ``kind`` the error class, so the receiver raises the same
type of error, naming the same ranks.
"""
from __future__ import annotations

import struct
from typing import Callable

from .errors import CommError, CommTimeoutError, MismatchError, PeerLostError

ABORT = struct.Struct("!4sBIIH")
ABORT_MAGIC = b"RCAB"
NO_RANK = 0xFFFFFFFF
ABORT_KINDS: dict[int, type[CommError]] = {0: PeerLostError, 1: CommTimeoutError,
                                           2: MismatchError, 3: PeerLostError}
MAX_TEXT = 60000


def encode(error: BaseException, rank: int) -> bytes:
    """The notice for ``error`` seen on ``rank`` (a relayed error keeps its origin)."""
    kind = next((k for k, cls in ABORT_KINDS.items() if type(error) is cls), 3)
    if isinstance(error, CommError) and error.origin is not None:
        origin, failed = error.origin, error.failed
    else:
        origin = rank
        failed = error.peer if isinstance(error, PeerLostError) and error.peer is not None \
            else NO_RANK
    text = (str(error) or type(error).__name__).encode()[:MAX_TEXT]
    return ABORT.pack(ABORT_MAGIC, kind, origin, failed if failed is not None else NO_RANK,
                      len(text)) + text


def decode(head: bytes, read: Callable[[int], bytes]) -> tuple[int, int, int, str]:
    """(kind, origin, failed, text) from a notice's fixed part and a reader for the rest."""
    magic, kind, origin, failed, length = ABORT.unpack(head)
    if magic != ABORT_MAGIC:
        raise ValueError("not an abort notice")
    return kind, origin, failed, read(length).decode(errors="replace")


def to_error(kind: int, origin: int, failed: int, text: str, *, rank: int,
             address: Callable[[int], str | None]) -> CommError:
    """The error a notice reports, raised on ``rank``; ``address(r)`` describes rank r."""
    blamed = None if failed == NO_RANK else failed
    error = ABORT_KINDS.get(kind, PeerLostError)(
        f"stopped because rank {origin} reported: {text}", rank=rank, peer=blamed,
        address=address(blamed) if blamed is not None else None)
    error.origin, error.failed = origin, failed
    return error
