"""Group.split on real localhost rings: subgroups with rings of their own, formed through the
parent, for random colors and keys (everyone alone, everyone together, ranks in no group),
collectives on them against numpy, nested splits, closing and breaking a subgroup while the
parent goes on, RDMA on the EMULATED verbs provider, and protocol='mlx' refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ringcomm import split_form
from ringcomm.launch import localhost_devices
from ringcomm.ports import free_ports
from ringcomm.transports.errors import CommTimeoutError, PeerLostError
from tests import split_work
from tests.procs import start_ranks

SIZES = [1, 2, 3, 4]


def expected_groups(colors, keys):
    """{color: parent ranks in subgroup order}, as MLX and MPI define it."""
    n = len(colors)
    order = {}
    for c in sorted(set(colors)):
        if c >= 0:
            members = [i for i in range(n) if colors[i] == c]
            order[c] = sorted(members, key=lambda i: (i if keys[i] < 0 else keys[i], i))
    return order


def check_split(cluster, colors, keys, seed, rows=2):
    results = cluster.run(split_work.split_and_reduce, colors, keys, seed, rows)
    n = cluster.size
    groups = expected_groups(colors, keys)
    for r, (got, parent_sum) in enumerate(results):
        assert parent_sum == [n * (n + 1) // 2], (r, parent_sum)  # the parent still works
        if colors[r] < 0:
            assert got is None, r
            continue
        members = groups[colors[r]]
        m = len(members)
        assert (got["rank"], got["size"]) == (members.index(r), m), (r, got["rank"], members)
        assert got["members"] == members, r
        xs = [split_work.data(p, seed, (rows * m, 3), "int64") for p in members]
        assert np.array_equal(got["sum"], np.sum(xs, axis=0)), r
        assert np.array_equal(got["max"], np.max(xs, axis=0).astype(np.float32)), r
        assert np.array_equal(got["gather"], np.concatenate(xs)), r
        me = members.index(r)
        assert np.array_equal(got["scatter"], np.sum(xs, axis=0)[me * rows:(me + 1) * rows]), r


def colors_and_keys(n):
    color = st.integers(-2, 3)
    key = st.one_of(st.just(-1), st.integers(-3, 5))
    return st.tuples(st.lists(color, min_size=n, max_size=n), st.lists(key, min_size=n,
                                                                        max_size=n))


@pytest.mark.parametrize("size", SIZES)
@settings(max_examples=6)
@given(data=st.data())
def test_random_colors_and_keys_form_the_subgroups_mpi_and_mlx_define(clusters, size, data):
    colors, keys = data.draw(colors_and_keys(size))
    check_split(clusters.get(size), colors, keys, data.draw(st.integers(0, 1 << 16)))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", ["alone", "together", "reversed", "none", "half-none"])
def test_the_edge_splits(clusters, size, case):
    n = size
    colors, keys = {"alone": (list(range(n)), [-1] * n),
                    "together": ([7] * n, [-1] * n),
                    "reversed": ([0] * n, [n - r for r in range(n)]),
                    "none": ([-1] * n, [-1] * n),
                    "half-none": ([-1 if r % 2 else 0 for r in range(n)], [-1] * n)}[case]
    check_split(clusters.get(size), colors, keys, seed=size)


@settings(max_examples=3)
@given(data=st.data())
def test_random_splits_of_eight_ranks(clusters, data):
    colors, keys = data.draw(colors_and_keys(8))
    check_split(clusters.get(8), colors, keys, data.draw(st.integers(0, 1 << 16)), rows=1)


@pytest.mark.parametrize("size", [4, 8])
def test_nested_splits(clusters, size):
    results = clusters.get(size).run(split_work.nested, 5)
    for r, got in enumerate(results):
        half = [p for p in range(size) if p % 2 == r % 2]
        me = half.index(r)
        quarter = [p for i, p in enumerate(half) if i // 2 == me // 2]
        # keys: the first of each pair keeps -1 (its rank: 0 or 2...), the second -rank (< 0,
        # so its rank too): the order stays the half's
        assert got["half"] == half and got["quarter"] == quarter, (r, got)
        want = np.sum([split_work.data(p, 5, (5,), "float64") for p in quarter], axis=0)
        assert got["quarter_sum"] == want.tolist(), r
        assert got["half_after"] == [sum(half)] and got["parent_after"] == [sum(range(size))]


def test_closing_a_subgroup_leaves_the_parent_working(clusters):
    for after, parent_sum in clusters.get(3).run(split_work.close_one):
        assert after == "GroupBrokenError" and parent_sum == [3]


def test_a_mismatch_inside_a_subgroup_breaks_it_and_nothing_else(clusters):
    results = clusters.get(4).run(split_work.mismatch_in_one)
    for r, ((kind, message), took, later, parent_sum) in enumerate(results):
        assert parent_sum == [6], r
        if r % 2:  # the odd subgroup did nothing wrong
            assert (kind, later) == ("ok", "ok"), (r, kind, message)
            continue
        assert kind in ("MismatchError", "PeerLostError"), (r, kind, message)
        assert "float64" in message and "float32" in message, (r, message)
        assert later == "GroupBrokenError", r
        assert took < 10, (r, took)  # a bound for the error path, not a speed claim
    assert any(kind == "MismatchError" for (kind, _), *_ in results[::2])


@pytest.mark.parametrize("size", [2, 4])
def test_split_over_rdma_on_the_emulated_verbs(clusters, size):
    cluster = clusters.get(size, 1, ("rdma-emulated",) * size)
    check_split(cluster, [r % 2 for r in range(size)], [size - r for r in range(size)], 3)
    check_split(cluster, [0] * size, [-1] * size, 4)


def test_rdma_nested_and_mismatch(clusters):
    cluster = clusters.get(4, 1, ("rdma-emulated",) * 4)
    for r, got in enumerate(cluster.run(split_work.nested, 2)):
        assert got["half"] == [r % 2, r % 2 + 2] and got["parent_after"] == [6], (r, got)
    results = cluster.run(split_work.mismatch_in_one)
    assert [later for *_, later, _ in results] == ["GroupBrokenError", "ok"] * 2
    assert all(parent == [6] for *_, parent in results)


def test_split_of_a_group_under_protocol_mlx_is_a_clear_error(clusters):
    results = clusters.get(2, impls=("ringcomm", "mlx")).run(split_work.split_protocol_mlx)
    assert results[1] == "mlx rank"
    assert "protocol='ringcomm'" in results[0] and "MLX" in results[0], results[0]


@pytest.mark.parametrize("sharding", ["all-to-sharded", "sharded-to-all"])
def test_layers_on_subgroups(clusters, sharding):
    for r, (sub_rank, res, sgd) in enumerate(clusters.get(4).run(split_work.layers_on_subgroup,
                                                                 sharding)):
        assert sub_rank == 1 - r // 2, r  # keys 4 - r: the parent order reversed
        assert res["out"] < 1e-4 and res["dx"] < 1e-3 and res["dw"] < 1e-3, (r, res)
        assert sgd < 1e-5, (r, sgd)


def test_the_benchmark_loop_on_subgroups(clusters):
    for r, records in enumerate(clusters.get(4).run(split_work.bench_on_subgroup)):
        assert len(records) == 12, (r, records)
        assert all(ranks == 2 and wrong == 0 for _, ranks, _, wrong in records), (r, records)


# -- a parent rank that dies or freezes during split (issue 29 items 8 and 3) ------------------

FAIL_AFTER_EXCHANGE = """
import json, os, signal, socket, time
import ringcomm
from ringcomm.transports import handshake
from ringcomm import split as split_module
timeout = float(os.environ["T"])
if os.environ.get("DEVICES"):  # RDMA on the verbs emulation
    g = ringcomm.init(rank=int(os.environ["MLX_RANK"]), backend="rdma", verbs="emulated",
                      devices=json.loads(os.environ["DEVICES"]),
                      coordinator=os.environ["COORDINATOR"], timeout=timeout)
