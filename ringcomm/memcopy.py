"""Copies between a caller's arrays that avoid memcpy's slow case.

glibc's memcpy (2.36 on AMD EPYC: this project's 2-core machine on 2026-12-06) copies 8-256
KiB about ten times slower when the destination starts 1-31 bytes after the source, counted
modulo a 4 KiB page: 256 KiB took 95-124 us instead of 9-20 us
(``docs/perf/memcpy-gap-2core.txt``).  Two arrays allocated one after the other from the heap
are usually 16 bytes apart in that sense (malloc's chunk header after a size that is a whole
number of pages), so an ``all_gather(x, out=out)`` of such arrays met it on every call.
numpy's identity ufunc on the bytes has no such case and copies near memcpy's usual speed
(the 16-core Intel machine, glibc 2.39, has no slow case, and there the ufunc is up to 1.5x
slower from 256 KiB: ``docs/perf/16core/memcpy-gap.txt``).  So copies of ``SLOW_MIN`` to
``LOOK_MIN`` bytes take the ufunc, and copies up to ``SLOW_MAX`` take it only at a gap memcpy
is slow at (looking at the two addresses costs less than the ufunc's lag there).  Larger
copies stay with memcpy, which streams them past the caches without a slow case.
"""
from __future__ import annotations

import numpy as np

PAGE = 4096
SLOW_GAP = 64        # memcpy's slow case: the destination 1-SLOW_GAP bytes after the source,
                     # modulo PAGE (31 seen with 32-byte vectors; 64 covers AVX-512's)
SLOW_MIN = 4 << 10   # below this memcpy has no slow case (it copies with vector moves)
LOOK_MIN = 128 << 10  # from here the addresses are looked at
SLOW_MAX = 1 << 20   # above this memcpy has no slow case either


def copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for 1-D C-contiguous arrays of one dtype and size, bit-exact
    (overlap allowed; the GIL is released)."""
    if SLOW_MIN <= dst.nbytes <= SLOW_MAX and (dst.nbytes < LOOK_MIN or _slow_gap(dst, src)):
        np.positive(src.view(np.uint8), out=dst.view(np.uint8))
    else:
        dst[...] = src


def address(a: np.ndarray) -> int:
    """The address of ``a``'s first byte."""
    return a.__array_interface__["data"][0]


def _slow_gap(dst: np.ndarray, src: np.ndarray) -> bool:
    return 0 < (address(dst) - address(src)) % PAGE <= SLOW_GAP
