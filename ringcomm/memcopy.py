"""Copies between a caller's arrays that avoid memcpy's slow case.

glibc's memcpy (2.36 on AMD EPYC: this project's 2-core machine) copies 8-256 KiB about ten
times slower when the destination starts 1-31 bytes after the source, counted modulo a 4 KiB
page: 256 KiB took 121-126 us instead of 10-22 us (``docs/perf/memcpy-gap-2core.txt``).  Two
arrays allocated one after the other from the heap are usually 16 bytes apart in that sense
(malloc's chunk header after a size that is a whole number of pages), so an
``all_gather(x, out=out)`` of such arrays met it on every call.  numpy's identity ufunc on
the bytes has no such case and runs near memcpy's usual speed up to ``SLOW_MAX``, so copies
of ``SLOW_MIN`` to ``SLOW_MAX`` bytes take it; looking at the addresses first would cost more
(1-2 us each) than it saves.  Larger copies stay with memcpy, which has no slow case there
(it streams past the caches) and outruns the ufunc.
"""
from __future__ import annotations

import numpy as np

SLOW_MIN = 4 << 10   # below this memcpy has no slow case (it copies with vector moves)
SLOW_MAX = 1 << 20   # above this it has none either, and is the faster copy


def copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for 1-D C-contiguous arrays of one dtype and size, bit-exact
    (overlap allowed; the GIL is released)."""
    if SLOW_MIN <= dst.nbytes <= SLOW_MAX:
        np.positive(src.view(np.uint8), out=dst.view(np.uint8))
    else:
        dst[...] = src
