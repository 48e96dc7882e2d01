"""A mismatch over a direct link (send/recv beyond the neighbours) names both calls in the
same words as one over the ring: "op(dtype, N elements, shape S, message #k)" on each side
(issue 31 item 11), over TCP and over RDMA on the emulated verbs."""
from __future__ import annotations

import pytest

from tests import p2p_work as w

RDMA = "rdma-emulated"


@pytest.mark.parametrize("impl", ["ringcomm", RDMA])
def test_a_direct_mismatch_describes_both_calls_alike(clusters, impl):
    cluster = clusters.get(5, 1, (impl,) * 5)
    got = cluster.run(w.mismatched, 1, 3)  # rank 1 sends float32 (4,), rank 3 expects int64
    cluster.broken = True  # rank 3's group is broken now
    assert got[3].startswith("MismatchError"), got[3]
    assert ("this rank called recv(int64, 4 elements, shape (4,), message #1) from rank 1 "
            "but rank 1 sent send(float32, 4 elements, shape (4,), message #1)") in got[3], got[3]
