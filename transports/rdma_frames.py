"""The frames of ringcomm's RDMA protocol: what every message on a queue pair carries so that a
receiver notices a gap, a duplicate or damage (``docs/rdma-protocol.md``, "Frames").

Unreliable-connected queue pairs (the only kind Thunderbolt offers) lose a damaged or unlucky
message without a word, and the next message lands in the receive meant for it.  So every
message is one fixed-size frame, ``FRAME_BYTES`` on both sides (Thunderbolt wants a send and
its receive to span the same number of 4 KiB units), whose 64-byte header says which frame it
is (``seq``, data frames only; ``msg``, every message), what its sender has received
(``ack``: every data frame before it; ``held``: a bit per frame after it that arrived ahead
of the gap; ``seen``, ``free``: the credits) and two CRC-32s:
one of the payload, one of the header.  A frame whose header or payload does not match its
checksum is dropped, as if lost, and sent again from the sender's copy.

The checksum is ``zlib.crc32`` (the standard library's: about 3-5 GB/s a core here; measured
against adler32, blake2b and the optional xxhash and crc32c packages in
``docs/rdma-protocol.md``).
"""
from __future__ import annotations

import struct
import zlib

FRAME_BYTES = 64 << 10   # every message, both ways: header + payload (+ unused tail)
HEADER_BYTES = 64
PAYLOAD_BYTES = FRAME_BYTES - HEADER_BYTES
SLOTS = 8                # receives posted per queue pair (the peer's credits)
WINDOW = SLOTS - 1       # data frames sent and not yet acknowledged, at most
SEND_SLOTS = WINDOW + 1  # a send slot per frame of the window, and one for reports alone
REPORT_SLOT = WINDOW     # the send slot of frames that carry only a report (no data)
MAGIC = 0x52434631       # "RCF1"

# flags
DATA = 1      # the payload is stream bytes (else the frame carries only its report)
NAK = 2       # a gap: resend frame ``ack`` now
POKE = 4      # the sender heard nothing for a while: report back at once
BYE = 8       # the sender closes: it wants nothing more

# magic flags seq length msg ack seen free payload_crc held | header_crc (of the 40 before)
_HEADER = struct.Struct("<10I")
_CRC = struct.Struct("<I")
SEQ_MOD = 1 << 32


def newer(a: int, b: int) -> bool:
    """``a`` comes after ``b`` in 32-bit sequence arithmetic."""
    return 0 < (a - b) % SEQ_MOD < SEQ_MOD // 2


def write_header(mem: memoryview, at: int, flags: int, seq: int, length: int, msg: int,
                 ack: int, seen: int, free: int, payload_crc: int, held: int) -> None:
    """Write a frame's header at ``mem[at:]``, its own checksum last."""
    _HEADER.pack_into(mem, at, MAGIC, flags, seq, length, msg, ack, seen, free, payload_crc,
                      held)
    _CRC.pack_into(mem, at + _HEADER.size, zlib.crc32(mem[at:at + _HEADER.size]))


def read_header(mem: memoryview, at: int) -> tuple[int, ...] | None:
    """The fields after ``magic`` (flags seq length msg ack seen free payload_crc held) of the
    header at ``mem[at:]``, or None when it is damaged (checksum, magic, length)."""
    (crc,) = _CRC.unpack_from(mem, at + _HEADER.size)
    if zlib.crc32(mem[at:at + _HEADER.size]) != crc:
        return None
    fields = _HEADER.unpack_from(mem, at)
    if fields[0] != MAGIC or fields[3] > PAYLOAD_BYTES:
        return None
    return fields[1:]


def payload_crc(payload: memoryview) -> int:
    return zlib.crc32(payload)


def stored_payload_crc(mem: memoryview, at: int) -> int:
    """The payload checksum a frame written at ``mem[at:]`` carries (for a resend)."""
    return _HEADER.unpack_from(mem, at)[8]
