"""Hypothesis strategies for collective cases: dtype, shape, seed, layout, values."""
from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from ringcomm.plans import SUB_OP_BYTES
from ringcomm.small import GATHER_BYTES
from tests import p2p_work, workload


@st.composite
def cases(draw, size: int, connections: int, op: str, special: bool = False):
    """(dtype name, shape, seed, strided[, special]) at random sizes and at the schedule's
    edges (where an all-reduce stops gathering, too).

    With ``special``, a fifth item picks special float values (workload.SPECIAL_VALUES):
    "nan" or none for every op but the sums, which get "inf" or none.
    """
    dtype_name = draw(st.sampled_from(sorted(workload.DTYPES)))
    itemsize = workload.DTYPES[dtype_name].itemsize
    per_rank = size if op in ("all_sum", "all_max", "all_min") else 1
    branches = [  # element counts at the schedule's edges
        c for j in range(1, 2 * connections + 2)
        for c in (j * per_rank * SUB_OP_BYTES // itemsize - 1,
                  j * per_rank * SUB_OP_BYTES // itemsize + 1)]
    if per_rank > 1:  # where a small all-reduce stops gathering (ringcomm.small)
        edge = GATHER_BYTES // (size * itemsize)
        branches += [edge, edge + 1]
    kind = draw(st.sampled_from(["shape", "shape", "few", "branch"]))
    if kind == "shape":
        shape = draw(array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
    elif kind == "few":
        shape = (draw(st.integers(0, size + 1)),)
    else:
        shape = (draw(st.sampled_from(branches)),)
    if op == "sum_scatter":  # axis 0 must divide by the group size
        base = shape or (1,)
        shape = (size * base[0], *base[1:])
    strided = bool(shape) and draw(st.booleans())
    case = (dtype_name, tuple(shape), draw(st.integers(0, 2**32 - 1)), strided)
    if not special:
        return case
    sums = op in ("all_sum", "sum_scatter")
    return case + (draw(st.sampled_from(["", "inf" if sums else "nan"])),)


@st.composite
def traffic(draw, min_size: int, max_size: int):
    """(size, [(src, dst) ...], shape, dtype name, seed) for send/recv between random pairs."""
    size = draw(st.integers(min_size, max_size))
    pair = st.tuples(st.integers(0, size - 1), st.integers(0, size - 1)).filter(
        lambda p: p[0] != p[1])
    return (size, draw(st.lists(pair, min_size=1, max_size=6)),
            draw(st.sampled_from([(0,), (3,), (5, 7), (70000,)])),
            draw(st.sampled_from(sorted(p2p_work.DTYPES))), draw(st.integers(0, 1000)))
