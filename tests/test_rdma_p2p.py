"""send/recv between any two ranks and all_to_all over the RDMA transport on the EMULATED
verbs provider (no RDMA hardware involved): non-neighbours over direct queue pairs opened on
first use (transports.rdma_direct), against numpy; a mismatch, a dead peer, first-use cost."""
from __future__ import annotations

import socket

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests import p2p_work as w

RDMA = "rdma-emulated"


def _cluster(clusters, size):
    return clusters.get(size, 1, (RDMA,) * size)


@st.composite
def traffic(draw):
    size = draw(st.integers(4, 5))
    pair = st.tuples(st.integers(0, size - 1), st.integers(0, size - 1)).filter(
        lambda p: p[0] != p[1])
    return (size, draw(st.lists(pair, min_size=1, max_size=6)),
            draw(st.sampled_from([(0,), (3,), (5, 7), (70000,)])),
            draw(st.sampled_from(sorted(w.DTYPES))), draw(st.integers(0, 1000)))


@settings(max_examples=8, deadline=None)
@given(traffic())
def test_send_recv_between_random_pairs(clusters, case):
    size, pairs, shape, dtype_name, seed = case
    got = _cluster(clusters, size).run(w.pairs, pairs, shape, dtype_name, seed)
    for dst in range(size):
        want = [w.data(seed + i, s, shape, dtype_name) for i, (s, d) in enumerate(pairs)
                if d == dst]
        assert len(got[dst]) == len(want)
        for g, e in zip(got[dst], want):
            assert g.dtype == e.dtype and g.tobytes() == e.tobytes(), f"rank {dst}"


def test_messages_past_the_credits_both_ways_at_once(clusters):
    # 2.4 MB each way between non-neighbours 0 and 2: more than the 8 slots of 256 KiB a
    # queue pair holds, so the credit words must grow while both ranks send and receive
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
    inputs = [w.data(seed, r, shape, dtype_name) for r in range(size)]
    for r in range(size):
        want = np.concatenate([x[r * rows:(r + 1) * rows] for x in inputs])
        assert got[r].shape == want.shape and got[r].tobytes() == want.tobytes(), f"rank {r}"


def test_a_mismatch_on_a_direct_queue_pair_names_both_calls(clusters):
    cluster = _cluster(clusters, 5)
    got = cluster.run(w.mismatched, 1, 3)
    cluster.broken = True  # rank 3's group is broken now
    assert got[1] == "" and got[0] == got[2] == got[4] == ""
    assert got[3].startswith("MismatchError") and "rank 1" in got[3], got[3]
    assert "recv(int64" in got[3] and "send(float32, 4 elements" in got[3], got[3]


@pytest.mark.parametrize("opened", [True, False])
def test_a_dead_non_neighbour_is_a_peer_lost_error_naming_it(clusters, opened):
    cluster = _cluster(clusters, 5)
    cluster.broken = True  # rank 1 exits: the cache starts a fresh ring next time
    for conn in cluster._conns:
        conn.send((w.die_after_send, (1, 3, opened)))
    assert cluster._conns[3].poll(30), "rank 3 did not answer"
    status, value = cluster._conns[3].recv()
    assert status == "ok", value
    kind, text, seconds = value
    assert kind == "PeerLostError" and "rank 1" in text and "rank 3" in text, text
    assert seconds < 5, seconds


def test_first_use_opens_the_queue_pair_once(clusters):
    # a ring of its own (2 queue pairs per neighbour): no direct link is open yet
    cluster = clusters.get(4, 2, (RDMA,) * 4)
    times = cluster.run(w.timed_first_use, {1: 3}, 1 << 16, 4)[1]
    assert times[0] < 5 and max(times[1:]) < 1, times
    print(f"\nRDMA (emulated) direct 64 KiB send 1->3: first {times[0] * 1e3:.1f} ms, "
          f"later {[round(t * 1e3, 2) for t in times[1:]]} ms")


def test_strays_on_the_bootstrap_listener_change_nothing(clusters):
    cluster = _cluster(clusters, 4)
    host, port = cluster.run(w.direct_address, 2)[0]
    strays = []
    for junk in (b"GET / HTTP/1.0\r\n\r\n", b"RCMH" + bytes(48), b""):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(junk)
        strays.append(s)
    got = cluster.run(w.pairs, [(0, 2), (2, 0)], (4,), "int64", 5)
    assert got[2][0].tobytes() == w.data(5, 0, (4,), "int64").tobytes()
    assert got[0][0].tobytes() == w.data(6, 2, (4,), "int64").tobytes()
    for s in strays:
        s.close()
