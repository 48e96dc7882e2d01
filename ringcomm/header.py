"""The 32-byte header that leads every operation in the ringcomm protocol.

It goes first on every connection an operation sends on, and on connection 0 to both
neighbours, both ways, for a collective (``engine``); the receiver checks it as soon as it is
in, before it touches its buffer, so ranks that call different collectives, dtypes, shapes or
a different number of operations get a ``MismatchError`` naming both sides, never garbage:

    "RCOP" seq:u64 op:u8 dtype:u8 root:u16 count:u64 shape:u32 job:u32   (big-endian)

``seq`` counts the group's collectives; for send/recv it counts the messages on that
connection (sends to one side on this rank, receives from it on the other).  ``count`` is the
number of elements, ``shape`` a CRC-32 of the shape, ``job`` the first 4 bytes of the job id's
digest.  ``root`` is the root of a rooted collective (broadcast, reduce_*, gather, scatter,
broadcast_object; modulo 65536; 0 for every other operation), so ranks that name different
roots fail as any other mismatch instead of timing out.
``vet_next`` judges a header that arrives where this rank is not reading now.
"""
from __future__ import annotations

import functools
import itertools
import math
import struct
import zlib
from typing import NamedTuple

import numpy as np

from .transports import MismatchError

from .dtypes import DTYPE_CODES, SUPPORTED_DTYPES

HEADER = struct.Struct("!4sQBBHQII")
_LEAD, _REST = struct.Struct("!4sQ"), struct.Struct("!BBHQII")  # HEADER: up to seq, and after
MAGIC = b"RCOP"
OPS = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter", "send", "barrier",
       "broadcast", "all_to_all", "split",  # split: its exchange (``split``), told apart
       "reduce_sum", "reduce_max", "reduce_min", "gather", "scatter",  # ``rooted``: 11-15
       "broadcast_object", "all_gather_object")  # ``objects``: 16, 17
ROOTED = frozenset({"broadcast", "reduce_sum", "reduce_max", "reduce_min", "gather", "scatter",
                    "broadcast_object"})  # the operations whose header carries a root
_OP_CODE = {op: i + 1 for i, op in enumerate(OPS)}
_DTYPE_CODE = DTYPE_CODES  # reads no bfloat16 entry: ml_dtypes is imported when one is met
_SEND_CODE = frozenset({_OP_CODE["send"]})
_COLLECTIVE_CODES = frozenset(code for op, code in _OP_CODE.items() if op != "send")


class OpHeader(NamedTuple):
    seq: int
    op: str
    dtype: np.dtype
    shape: tuple[int, ...]
    job: int
    root: int = 0  # rooted operations only (``ROOTED``)

    def pack(self) -> bytes:
        return pack_header(self.seq, self.op, self.dtype, self.shape, self.job, self.root)

    def describe(self, name: str | None = None) -> str:
        """In words; ``name`` is this rank's call (``recv`` travels as a send's header)."""
        return _call(name or self.op, str(self.dtype), math.prod(self.shape),
                     f"shape {self.shape}", self.root, self.seq, self.op)


def pack_header(seq: int, op: str, dtype: np.dtype, shape: tuple[int, ...], job: int,
                root: int = 0) -> bytes:
    """``OpHeader(seq, op, dtype, shape, job, root).pack()``, the per-shape work cached."""
    return _LEAD.pack(MAGIC, seq) + _rest(op, dtype, tuple(shape), job, root)


@functools.lru_cache(maxsize=256)
def _rest(op: str, dtype: np.dtype, shape: tuple[int, ...], job: int, root: int) -> bytes:
    """The header's bytes after ``seq``: the same for every call of one shape."""
    return _REST.pack(_OP_CODE[op], _DTYPE_CODE[dtype], root & 0xFFFF, math.prod(shape),
                      _shape_crc(shape), job)


def check(expected: OpHeader, want: bytes, got: bytes, *, rank: int, peer: int,
          side: str, name: str | None = None, address: str | None = None) -> None:
    """Raise MismatchError unless ``got`` equals ``want``: the packed ``expected``, or the
    header of an earlier call of this rank that went alone (``ringcomm.lone``)."""
    if got == want:
        return
    ours = expected.describe(name) if want == expected.pack() else \
        f"{describe(want, expected.job)} (whose header went alone)"
    raise MismatchError(f"operations differ: this rank called {ours} but "
                        f"its {side} neighbour rank {peer} called "
                        f"{describe(got, expected.job, expected.shape)}",
                        rank=rank, peer=peer, address=address)


