"""The chain schedules of gather and scatter (issue 31, item 10), as data: every rank's
block reaches the root (every block its rank), each block crosses each link at most once, the
root's links carry (n-1) blocks in all, half each way, and no rank deadlocks."""
from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from ringcomm import plans
from ringcomm.plans import SUB_OP_BYTES, Side
from tests.test_plans import _forwarding_holds, simulate_async

SIZES = st.integers(2, 9)
CONNECTIONS = st.integers(1, 3)
NBYTES = st.one_of(st.integers(0, 100), st.integers(SUB_OP_BYTES - 3, 3 * SUB_OP_BYTES))


def _into_root(carried: dict, size: int, root: int, towards: bool) -> int:
    """Bytes on the root's two links: into it (gather) or out of it (scatter)."""
    if towards:  # sent by the root's neighbours toward it
        return sum(v for (r, side, _c), v in carried.items()
                   if (r, side) in {((root + 1) % size, Side.LEFT),
                                    ((root - 1) % size, Side.RIGHT)})
    return sum(v for (r, _side, _c), v in carried.items() if r == root)


@given(size=SIZES, connections=CONNECTIONS, root=st.integers(0, 8), nbytes=NBYTES)
def test_gather_plan_brings_every_block_to_the_root_once(size, connections, root, nbytes):
    root %= size
    blocks = [np.random.default_rng([r, nbytes]).integers(0, 256, nbytes, dtype=np.uint8)
              for r in range(size)]
    bufs = [np.zeros(size * nbytes, np.uint8) for _ in range(size)]
    for r in range(size):  # each rank's own block, as rooted.gather copies it in
        bufs[r][r * nbytes:(r + 1) * nbytes] = blocks[r]
    rank_plans = [plans.gather(nbytes, size, r, root, connections) for r in range(size)]
    carried = simulate_async(rank_plans, bufs)
    np.testing.assert_array_equal(bufs[root], np.concatenate(blocks))
    if size > 2:
        assert _into_root(carried, size, root, True) == (size - 1) * nbytes
    for r, plan in enumerate(rank_plans):  # (the root only receives)
        if r != root:
            _forwarding_holds(plan)
    # each half of a block travels its own way: sum of hops, not n - 1 per block
    m = plans._sub_op_count(nbytes, connections)
    if m > 1 and size > 2:
        assert sum(carried.values()) < (size - 1) * (size - 1) * nbytes
    assert not plans.gather(nbytes, size, root, root, connections)[0][0].send  # root receives


@given(size=SIZES, connections=CONNECTIONS, root=st.integers(0, 8), nbytes=NBYTES)
def test_scatter_plan_gives_block_j_to_rank_j(size, connections, root, nbytes):
    root %= size
    data = np.random.default_rng(nbytes).integers(0, 256, size * nbytes, dtype=np.uint8)
    bufs = [data.copy() if r == root else np.zeros(size * nbytes, np.uint8)
            for r in range(size)]
    carried = simulate_async([plans.scatter(nbytes, size, r, root, connections)
                              for r in range(size)], bufs)
    for r in range(size):
        np.testing.assert_array_equal(bufs[r][r * nbytes:(r + 1) * nbytes],
                                      data[r * nbytes:(r + 1) * nbytes])
    assert _into_root(carried, size, root, False) == (size - 1) * nbytes


def test_a_group_of_one_needs_no_plan():
    assert plans.gather(8, 1, 0, 0, 1) == plans.scatter(8, 1, 0, 0, 1) == ()
