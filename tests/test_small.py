"""Small all-reduces gather, then fold (``ringcomm.small``), on real rings.

The gather halves the ring steps of an all-reduce of up to ``small.GATHER_BYTES`` gathered. Its
results must be the ring's bytes on every rank (the fold order decides signed zeros, NaN signs
and float rounding), the switch must fall where ``small.fits`` says, and the headers that travel
alone must still go when a rank sleeps in such a call.  (test_collectives draws sizes at the
threshold too; test_mismatch covers these calls against other operations.)
"""
from __future__ import annotations

import numpy as np
import pytest

from ringcomm import small
from tests import small_work, workload


@pytest.mark.parametrize("size,dtype", [(2, "float32"), (3, "int32"), (3, "float32")])
def test_small_all_sum_posts_one_send_per_step_of_the_gather(clusters, size, dtype):
    cluster = clusters.get(size, 1)
    gathers_at_all = size == 2 or dtype == "int32"  # floats keep MLX's order: 2 ranks only
    edge = small.GATHER_BYTES // size // 4 * 4  # the largest 4-byte-element size that gathers
    for nbytes, gathers in ((8, gathers_at_all), (edge, gathers_at_all), (edge + 4, False)):
        for sends, fits in cluster.run(small_work.count_sends, nbytes, dtype):
            assert fits is gathers
            # gather: n-1 steps, one send each; ring: 2(n-1) steps (one sub-reduction below
            # 2 * 256 KiB per rank), one send each
            assert sends == (size - 1 if gathers else 2 * (size - 1)), (nbytes, sends)


@pytest.mark.parametrize("size,dtypes", [(2, sorted(workload.DTYPES)), (3, ["int8", "uint64",
                                                                           "bool"])])
@pytest.mark.parametrize("op", ["all_sum", "all_max", "all_min"])
def test_gathered_bytes_are_the_rings(clusters, size, dtypes, op):
    """The bytes of MLX's ring schedule (tests/test_mlx_interop.py compares that with MLX)."""
    cluster = clusters.get(size, 1)
    for seed, dtype_name in enumerate(dtypes):
        for count in (1, 2, 3, 7, 64):
            results = cluster.run(small_work.through_both_schedules, op, dtype_name, count, seed)
            for rank, (gathered, ring) in enumerate(results):
                assert gathered == ring, (op, dtype_name, count, rank)


def test_headers_alone_go_when_a_rank_sleeps_in_a_small_call(clusters):
    cluster = clusters.get(2, 1)
    calls = 30
    results = cluster.run(small_work.slow_neighbour, calls, 0.004)  # > lone's 1 ms
    want = [float(2 * i + 1) for i in range(calls)]
    assert results == [want, want]


@pytest.mark.parametrize("size", [2, 3])
def test_small_float_folds_raise_no_warnings(clusters, size):
    results = clusters.get(size, 1).run(small_work.quiet_infinities)
    for got, state in results:
        assert np.isnan(got[0]) and np.isinf(got[1]) and np.isinf(got[2]), got
        assert set(state.values()) == {"raise"}, state  # the caller's, kept
