"""The 32-byte header that leads every operation in the ringcomm protocol.

It goes first on every connection an operation sends on, and the receiver checks it before
it touches its buffer, so ranks that call different collectives, dtypes, shapes or a
different number of operations get a ``MismatchError`` naming both sides, never garbage:

    "RCOP" seq:u64 op:u8 dtype:u8 pad:u16 count:u64 shape:u32 job:u32   (big-endian)

``seq`` counts the group's collectives; for send/recv it counts the messages on that
connection (sends to one side on this rank, receives from it on the other).  ``count`` is the
number of elements, ``shape`` a CRC-32 of the shape, ``job`` the first 4 bytes of the job id's
digest.
"""
from __future__ import annotations

import functools
import math
import struct
import zlib
from typing import NamedTuple

import numpy as np

from .transports import MismatchError

from .dtypes import DTYPE_CODES, SUPPORTED_DTYPES

HEADER = struct.Struct("!4sQBBxxQII")
MAGIC = b"RCOP"
OPS = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter", "send", "barrier",
       "broadcast", "all_to_all")
_OP_CODE = {op: i + 1 for i, op in enumerate(OPS)}
_DTYPE_CODE = DTYPE_CODES  # reads no bfloat16 entry: ml_dtypes is imported when one is met


class OpHeader(NamedTuple):
    seq: int
    op: str
    dtype: np.dtype
    shape: tuple[int, ...]
    job: int

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, self.seq, _OP_CODE[self.op], _DTYPE_CODE[self.dtype],
                           math.prod(self.shape), _shape_crc(self.shape), self.job)

    def describe(self) -> str:
        return f"{self.op}({self.dtype}, shape {self.shape}, call #{self.seq})"


def pack_header(seq: int, op: str, dtype: np.dtype, shape: tuple[int, ...], job: int) -> bytes:
    """``OpHeader(seq, op, dtype, shape, job).pack()``, with the per-shape work cached."""
    return HEADER.pack(MAGIC, seq, *_fields(op, dtype, tuple(shape)), job)


@functools.lru_cache(maxsize=256)
def _fields(op: str, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    return _OP_CODE[op], _DTYPE_CODE[dtype], math.prod(shape), _shape_crc(shape)


def check(expected: OpHeader, want: bytes, got: bytes, *, rank: int, peer: int,
          side: str) -> None:
    """Raise MismatchError unless ``got`` equals ``want``, the packed ``expected``."""
    if got == want:
        return
    magic, seq, op, dtype, count, shape, job = HEADER.unpack(got)
    if magic != MAGIC:
        theirs = (f"bytes that are not an operation header ({got[:8].hex()}...): a peer on "
                  "the MLX protocol, or one that is out of step")
    elif job != expected.job:
        theirs = "an operation of another job"
    else:
        op_name = OPS[op - 1] if 0 < op <= len(OPS) else f"op #{op}"
        dtype_name = str(SUPPORTED_DTYPES[dtype - 1]) if 0 < dtype <= len(SUPPORTED_DTYPES) \
            else f"dtype #{dtype}"
        same_count = count == math.prod(expected.shape)
        shape_text = "a different shape with as many elements" if same_count and \
            shape != _shape_crc(expected.shape) else f"{count} elements"
        theirs = f"{op_name}({dtype_name}, {shape_text}, call #{seq})"
    raise MismatchError(f"operations differ: this rank called {expected.describe()} but its "
                        f"{side} neighbour rank {peer} called {theirs}", rank=rank, peer=peer)


@functools.lru_cache(maxsize=256)
def _shape_crc(shape: tuple[int, ...]) -> int:
    return zlib.crc32(struct.pack(f"!{len(shape)}q", *shape))
