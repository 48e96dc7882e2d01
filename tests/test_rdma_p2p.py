"""send/recv between any two ranks and all_to_all over the RDMA transport on the EMULATED
verbs provider (no RDMA hardware involved): non-neighbours over direct queue pairs opened on
first use (transports.rdma_direct), against numpy; first-use cost.  A mismatch, a dead peer
and strays on the listener: tests/test_p2p_any.py, over TCP and RDMA."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from tests import p2p_work as w
from tests.cluster import Cluster
from tests.strategies import traffic

RDMA = "rdma-emulated"


def _cluster(clusters, size):
    return clusters.get(size, 1, (RDMA,) * size)


@settings(max_examples=8, deadline=None)
@given(traffic(4, 5))
def test_send_recv_between_random_pairs(clusters, case):
    size, pairs, shape, dtype_name, seed = case
    got = _cluster(clusters, size).run(w.pairs, pairs, shape, dtype_name, seed)
    w.check_pairs(got, pairs, shape, dtype_name, seed)


def test_messages_past_the_credits_each_way(clusters):
    # 2.4 MB each way between non-neighbours 0 and 2, one way after the other: more than the
    # 8 slots of 256 KiB a queue pair holds, so the credit words must grow
    pairs = [(0, 2), (2, 0)]
    shape = (300_000,)
    got = _cluster(clusters, 4).run(w.pairs, pairs, shape, "float64", 11)
    assert got[2][0].tobytes() == w.data(11, 0, shape, "float64").tobytes()
    assert got[0][0].tobytes() == w.data(12, 2, shape, "float64").tobytes()


@settings(max_examples=4, deadline=None)
@given(size=st.integers(4, 5), rows=st.sampled_from([1, 3, 9000]),
       tail=st.sampled_from([(), (2, 3)]), dtype_name=st.sampled_from(sorted(w.DTYPES)),
       seed=st.integers(0, 1000))
def test_all_to_all_against_numpy(clusters, size, rows, tail, dtype_name, seed):
    shape = (size * rows, *tail)
    got = _cluster(clusters, size).run(w.all_to_all, shape, dtype_name, seed)
    w.check_all_to_all(got, shape, dtype_name, seed)


def test_first_use_opens_the_queue_pair_once(clusters):
    # a ring of its own (2 queue pairs per neighbour): no direct link is open yet
    cluster = clusters.get(4, 2, (RDMA,) * 4)
    times, made = cluster.run(w.timed_first_use, {1: 3}, 1 << 16, 4)[1]
    assert made == 1, made  # one queue pair, kept for the later sends
    assert times[0] < 5 and max(times[1:]) < 1, times
    print(f"\nRDMA (emulated) direct 64 KiB send 1->3: first {times[0] * 1e3:.1f} ms, "
          f"later {[round(t * 1e3, 2) for t in times[1:]]} ms")


def test_direct_queue_pairs_open_under_a_token(monkeypatch):
    # every rank proves RINGCOMM_TOKEN on the bootstrap (HMAC), as on the ring's connections
    monkeypatch.setenv("RINGCOMM_TOKEN", "direct-secret")
    cluster = Cluster(4, 1, (RDMA,) * 4)
    try:
        got = cluster.run(w.pairs, [(1, 3), (3, 1)], (5, 7), "int8", 9)
        w.check_pairs(got, [(1, 3), (3, 1)], (5, 7), "int8", 9)
        assert cluster.run(w.direct_token_set)[0], "the token did not reach the direct links"
    finally:
        cluster.close()
