"""Reductions are MLX's element formulas, including NaN and signed zero."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from ringcomm.dtypes import SUPPORTED_DTYPES, reducer, wire_dtype

SPECIAL = [0.0, -0.0, 1.5, -2.0, math.inf, -math.inf, math.nan]


def mlx_formula(op, local, received):
    """MLX's reduction_ops.h, one element at a time: std::max(local, received) and so on."""
    if op == "max":
        return received if local < received else local
    if op == "min":
        return received if received < local else local
    return local + received


pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf - inf, NaN < x


@pytest.mark.parametrize("dtype", [d for d in SUPPORTED_DTYPES if d.kind == "f" or d.name == "bfloat16"],
                         ids=str)
@pytest.mark.parametrize("op", ["sum", "max", "min"])
def test_float_reductions_follow_mlx_on_special_values(op, dtype):
    pairs = [(a, b) for a in SPECIAL for b in SPECIAL]
    local = np.array([a for a, _ in pairs], dtype)
    received = np.array([b for _, b in pairs], dtype)
    want = np.array([mlx_formula(op, dtype.type(a), dtype.type(b)) for a, b in pairs], dtype)
    reducer(op, dtype)(local, received)
    if op == "sum":  # NaN payloads aside (see the next test), the same values
        assert np.array_equal(local, want, equal_nan=True)
    else:
        assert local.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype,nan_bits", [(np.float16, {0x7D00, 0xFD00}), (ml_dtypes.bfloat16, {0x7FC0})])
def test_half_sums_write_mlx_canonical_nan(dtype, nan_bits):
    local = np.array([math.inf, math.nan, 0.0, -math.nan, 1.0], dtype)
    received = np.array([-math.inf, 0.0, -math.nan, 1.0, 2.0], dtype)
    reducer("sum", np.dtype(dtype))(local, received)
    bits = local.view(np.uint16)
    assert set(bits[:4].tolist()) <= nan_bits and local[4] == 3.0


@pytest.mark.parametrize("op", ["max", "min"])
def test_complex_order_is_real_then_imaginary(op):
    values = [complex(r, i) for r in (-1.0, 0.0, 2.0, math.nan) for i in (-1.0, 0.0, 3.0, math.nan)]
    pairs = [(a, b) for a in values for b in values]
    local = np.array([a for a, _ in pairs], np.complex64)
    received = np.array([b for _, b in pairs], np.complex64)

    def less(a, b):  # MLX's operator< is operator>(b, a)
        return b.real > a.real or (b.real == a.real and b.imag > a.imag)

    want = np.array([(b if less(a, b) else a) if op == "max" else (b if less(b, a) else a)
                     for a, b in pairs], np.complex64)
    reducer(op, np.dtype(np.complex64))(local, received)
    assert local.tobytes() == want.tobytes()


@pytest.mark.parametrize("op,want", [("sum", [False, True, True, True]),
                                     ("max", [False, True, True, True]),
                                     ("min", [False, False, False, True])])
def test_bool_is_logical(op, want):
    local, received = np.array([0, 0, 1, 1], bool), np.array([0, 1, 0, 1], bool)
    reducer(op, np.dtype(bool))(local, received)
    assert local.tolist() == want


def test_integer_sum_wraps():
    local = np.array([127, -128], np.int8)
    reducer("sum", np.dtype(np.int8))(local, np.array([1, -1], np.int8))
    assert local.tolist() == [-128, 127]


def test_wire_dtype():
    assert wire_dtype(np.dtype(">i4")) == np.dtype("<i4")
    with pytest.raises(TypeError, match="complex128 is not supported"):
        wire_dtype(np.complex128)
