"""Property tests: every collective equals its numpy reference on real localhost rings.

World sizes 1-4 with K = 1 and 2 connections per neighbour, and a smaller set at 8 ranks,
each over TCP and over the RDMA transport on the EMULATED verbs provider (an emulation: it
checks the RDMA transport's protocol logic, not RDMA hardware).  Sizes are drawn both at random and around every branch of the ring schedule: fewer elements
than ranks, just below and above 256 KiB per rank, several sub-reductions, uneven segments.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ringcomm.plans import SUB_OP_BYTES
from tests import workload
from tests.strategies import cases

RINGS = [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (4, 1), (4, 2)]
# the rank implementation in tests.cluster: TCP, or RDMA on the verbs emulation
transports = pytest.mark.parametrize("impl", ["ringcomm", "rdma-emulated"],
                                     ids=["tcp", "rdma-emulated"])


def check(cluster, op, case):
    dtype_name, shape, seed, strided = case[:4]
    results = cluster.run(workload.run_op, op, *case)
    wants = workload.expected(op, dtype_name, shape, seed, cluster.size, strided)
    dtype = workload.DTYPES[dtype_name]
    for rank, (got, want) in enumerate(zip(results, wants)):
        assert got.dtype == dtype, f"rank {rank}: dtype {got.dtype}"
        assert got.shape == want.shape, f"rank {rank}: shape {got.shape} != {want.shape}"
        if op in ("all_sum", "sum_scatter") and dtype_name in workload.INEXACT:
            tol = workload.sum_tolerance(dtype_name, shape, seed, cluster.size, strided)
            if op == "sum_scatter":
                tol = np.reshape(tol, (cluster.size, shape[0] // cluster.size, *shape[1:]))[rank]
            err = np.abs(got.astype(np.complex128) - want)
            assert np.all(err <= tol), f"rank {rank}: max error {err.max()} over tolerance"
        else:
            assert got.tobytes() == want.astype(dtype).tobytes(), f"rank {rank}: wrong bytes"
    if op != "sendrecv" and op != "sum_scatter":
        assert all(r.tobytes() == results[0].tobytes() for r in results), \
            "ranks disagree on the result bytes"


@transports
@pytest.mark.parametrize("size,connections", RINGS, ids=[f"n{n}-k{k}" for n, k in RINGS])
@pytest.mark.parametrize("op", workload.OPS)
@given(data=st.data())
def test_collective_matches_numpy(clusters, impl, size, connections, op, data):
    cluster = clusters.get(size, connections, (impl,) * size)
    check(cluster, op, data.draw(cases(size, connections, op)))


@transports
@pytest.mark.parametrize("op", workload.OPS)
@settings(max_examples=8)
@given(data=st.data())
def test_collective_on_eight_ranks(clusters, impl, op, data):
    check(clusters.get(8, 1, (impl,) * 8), op, data.draw(cases(8, 1, op)))


BRANCH_RINGS = [(2, 1), (2, 2), (3, 1), (4, 2)]


@transports
@pytest.mark.parametrize("size,connections", BRANCH_RINGS, ids=[f"n{n}-k{k}" for n, k in BRANCH_RINGS])
@pytest.mark.parametrize("op", ["all_sum", "all_gather", "sum_scatter"])
def test_every_branch_of_the_schedule(clusters, impl, size, connections, op):
    """Deterministic sizes at each edge: fewer than size, each sub-operation count +-1."""
    cluster = clusters.get(size, connections, (impl,) * size)
    per_rank = size if op == "all_sum" else 1
    counts = [0, 1, size - 1, size + 1] + [
        j * per_rank * SUB_OP_BYTES // 4 + d for j in range(1, 2 * connections + 2) for d in (-1, 1)]
    for count in counts:
        shape = (size * count,) if op == "sum_scatter" else (count,)
        check(cluster, op, ("int32", shape, count, False))
