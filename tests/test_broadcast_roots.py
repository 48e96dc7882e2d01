"""Ranks that broadcast from different roots: the root travels in the operation header
(ringcomm protocol), so every rank fails fast with a MismatchError naming both calls instead
of waiting for the deadline; over TCP and over RDMA on the EMULATED verbs provider."""
from __future__ import annotations

import re

import pytest

from tests import p2p_work as w
from tests.cluster import RANK_TIMEOUT


@pytest.mark.parametrize("impl,roots,shape", [
    ("ringcomm", [0, 0, 1, 1], (1000,)),
    ("ringcomm", [3, 2, 1, 0], (0,)),
    ("rdma-emulated", [0, 0, 0, 2], (70000,)),
])
def test_different_roots_are_a_mismatch_on_every_rank(clusters, impl, roots, shape):
    size = len(roots)
    cluster = clusters.get(size, 1, (impl,) * size)
    got = cluster.run(w.broadcast_from, roots, shape)
    cluster.broken = True  # every group is broken now
    for rank, (error, call, seconds) in enumerate(got):
        assert error.startswith("MismatchError"), (rank, error)
        assert seconds < RANK_TIMEOUT / 10, (rank, seconds, error)
        # only a rank that receives no data (its own root, or an empty array) may return
        # before the check, as a sender does; its next call raises
        assert call == "broadcast" or roots[rank] == rank or 0 in shape, (rank, call, error)
        # both calls, with their roots (relayed: the first rank's words)
        named = {int(n) for n in re.findall(r"root (\d+)", error)}
        assert len(named) == 2 and named <= set(roots), (rank, error)
