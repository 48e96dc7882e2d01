"""memcopy.copy gives the bytes of np.copyto: for every gap between the arrays around
memcpy's slow case (1-31 bytes after the source, mod a page), sizes in each of its ranges
(assignment, the ufunc, the ufunc at a slow gap only, assignment), NaN payloads, bool and
bfloat16, and overlapping arrays."""
import ml_dtypes
import numpy as np
import pytest

from ringcomm import memcopy

PAGE = 4096
GAPS = [0, 1, 8, 16, 31, 32, 63, 64, 65, 2048, 4095]


def _placed(src: np.ndarray, gap: int) -> np.ndarray:
    """An empty array like ``src`` whose first byte is ``gap`` bytes (mod a page) after it."""
    room = np.zeros(src.nbytes + 2 * PAGE, np.uint8)
    at = (memcopy.address(src) - memcopy.address(room) + gap) % PAGE
    return room[at:at + src.nbytes].view(src.dtype)


@pytest.mark.parametrize("gap", GAPS)
@pytest.mark.parametrize("count", [3, 1024, 70001, 300001])
@pytest.mark.parametrize("dtype", [np.float32, np.bool_, ml_dtypes.bfloat16, np.complex64])
def test_copy_gives_the_bytes_of_copyto(gap: int, count: int, dtype) -> None:
    rng = np.random.default_rng(gap * 7 + count)
    raw = rng.integers(0, 256, count * np.dtype(dtype).itemsize, dtype=np.uint8)
    if dtype == np.bool_:
        raw &= 1
    src = raw.view(dtype)
    dst = _placed(src, gap)
    assert (memcopy.address(dst) - memcopy.address(src)) % PAGE == gap
    memcopy.copy(dst, src)
    assert dst.view(np.uint8).tobytes() == raw.tobytes()  # NaN payloads and all


@pytest.mark.parametrize("shift", [1, 4, 16])
def test_copy_between_overlapping_views(shift: int) -> None:
    buf = np.arange(20000, dtype=np.float32)
    want = buf[:10000].copy()
    memcopy.copy(buf[shift:shift + 10000], buf[:10000])
    assert np.array_equal(buf[shift:shift + 10000], want)


@pytest.mark.parametrize("gap, slow", [(0, False), (1, True), (16, True), (31, True),
                                       (64, True), (65, False), (4095, False)])
def test_the_slow_gaps_are_told_apart(gap: int, slow: bool) -> None:
    src = np.zeros(memcopy.LOOK_MIN, np.uint8)
    assert memcopy._slow_gap(_placed(src, gap), src) is slow
