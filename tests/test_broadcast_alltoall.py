"""broadcast from every root and all_to_all on real localhost rings, against numpy; their
MLX gradients."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests import p2p_work as w

SHAPES = [(0,), (1,), (12,), (6, 5), (70000,), (2, 3, 4)]


@settings(max_examples=10)
@given(size=st.integers(1, 6), connections=st.sampled_from([1, 2]),
       shape=st.sampled_from(SHAPES), dtype_name=st.sampled_from(sorted(w.DTYPES)),
       seed=st.integers(0, 1000))
def test_broadcast_from_every_root(clusters, size, connections, shape, dtype_name, seed):
    got = clusters.get(size, connections).run(w.broadcast_all_roots, shape, dtype_name, seed)
    for root in range(size):
        want = w.data(seed, root, shape, dtype_name)
        for rank in range(size):
            g = got[rank][root]
            assert g.shape == want.shape and g.dtype == want.dtype
            assert g.tobytes() == want.tobytes(), f"root {root}, rank {rank}"


@settings(max_examples=10)
@given(size=st.integers(1, 6), connections=st.sampled_from([1, 2]),
       rows=st.sampled_from([0, 1, 3, 9000]), tail=st.sampled_from([(), (5,), (2, 3)]),
       dtype_name=st.sampled_from(sorted(w.DTYPES)), seed=st.integers(0, 1000))
def test_all_to_all_against_numpy(clusters, size, connections, rows, tail, dtype_name, seed):
    shape = (size * rows, *tail)
    got = clusters.get(size, connections).run(w.all_to_all, shape, dtype_name, seed)
    w.check_all_to_all(got, shape, dtype_name, seed)


def test_all_to_all_needs_axis_0_divisible_by_the_size(clusters):
    got = clusters.get(4).run(w.error_of, "all_to_all", (6,), "float32", 0)
    assert all(g.startswith("ValueError") and "divide by the group size 4" in g for g in got)


@pytest.mark.parametrize("size,root", [(2, 1), (5, 3)])
def test_mlx_broadcast_and_all_to_all_with_gradients(clusters, size, root):
    pytest.importorskip("mlx.core")
    shape = (2 * size, 3)
    got = clusters.get(size).run(w.mlx_grads, shape, root)
    xs = [w.data(7, r, shape, "float32") for r in range(size)]
    ws = [w.data(8, r, shape, "float32") for r in range(size)]
    per = 2
    for r, (b, a, gb, ga, module) in enumerate(got):
        assert module.startswith("mlx")
        np.testing.assert_array_equal(b, xs[root])
        np.testing.assert_array_equal(a, np.concatenate([x[r * per:(r + 1) * per] for x in xs]))
        # d/dx_r of sum_q <broadcast(x_root), w_q>: sum of the w's on the root, zero elsewhere
        np.testing.assert_array_equal(gb, sum(ws) if r == root else np.zeros(shape))
        # block j of x_r went to rank j, where it met block r of w_j
        np.testing.assert_array_equal(ga, np.concatenate([ws[j][r * per:(r + 1) * per]
                                                          for j in range(size)]))