else:
    g = ringcomm.init(strict=True, timeout=timeout)
g.barrier()
r, victim, how = g.rank(), int(os.environ["VICTIM"]), os.environ["HOW"]
if r == victim:  # the exchange goes through; then this process dies, freezes or dribbles
    exchange = split_module._exchange
    def exchange_then_fail(*args, **kwargs):
        table = exchange(*args, **kwargs)
        if how == "dribble":  # its HELLO a byte at a time to the subgroup's rank 0 (every
            first = table[0]    # rank color 0): to its RDMA coordinator, or TCP listener
            rdma = bool(os.environ.get("DEVICES"))
            job = handshake.job_digest(f"{g.origin.job_id}/split1:color0")
            hello = handshake.new_hello(job, 3, 4, 0, None, not rdma).pack()
            sock = socket.create_connection((first[2].rstrip(b"\\0").decode() or "127.0.0.1",
                                             first[3] if rdma else first[4]))
            for byte in hello[:-1]:  # never the whole of it
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    pass
                time.sleep(0.4)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        return table
    split_module._exchange = exchange_then_fail
start = time.monotonic()
try:
    g.split(json.loads(os.environ["COLORS"])[r])
    print(json.dumps({"outcome": "ok"}))
except ringcomm.RingcommError as e:
    print(json.dumps({"outcome": type(e).__name__, "message": str(e), "op": e.op,
                      "peer": e.peer, "address": e.address,
                      "seconds": time.monotonic() - start}))