def describe(got: bytes, job: int, shape: tuple[int, ...] | None = None) -> str:
    """What a peer's header (the first 32 bytes of ``got``, or fewer) says it called."""
    got = got[:HEADER.size]
    if len(got) < HEADER.size:
        if got != MAGIC[:len(got)]:
            return (f"bytes that are not an operation header ({got.hex()}): a peer on the "
                    "MLX protocol, or one that is out of step")
        return f"the first {len(got)} bytes of an operation header"
    magic, seq, op, dtype, root, count, crc, their_job = HEADER.unpack(got)
    if magic != MAGIC:
        return (f"bytes that are not an operation header ({got[:8].hex()}...): a peer on "
                "the MLX protocol, or one that is out of step")
    if their_job != job:
        return "an operation of another job"
    op_name = OPS[op - 1] if 0 < op <= len(OPS) else f"op #{op}"
    dtype_name = str(SUPPORTED_DTYPES[dtype - 1]) if 0 < dtype <= len(SUPPORTED_DTYPES) \
        else f"dtype #{dtype}"
    theirs = _shape_from_crc(count, crc, shape)
    shape_text = f"shape {theirs}" if theirs is not None else \
        "shape unknown" if shape is None else f"a shape other than {shape}"
    return _call(op_name, dtype_name, count, shape_text, root, seq, op_name)


def _call(name: str, dtype: str, count: int, shape_text: str, root: int, seq: int,
          op: str) -> str:
    """One call in words, the same for this rank's and a peer's, so that the two read side
    by side: "all_sum(float32, 4 elements, shape (4,), call #3)"."""
    counter = "message" if op == "send" else "call"
    root_text = f", root {root}" if op in ROOTED else ""
    return (f"{name}({dtype}, {count} element{'' if count == 1 else 's'}, {shape_text}"
            f"{root_text}, {counter} #{seq})")


def _shape_from_crc(count: int, crc: int,
                    ours: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """A peer's shape, which its header carries as a CRC only, when it is one of the likely
    ones: of one to three axes, this rank's, or this rank's with one axis (a batch, say) or
    order changed.  Only on the error path: a few thousand CRCs at most."""
    candidates: list = [(), *_factorizations(count)]
    if ours is not None:
        candidates += [ours, (1, *ours), (*ours, 1), ours[1:], ours[:-1]]
        for axis, n in enumerate(ours):  # every other axis kept: the count says this one
            rest = math.prod(ours) // n if n else 0
            if rest and count % rest == 0:
                candidates.append((*ours[:axis], count // rest, *ours[axis + 1:]))
        if len(ours) <= 4:
            candidates += itertools.permutations(ours)
    return next((tuple(c) for c in candidates
                 if math.prod(c) == count and _shape_crc(tuple(c)) == crc), None)


def vet_next(got: bytes, *, job: int, call: int, message: int) -> tuple[bool, int | None]:
    """Can ``got`` (the first bytes of what a neighbour sent on a connection this rank is not
    reading now) start what this rank reads there next: collective ``call`` or message
    ``message`` of that neighbour?  (fits, the message's data bytes if it is one).

    Every earlier header on the connection was checked, so the next one is exactly one of
    the two; the fields this rank cannot know yet (which collective, dtype, count, a
    broadcast's root) are left to the check when it gets there; a message's root is 0.  Too
    few bytes to tell fit.
    """
    got = got[:HEADER.size]
    for seq, ops in ((call, _COLLECTIVE_CODES), (message, _SEND_CODE)):
        want = MAGIC + seq.to_bytes(8, "big")
        n = len(got)
        if got[:12] != want[:n] or (n > 12 and got[12] not in ops) or \
                (n > 14 and ops is _SEND_CODE and got[14:16] != b"\0\0"[:n - 14]) or \
                (n > 28 and got[28:32] != job.to_bytes(4, "big")[:n - 28]):
            continue
        if n < HEADER.size or ops is _COLLECTIVE_CODES:
            return True, None
        dtype, count = got[13], int.from_bytes(got[16:24], "big")
        if not 0 < dtype <= len(SUPPORTED_DTYPES):
            continue
        return True, count * SUPPORTED_DTYPES[dtype - 1].itemsize
    return False, None


def _factorizations(count: int) -> list[tuple[int, ...]]:
    """Every shape of one, two or three axes with ``count`` elements (none of more than 64
    divisors' worth of three-axis ones, and no factoring of counts past 2**36)."""
    if count > 1 << 36:
        return [(count,)]
    small = [d for d in range(1, math.isqrt(count) + 1) if count % d == 0]
    divisors = sorted({*small, *(count // d for d in small)})
    shapes: list[tuple[int, ...]] = [(count,), *((d, count // d) for d in divisors)]
    if len(divisors) <= 64:
        shapes += [(a, b, count // a // b) for a in divisors for b in divisors
                   if (count // a) % b == 0]
    return shapes


@functools.lru_cache(maxsize=256)
def _shape_crc(shape: tuple[int, ...]) -> int:
    return zlib.crc32(struct.pack(f"!{len(shape)}q", *shape))
