"""send/recv between any two ranks on real localhost rings: neighbours over the ring, the
others over direct connections opened on first use (transports.direct; with the RDMA
transport on the EMULATED verbs, direct queue pairs: transports.rdma_direct)."""
from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings

from tests import p2p_work as w
from tests.strategies import traffic

RDMA = "rdma-emulated"


@settings(max_examples=12)
@given(traffic(2, 8))
def test_send_recv_between_random_pairs(clusters, case):
    size, pairs, shape, dtype_name, seed = case
    got = clusters.get(size).run(w.pairs, pairs, shape, dtype_name, seed)
    w.check_pairs(got, pairs, shape, dtype_name, seed)


# Over TCP, and over RDMA on the EMULATED verbs provider (direct queue pairs,
# transports.rdma_direct).  A rank waiting for a non-neighbour that died before it opened its
# direct connection hears of it from the ring (TCP: the control connections, which a direct
# wait watches; RDMA: the side channel it naps on), long before the deadline.
# With 4 messages and a pause, the dead sender's failure (its credit write; over TCP the
# ring's notice) is recorded while messages wait: each must still be delivered before the
# error.
@pytest.mark.parametrize("impl,opened,messages,pause", [
    ("ringcomm", True, 1, 0.0), (RDMA, True, 1, 0.0), ("ringcomm", False, 1, 0.0),
    (RDMA, False, 1, 0.0), ("ringcomm", True, 4, 1.0), (RDMA, True, 4, 1.0)])
def test_a_dead_non_neighbour_is_a_peer_lost_error_naming_it(clusters, impl, opened, messages,
                                                           pause):
    cluster = clusters.get(5, 1, (impl,) * 5)
    cluster.broken = True  # rank 1 exits: the cache starts a fresh ring next time
    for conn in cluster._conns:
        conn.send((w.die_after_send, (1, 3, opened, messages, pause)))
    assert cluster._conns[3].poll(30), "rank 3 did not answer"
    status, value = cluster._conns[3].recv()
    assert status == "ok", value
    kind, text, seconds = value
    assert kind == "PeerLostError" and "rank 1" in text and "rank 3" in text, text
    assert seconds < 5, seconds


@pytest.mark.parametrize("impl", ["ringcomm", RDMA])
def test_a_mismatch_on_a_direct_link_names_both_calls(clusters, impl):
    cluster = clusters.get(5, 1, (impl,) * 5)
    got = cluster.run(w.mismatched, 1, 3)
    cluster.broken = True  # rank 3's group is broken now
    assert got[1] == "" and got[0] == got[2] == got[4] == ""
    assert got[3].startswith("MismatchError") and "rank 1" in got[3], got[3]
    assert "recv(int64" in got[3] and "send(float32, 4 elements" in got[3], got[3]


@pytest.mark.parametrize("impl", ["ringcomm", RDMA])
def test_strays_and_forged_hellos_on_the_listener_change_nothing(clusters, impl):
    """The ring listener (TCP), or the bootstrap listener of direct queue pairs (RDMA)."""
    cluster = clusters.get(4, 1, (impl,) * 4)
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


def test_mlx_protocol_rings_still_send_only_to_neighbours(tmp_path):
    """MLX's ring has no direct links, so a mixed ring cannot have them either."""
    from tests.procs import start_ranks
    script = """
import numpy as np, ringcomm
g = ringcomm.init(strict=True, timeout=20)
try:
    ringcomm.send(np.ones(3, np.float32), (g.rank() + 2) % g.size())
except ValueError as e:
    print("refused:", "not a ring neighbour" in str(e))
g.barrier()
"""
    ranks = start_ranks(tmp_path, 4, script, RINGCOMM_PROTOCOL="mlx")
    outs = [p.communicate(timeout=60) for p in ranks]
    assert [out.strip() for out, _ in outs] == ["refused: True"] * 4, outs