"""


def split_with_a_failure(tmp_path, size, victim, how, colors, timeout, backend="tcp"):
    """Every surviving rank's outcome: its JSON line."""
    rdma = {} if backend == "tcp" else {
        "DEVICES": json.dumps(localhost_devices(size, 1, "emulated0")),
        "COORDINATOR": f"127.0.0.1:{free_ports(1)[0]}"}
    procs = start_ranks(tmp_path, size, FAIL_AFTER_EXCHANGE, T=str(timeout),
                        VICTIM=str(victim), HOW=how, COLORS=json.dumps(colors), **rdma)
    outcomes = {}
    try:
        for r, p in enumerate(procs):
            if r != victim:
                out, err = p.communicate(timeout=timeout + 30)
                assert out.strip(), (r, err)
                outcomes[r] = json.loads(out.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return outcomes


@pytest.mark.parametrize("size,victim,colors,backend", [
    (3, 1, [0, 0, 0], "tcp"),
    (4, 0, [0, 0, 0, 0], "tcp"),     # the subgroup's rank 0: the last rank's connect is refused
    (4, 3, [0, 0, 0, 0], "tcp"),     # its last rank: everyone else waits in accept
    (4, 2, [0, 1, 0, 1], "tcp"),     # in the other color's ring
    (4, 1, [0, -1, 0, -1], "tcp"),   # in no subgroup
    (4, 3, [0, 0, 0, 0], "rdma")])   # the verbs emulation: heard on the side channel
def test_a_rank_killed_after_the_exchange_is_named_by_its_parent_rank_at_once(
        tmp_path, size, victim, colors, backend):
    # it used to end at the deadline as subgroup "rank 1", operation init, asking whether
    # that rank ran "with the same hostfile" (and ranks far from it blamed live ones)
    outcomes = split_with_a_failure(tmp_path, size, victim, "kill", colors, 10, backend)
    for r, got in outcomes.items():
        assert got["outcome"] == "PeerLostError", (r, got)
        assert got["op"] == "split" and got["peer"] == victim, (r, got)
        assert got["address"].startswith("127.0.0.1:"), (r, got)
        assert f"rank {victim}" in got["message"] and "hostfile" not in got["message"], got
        assert got["seconds"] < 2.0, (r, got)  # milliseconds; the deadline is 10 s
    print("seconds to the error:", {r: round(g["seconds"], 3) for r, g in outcomes.items()})


@pytest.mark.parametrize("victim", [1, 3])
def test_a_rank_frozen_after_the_exchange_is_named_at_the_calls_deadline(tmp_path, victim):
    # the whole call shares one deadline (3 s): the exchange, the subgroup's set-up and the
    # closing step; at it the parent's liveness probes find the frozen rank, whoever each
    # rank was waiting for (ranks waiting in accept used to blame their live neighbour)
    outcomes = split_with_a_failure(tmp_path, 4, victim, "stop", [0] * 4, timeout=3)
    for r, got in outcomes.items():
        assert got["outcome"] == "CommTimeoutError", (r, got)
        assert got["op"] == "split" and got["peer"] == victim, (r, got)
        assert "hostfile" not in got["message"], got
        assert 3.0 <= got["seconds"] < 3.0 + 2.0, (r, got)  # the probes add up to 1.5 s
    print("seconds to the error:", {r: round(g["seconds"], 3) for r, g in outcomes.items()})


@pytest.mark.parametrize("backend", ["tcp", "rdma"])
def test_a_peer_dribbling_into_the_subgroups_set_up_cannot_stretch_the_call(tmp_path,
                                                                           backend):
    # parent rank 3 sends the subgroup's rank 0 a byte every 0.4 s instead of joining: over
    # RDMA the coordinator read it a byte at a time, each receive with a fresh timeout, and
    # split took as long as the peer kept dribbling; now every rank ends by the deadline
    outcomes = split_with_a_failure(tmp_path, 4, 3, "dribble", [0] * 4, 3, backend)
    for r, got in outcomes.items():
        assert got["op"] == "split" and 2.9 <= got["seconds"] < 3.0 + 2.0, (r, got)
        if backend == "tcp":  # the parent's probes name it (it answers none)
            assert got["outcome"] == "CommTimeoutError" and got["peer"] == 3, (r, got)
        else:  # no probes over RDMA: the coordinator gave up at the deadline, closing the
            # connections it had not verified (their ranks say so)
            assert got["outcome"] in ("CommTimeoutError", "PeerLostError"), (r, got)
    print("seconds to the error:", {r: round(g["seconds"], 3) for r, g in outcomes.items()})


def test_set_up_errors_are_retold_in_parent_ranks_without_the_set_ups_advice():
    # what the subgroup's set-up says in its own ranks, told as split's (the processes above
    # rarely get there: the parent hears of a death first)
    members, addresses = [1, 3, 5], ["h1:11", "h3:13", "h5:15"]
    cases = [
        (CommTimeoutError("no connection arrived on 127.0.0.1:9 within the timeout; is rank 0 "
                          "running with the same hostfile?", rank=1, peer=0, op="init"),
         "no connection arrived on 127.0.0.1:9 within the timeout", 1, "h1:11"),
        (CommTimeoutError("ranks [0, 2] did not reach the coordinator 127.0.0.1:5 within the "
                          "timeout; are they running with the same MLX_JACCL_COORDINATOR?",
                          rank=1, peer=2, op="init"),
         "ranks [1, 5] did not reach the coordinator 127.0.0.1:5 within the timeout", 5,
         "h5:15")]
    for error, text, peer, address in cases:
        told = split_form.in_parent_terms(error, 3, members, 7, addresses)
        assert type(told) is type(error) and (told.rank, told.peer, told.op) == (3, peer, "split")
        assert told.address == address and "running" not in str(told), str(told)
        assert str(told).startswith("rank 3: split: forming the ring of color 7 (parent ranks "
                                    f"1, 3, 5): {text}"), str(told)
    relayed = PeerLostError("rank 2 failed first; rank 0 reported: connection lost",
                            rank=1, peer=2, address="127.0.0.1:7", op="init")
    relayed.origin, relayed.failed, relayed.reported = 0, 2, "connection lost"
    told = split_form.in_parent_terms(relayed, 3, members, 7, addresses)
    assert (told.origin, told.failed, told.peer, told.address) == (1, 5, 5, "127.0.0.1:7")
    assert "rank 5 failed first; rank 1 reported: connection lost" in str(told)
