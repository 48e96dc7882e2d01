"""Mismatched calls end in MismatchError on every rank, naming both calls, within a few round
trips, whatever directions and connections the two operations use: never a timeout, never
wrong data (docs/wire-protocol.md, "Operation header").

Every case runs real rank processes on a fresh localhost ring with a 20 s deadline, so a
regression to waiting shows as a CommTimeoutError at 20 s, and asserts the error within
``BOUND`` seconds (the mismatch itself is seen in milliseconds; the bound leaves room for
this shared machine).
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from ringcomm.launch import localhost_devices, localhost_hostfile
from ringcomm.ports import free_ports
from tests import mismatch_work as work
from tests.cluster import Cluster

TIMEOUT = 20.0   # the ranks' deadline
BOUND = 5.0      # seconds from the call to the error

BACKENDS = ["tcp", "rdma"]


def ring(size: int, backend: str = "tcp", connections: int = 1) -> dict:
    if backend == "rdma":  # the verbs emulation: no RDMA hardware is involved
        return {"backend": "rdma", "devices": localhost_devices(size, connections, "emulated0"),
                "coordinator": f"127.0.0.1:{free_ports(1)[0]}"}
    return {"backend": "tcp", "hostfile": localhost_hostfile(size, connections)}


@pytest.fixture(scope="module")
def ranks():
    """Four rank processes kept for the module; each case joins a fresh ring with them."""
    cluster = Cluster(4, 1)
    yield cluster
    cluster.close()


def play(cluster, roles: list[dict], backend: str = "tcp", connections: int = 1) -> list:
    """Run ``roles`` (one per rank, ``mismatch_work.run``) on a fresh ring of len(roles)."""
    where = ring(len(roles), backend, connections)
    args = [(where, r, roles[r], TIMEOUT) if r < len(roles) else None
            for r in range(cluster.size)]
    return cluster.run_each(work.run, [(a,) for a in args])


def calls(*todo) -> dict:
    return {"calls": [list(c) for c in todo]}


def assert_mismatch(outcomes: list, *names: str | tuple[str, ...]) -> None:
    """Every rank's last call raised MismatchError in time, naming each of ``names`` (or one
    of the alternatives a tuple gives: a rank describes its own call by shape)."""
    for rank, result in enumerate(outcomes):
        if result is None:
            continue
        op, outcome, message, seconds, _ = result[-1]
        assert outcome == "MismatchError", (rank, result)
        assert seconds < BOUND, (rank, result)
        assert f"rank {rank} failed first" not in message, (rank, message)  # itself: never
        for name in names:
            assert any(n in message for n in ((name,) if isinstance(name, str) else name)), \
                (rank, name, message)
        assert all(o[1] == "ok" and o[4] is not False for o in result[:-1]), (rank, result)


F1000 = ("all_sum", "float32", 1000)
BARRIER = ("barrier", "uint8", 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_sum_then_barrier_against_barrier_then_all_sum(ranks, backend):
    got = play(ranks, [calls(F1000, BARRIER), calls(BARRIER, F1000)], backend)
    assert_mismatch(got, "all_sum(float32", "barrier(uint8")
    assert all(len(r) == 1 for r in got[:2]), got  # caught at the first call


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_sum_of_fewer_elements_than_ranks_against_more(ranks, backend):
    # 1 element runs in one direction only, 4 in the other: no data channel is shared
    got = play(ranks, [calls(("all_sum", "float32", 1)), calls(("all_sum", "float32", 4))],
               backend)
    assert_mismatch(got, "all_sum(float32, 1 element, shape (1,), call #",
                    "all_sum(float32, 4 elements, shape (4,), call #")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mine,theirs,words", [
    ([2, 2], [4], ("all_sum(float32, 4 elements, shape (2, 2), call #",
                   "all_sum(float32, 4 elements, shape (4,), call #")),
    ([8, 16], [5, 16], ("all_sum(float32, 128 elements, shape (8, 16), call #",
                        "all_sum(float32, 80 elements, shape (5, 16), call #")),
    ([2, 3], [7], ("all_sum(float32, 6 elements, shape (2, 3), call #",
                   "all_sum(float32, 7 elements, shape (7,), call #")),
], ids=["same-count", "batch", "flat"])
def test_both_calls_are_described_alike(ranks, backend, mine, theirs, words):
    """Each side of a mismatch reads "op(dtype, N elements, shape S, call #k)", its own call
    and its peer's alike (the peer's shape recovered from its header's CRC), never a shape
    on one side and a count on the other."""
    got = play(ranks, [calls(("all_sum", "float32", mine)),
                       calls(("all_sum", "float32", theirs))], backend)
    assert_mismatch(got, *words)


@pytest.mark.parametrize("backend", BACKENDS)
def test_barrier_against_all_gather(ranks, backend):
    got = play(ranks, [calls(BARRIER), calls(("all_gather", "float32", 4))], backend)
    assert_mismatch(got, "barrier(", "all_gather(")


@pytest.mark.parametrize("count", [4, 300000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_send_against_recv_of_one_more_element(ranks, backend, count):
    # the receiver sees the sender's header at once; a send the kernel took returns, and the
    # sender's next call hears of the mismatch (the barrier here)
    got = play(ranks, [calls(("send", "float32", count), BARRIER),
                       calls(("recv", "float32", count + 1))], backend)
    assert_mismatch(got, ("send(float32", "barrier("), f"recv(float32, {count + 1} elements, shape ({count + 1},)")
    assert got[1][0][0] == "recv", got  # the receiver raised in its recv


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocking_send_against_all_sum(ranks, backend):
    # 16 MiB cannot sit in socket buffers: the send itself must end in the error
    got = play(ranks, [calls(("send", "float32", 4 << 20)), calls(F1000)], backend)
    assert_mismatch(got, "send(float32", "all_sum(float32")
    assert got[0][0][0] == "send" and got[1][0][0] == "all_sum", got


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_then_barrier_against_all_sum(ranks, backend):
    got = play(ranks, [calls(("send", "float32", 1000), BARRIER), calls(F1000)], backend)
    # rank 0 sees rank 1's all_sum header in its barrier, or first hears rank 1's report
    assert_mismatch(got, ("send(float32", "barrier("), "all_sum(float32")
    assert got[1][0][0] == "all_sum", got


@pytest.mark.parametrize("sides", [["LEFT"], ["RIGHT"], ["LEFT", "RIGHT"]])
@pytest.mark.parametrize("payload", ["header", "random"])
@pytest.mark.parametrize("victim", ["all_sum", "recv", "send"])
def test_a_peer_that_sends_only_a_header_or_a_few_random_bytes(ranks, sides, payload,
                                                               victim):
    """Rank 1 passes the handshake, then puts an operation header (of this job, but of a
    call #5 that cannot come next) or 5 random bytes on one connection or both, and stays
    silent; rank 0 reads there in an all_sum, in its recv, or in nothing (a blocked send)."""
    data = ([5, "all_gather", "float32", [3]] if payload == "header"
            else os.urandom(5).replace(b"R", b"r"))  # not the start of "RCOP"
    call = {"all_sum": F1000, "recv": ("recv", "float32", 10),
            "send": ("send", "float32", 4 << 20)}[victim]
    got = play(ranks, [calls(call),
                       {"rogue": {"sides": sides, "payload": data, "hold": BOUND + 1}}])
    op, outcome, message, seconds, _ = got[0][-1]
    assert outcome == "MismatchError" and seconds < BOUND, got[0]
    assert ("all_gather(float32, 3 elements, shape (3,), call #5)" if payload == "header"
            else "not an operation header") in message, message


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_that_both_send_64_mib_first_both_complete(ranks, backend):
    big = ("send", "float32", 16 << 20)
    got = play(ranks, [calls(big, ("recv", "float32", 16 << 20))] * 2, backend)
    for result in got[:2]:
        assert [o[1] for o in result] == ["ok", "ok"] and all(o[4] for o in result), result
        assert all(o[3] < TIMEOUT / 2 for o in result), result


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_mutual_sends_still_complete(ranks, backend):
    small = ("send", "int32", 100)
    got = play(ranks, [calls(small, ("recv", "int32", 100), small, ("recv", "int32", 100))] * 2,
               backend)
    for result in got[:2]:
        assert [o[1] for o in result] == ["ok"] * 4 and all(o[4] for o in result), result


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("other", [F1000, BARRIER, ("all_gather", "int32", 3)])
def test_a_recv_against_a_collective_that_sends_it_nothing(ranks, backend, other):
    # the collective's header for the receiver goes alone, deferred (ringcomm.lone): it must
    # go as soon as the collective sleeps, and land in the receive
    got = play(ranks, [calls(("recv", "float32", 10)), calls(other)], backend)
    assert_mismatch(got, "recv(float32", f"{other[0]}(")


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_ranks_one_receives_while_the_others_reduce(ranks, backend):
    # rank 2's small all_sum sends only to rank 1; rank 0 waits in recv from rank 2, which
    # waits for rank 0's data: only rank 2's header to rank 0 (alone) can tell them
    got = play(ranks, [calls(("recv", "float32", 10)), calls(F1000), calls(F1000)], backend)
    assert_mismatch(got, "operations differ", "recv(float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_ranks_that_all_send_16_mib_first_complete(ranks, backend):
    big = ("send", "float32", 4 << 20)
    got = play(ranks, [calls(big, ("recv", "float32", 4 << 20))] * 3, backend)
    for result in got[:3]:
        assert [o[1] for o in result] == ["ok", "ok"] and all(o[4] for o in result), result


LONG = [F1000, ("all_sum", "float32", 1), BARRIER, ("all_gather", "int32", 5),
        ("sum_scatter", "float64", 2), ("all_max", "int32", 70000), ("send", "int32", 7),
        ("recv", "int32", 7)]


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_matched_program_then_one_different_call(ranks, backend, size):
    # more calls than the headers that may wait (ringcomm.lone.LIMIT), in every direction,
    # all right (small sends: every rank sends first); then the last rank calls another op
    program = [("all_sum", "int32", 3)] * 40 + LONG * 3
    roles = [calls(*program, ("all_gather", "float32", 4) if r == size - 1 else F1000)
             for r in range(size)]
    got = play(ranks, roles, backend)
    for rank, result in enumerate(got[:size]):
        assert all(o[1] == "ok" and o[4] for o in result[:-1]), (rank, result[-3:])
        # a rank still in its last matched call may hear of the failure first
        assert len(result) == len(program) + 1 or "reported" in result[-1][2], \
            (rank, result[-3:])
    assert_mismatch(got, "operations differ")


def test_four_ranks_where_neither_neighbour_sends_to_the_other(ranks):
    # ranks 1 and 2 each send only away from the other (a small all_sum goes left, a barrier
    # right): each still sees the other's header, on connection 0
    got = play(ranks, [calls(F1000), calls(F1000), calls(BARRIER), calls(BARRIER)])
    assert_mismatch(got, "operations differ")
    for rank in (1, 2):  # first hand, naming both calls
        assert "all_sum(" in got[rank][-1][2] and "barrier(" in got[rank][-1][2], got[rank]


SPLIT = ("split", "uint8", 0)
LIKE_SPLIT = ("all_gather_split_record", "uint8", 0)  # split's record: shape, dtype and all


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_split_against_an_all_gather_shaped_like_its_record(ranks, backend, size):
    # split's exchange is an operation of its own: the all_gather rank must not take the
    # others' records as its result (it returned them, exit 0), nor may the others form
    # subgroups from its bytes (they timed out "connecting to 127.0.0.1:0")
    got = play(ranks, [calls(LIKE_SPLIT if r == 1 else SPLIT) for r in range(size)], backend)
    assert_mismatch(got, "split(uint8", "all_gather(uint8")


A2A = ("all_to_all", "float32", 6)  # 6 elements a block


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("theirs,names", [
    (("all_to_all", "int32", 6), ("all_to_all(float32", "all_to_all(int32")),
    (("all_to_all", "float32", 12), (("shape (12,)", "12 elements", "shape (18,)",
                                      "18 elements", "shape (24,)", "24 elements"),
                                     ("shape (24,)", "24 elements", "shape (36,)",
                                      "36 elements", "shape (48,)", "48 elements")))])
def test_all_to_all_with_another_dtype_or_size_on_one_rank(ranks, backend, size, theirs,
                                                         names):
    # on 4 ranks, rank 3 (no neighbour of rank 1) completes its ring steps and goes on to its
    # direct step with rank 1, which has failed: it must still get the MismatchError, not a
    # PeerLostError for the closed direct link
    got = play(ranks, [calls(theirs if r == 1 else A2A) for r in range(size)], backend)
    assert_mismatch(got, "operations differ", *names)


# -- random mismatched pairs -------------------------------------------------------------------

OPS = ["all_sum", "all_max", "all_gather", "sum_scatter", "barrier", "send", "recv"]
CALLS = st.tuples(st.sampled_from(OPS), st.sampled_from(["float32", "int32", "float64"]),
                  st.sampled_from([1, 2, 3, 1000, 70000, 300000]))


def _normal(call):
    op, dtype, count = call
    return ("barrier", "uint8", 1) if op == "barrier" else (op, dtype, count)


def _partner(call):
    """The call the other rank makes to match ``call``."""
    op = call[0]
    return ({"send": "recv", "recv": "send"}.get(op, op), *call[1:])


@st.composite
def mismatched(draw):
    """Two ranks' calls: a matched prefix, then one call that differs, then a barrier each."""
    prefix = [_normal(c) for c in draw(st.lists(CALLS, max_size=2))]
    mine = _normal(draw(CALLS))
    theirs = _normal(draw(CALLS.filter(lambda c: _normal(c) != _partner(_normal(mine)))))
    # two receives wait for each other's data, which neither sends: a deadlock no header can
    # reveal (nothing is sent), so it ends at the deadline; not drawn (docs/wire-protocol.md)
    if mine[0] == "recv" and theirs[0] == "recv":
        theirs = ("send", *theirs[1:]) if theirs[1:] != mine[1:] else F1000
    first = prefix + [mine, BARRIER]
    second = [_partner(c) for c in prefix] + [theirs, BARRIER]
    return first, second


@seed(int(os.environ.get("RINGCOMM_FUZZ_SEED", "15")))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: the profile
@given(pair=mismatched())
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_mismatched_pairs_end_in_mismatch_never_a_timeout_or_wrong_data(ranks, backend,
                                                                               pair):
    first, second = pair
    got = play(ranks, [calls(*first), calls(*second)], backend)
    for rank, result in enumerate(got[:2]):
        prefix = len(first) - 2
        assert [o[1] for o in result[:prefix]] == ["ok"] * prefix, (rank, result)
        assert all(o[4] is not False for o in result), ("wrong data", rank, result)
        assert result[-1][1] == "MismatchError", (rank, pair, result)
        assert result[-1][3] < BOUND, (rank, pair, result)
