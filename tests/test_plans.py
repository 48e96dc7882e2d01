"""The schedules, checked without a network.

A lockstep simulator plays every rank's plan at once over simulated byte streams, one per
socket direction (rank r's RIGHT[i] is rank r+1's LEFT[i]): each step's sends are queued,
then each receive must find exactly its bytes waiting.  This proves that the plans pair up
on the wire and compute the right result; the formulas are checked against the spec.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from ringcomm import plans
from ringcomm.plans import SUB_OP_BYTES, Move, Side


def simulate(rank_plans: list[plans.Plan], buffers: list[np.ndarray], ufunc=None,
             sources: list[np.ndarray] | None = None) -> dict:
    """Run the ranks' plans in lockstep; return the bytes carried by each socket direction.

    With ``sources`` (the engine's ``source``), first sends read them and folds combine them
    (at the receive range + the step's shift) with what arrives, as ``engine.run`` does."""
    size = len(rank_plans)
    wire: dict[tuple[int, Side, int], bytearray] = {}
    carried: dict[tuple[int, Side, int], int] = {}

    def dest(rank: int, m: Move) -> tuple[int, Side, int]:
        peer = (rank + (1 if m.side is Side.RIGHT else -1)) % size
        return peer, Side.LEFT if m.side is Side.RIGHT else Side.RIGHT, m.conn

    streams = {len(p) for p in rank_plans}
    assert len(streams) == 1, "ranks disagree on the number of streams"
    for s in range(streams.pop()):
        lengths = {len(p[s]) for p in rank_plans}
        assert len(lengths) == 1, "ranks disagree on a stream's number of steps"
    depth = max((len(stream) for p in rank_plans for stream in p), default=0)
    for t in range(depth):
        for r, plan in enumerate(rank_plans):
            raw = buffers[r].view(np.uint8)
            first = raw if sources is None else sources[r].view(np.uint8)
            for stream in plan:
                if t < len(stream) and stream[t].send is not None:
                    m = stream[t].send
                    data = (first if t == 0 else raw)[m.start:m.stop]
                    wire.setdefault(dest(r, m), bytearray()).extend(data.tobytes())
                    carried[(r, m.side, m.conn)] = carried.get((r, m.side, m.conn), 0) + m.stop - m.start
        for r, plan in enumerate(rank_plans):
            raw = buffers[r].view(np.uint8)
            for stream in plan:
                if t >= len(stream) or stream[t].recv is None:
                    continue
                m, n = stream[t].recv, stream[t].recv.stop - stream[t].recv.start
                queue = wire.get((r, m.side, m.conn), bytearray())
                assert len(queue) >= n, f"rank {r} step {t}: receive of {n} bytes finds {len(queue)}"
                data = np.frombuffer(bytes(queue[:n]), np.uint8)
                del queue[:n]
                if stream[t].reduce:
                    item, shift = buffers[r].itemsize, stream[t].shift
                    dst = buffers[r][m.start // item:m.stop // item]
                    src = dst if sources is None else \
                        sources[r][(m.start + shift) // item:(m.stop + shift) // item]
                    ufunc(src, data.view(buffers[r].dtype), out=dst)
                else:
                    raw[m.start:m.stop] = data
    assert all(not q for q in wire.values()), "bytes were sent that nobody received"
    return carried


@given(size=st.integers(2, 9), connections=st.integers(1, 3),
       count=st.one_of(st.integers(0, 100), st.integers(SUB_OP_BYTES // 4, 13 * SUB_OP_BYTES // 4)))
def test_all_reduce_plan_sums_on_every_rank(size, connections, count):
    padded = max(count, size)
    inputs = [np.arange(padded, dtype=np.int32) * (r + 1) for r in range(size)]
    bufs = [x.copy() for x in inputs]
    simulate([plans.all_reduce(count, 4, size, r, connections) for r in range(size)], bufs, np.add)
    for b in bufs:
        np.testing.assert_array_equal(b, sum(inputs))


@given(size=st.integers(2, 9), connections=st.integers(1, 3),
       nbytes=st.one_of(st.integers(0, 100), st.integers(SUB_OP_BYTES - 3, 7 * SUB_OP_BYTES)))
def test_all_gather_plan_gathers_every_block(size, connections, nbytes):
    blocks = [np.full(nbytes, r + 1, np.uint8) for r in range(size)]
    bufs = []
    for r in range(size):
        b = np.zeros(size * nbytes, np.uint8)
        b[r * nbytes:(r + 1) * nbytes] = blocks[r]
        bufs.append(b)
    simulate([plans.all_gather(nbytes, size, r, connections) for r in range(size)], bufs)
    for b in bufs:
        np.testing.assert_array_equal(b, np.concatenate(blocks))


@given(size=st.integers(2, 9), connections=st.integers(1, 3),
       block=st.one_of(st.integers(0, 50), st.integers(SUB_OP_BYTES // 8, SUB_OP_BYTES)))
def test_reduce_scatter_plan_leaves_block_r_on_rank_r(size, connections, block):
    inputs = [np.arange(size * block, dtype=np.int64) + 1000 * r for r in range(size)]
    bufs = [np.full(2 * block, -1, np.int64) for _ in range(size)]  # two blocks, not n
    simulate([plans.reduce_scatter(size * block, 8, size, r, connections) for r in range(size)],
             bufs, np.add, sources=[x.copy() for x in inputs])
    total = sum(inputs)
    for r, b in enumerate(bufs):
        np.testing.assert_array_equal(b[:block], total[r * block:(r + 1) * block])


@pytest.mark.parametrize("nbytes,connections,pieces", [
    (0, 2, []), (10, 1, [(0, 10)]), (1500, 2, [(0, 1024), (1024, 1500)]),
    (4096, 2, [(0, 2048), (2048, 4096)]), (5, 3, [(0, 5)]), (3001, 3, [(0, 1024), (1024, 2048), (2048, 3001)])])
def test_point_to_point_pieces_follow_mlx(nbytes, connections, pieces):
    plan = plans.point_to_point(nbytes, Side.RIGHT, connections, sending=True)
    assert [(s[0].send.start, s[0].send.stop) for s in plan] == pieces
    assert [s[0].send.conn for s in plan] == list(range(len(pieces)))


@pytest.mark.parametrize("count,itemsize,size,connections,subs", [
    (1, 4, 2, 1, 1),                              # count < size: one padded sub-reduction
    (2 * SUB_OP_BYTES // 4 - 1, 4, 2, 1, 1),      # just under 256 KiB per rank
    (2 * SUB_OP_BYTES // 4, 4, 2, 1, 1),
    (4 * SUB_OP_BYTES // 4, 4, 2, 1, 2),          # 2 * 256 KiB per rank: both directions
    (100 * SUB_OP_BYTES, 4, 2, 2, 4),             # capped at 2K
    (100 * SUB_OP_BYTES, 4, 4, 3, 6),
])
def test_sub_reduction_count_and_sockets(count, itemsize, size, connections, subs):
    plan = plans.all_reduce(count, itemsize, size, 0, connections)
    assert len(plan) == subs
    for i, stream in enumerate(plan):
        send_side = Side.LEFT if (i % 2 == 0 and count >= size) else Side.RIGHT
        assert {s.send.side for s in stream} == {send_side}
        assert {s.send.conn for s in stream} == {i // 2}
        assert len(stream) == 2 * (size - 1)
        assert [s.reduce for s in stream] == [True] * (size - 1) + [False] * (size - 1)


def test_first_steps_of_a_three_rank_all_reduce():
    # 9 elements of 4 bytes, 3 ranks, direction +1: segments of 3 elements, rank 1 sends
    # segment 1 (bytes 12-24) left and receives segment 2 (bytes 24-36) from the right.
    plan = plans.all_reduce(9, 4, 3, 1, 1)
    first = plan[0][0]
    assert first.send == Move(Side.LEFT, 0, 12, 24) and first.recv == Move(Side.RIGHT, 0, 24, 36)
    assert first.reduce
    # all-gather phase begins by sending the segment phase 1 completed: segment 0 at rank 1
    assert plan[0][2].send == Move(Side.LEFT, 0, 0, 12)


def test_size_one_needs_no_plan():
    assert plans.all_reduce(10, 4, 1, 0, 1) == ()
    assert plans.all_gather(10, 1, 0, 1) == ()
    assert plans.reduce_scatter(10, 4, 1, 0, 1) == ()


def _forwarding_holds(plan: plans.Plan) -> None:
    """What ``engine.run(..., source=...)`` relies on: in every stream, step k+1 sends exactly
    the bytes step k received; the folds read each input byte at most once (so ``work =
    source op received`` needs no copy of the input first); and no step receives into the
    bytes its own send reads."""
    def disjoint(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] >= a[1] or b[0] >= b[1] or a[1] <= b[0] or b[1] <= a[0]

    for stream in plan:
        folded: list[tuple[int, int]] = []
        for k, step in enumerate(stream):
            recv = None if step.recv is None else (step.recv.start, step.recv.stop)
            if k > 0:
                before = stream[k - 1].recv
                assert step.send is not None and before is not None
                assert (step.send.start, step.send.stop) == (before.start, before.stop)
                assert recv is None or disjoint(recv, (step.send.start, step.send.stop))
            if recv is not None and step.reduce:
                read = (recv[0] + step.shift, recv[1] + step.shift)
                assert all(disjoint(read, f) for f in folded), "an input byte folded twice"
                folded.append(read)


@given(size=st.integers(2, 9), connections=st.integers(1, 3),
       count=st.one_of(st.integers(0, 100), st.integers(SUB_OP_BYTES // 4, 13 * SUB_OP_BYTES // 4)))
def test_plans_forward_what_they_received(size, connections, count):
    for r in range(size):
        _forwarding_holds(plans.all_reduce(count, 4, size, r, connections))
        _forwarding_holds(plans.all_gather(count, size, r, connections))
        _forwarding_holds(plans.reduce_scatter(size * count, 4, size, r, connections))


def simulate_async(rank_plans: list[plans.Plan], buffers: list[np.ndarray],
                   sources: list[np.ndarray] | None = None) -> dict:
    """Like ``simulate``, but each stream of each rank advances on its own, as ``engine.run``
    lets it: a step runs once the bytes its receive wants are on the wire (sends never wait).
    Pipelined plans (broadcast), whose ranks start at different times, need this; every
    receive must take exactly the bytes of one send, and every plan must end."""
    size = len(rank_plans)
    wire: dict[tuple[int, Side, int], list[bytes]] = {}
    carried: dict[tuple[int, Side, int], int] = {}
    index = [[0] * len(p) for p in rank_plans]

    def dest(rank: int, m: Move) -> tuple[int, Side, int]:
        peer = (rank + (1 if m.side is Side.RIGHT else -1)) % size
        return peer, Side.LEFT if m.side is Side.RIGHT else Side.RIGHT, m.conn

    moved = True
    while moved:
        moved = False
        for r, plan in enumerate(rank_plans):
            raw = buffers[r].view(np.uint8)
            for s, stream in enumerate(plan):
                t = index[r][s]
                if t == len(stream):
                    continue
                step = stream[t]
                if step.recv is not None:
                    queue = wire.get((r, step.recv.side, step.recv.conn))
                    if not queue:
                        continue
                    data = queue.pop(0)
                    m = step.recv
                    assert len(data) == m.stop - m.start, f"rank {r}: a receive of " \
                        f"{m.stop - m.start} bytes meets a send of {len(data)}"
                if step.send is not None:
                    m = step.send
                    src = raw if sources is None or t else sources[r].view(np.uint8)
                    wire.setdefault(dest(r, m), []).append(src[m.start:m.stop].tobytes())
                    key = (r, m.side, m.conn)
                    carried[key] = carried.get(key, 0) + m.stop - m.start
                if step.recv is not None:
                    raw[step.recv.start:step.recv.stop] = np.frombuffer(data, np.uint8)
                index[r][s] += 1
                moved = True
    for r, plan in enumerate(rank_plans):
        assert index[r] == [len(st) for st in plan], f"rank {r} is stuck (deadlock)"
    assert all(not q for q in wire.values()), "bytes were sent that nobody received"
    return carried


@given(size=st.integers(2, 9), connections=st.integers(1, 3), root=st.integers(0, 8),
       nbytes=st.one_of(st.integers(0, 100), st.integers(SUB_OP_BYTES - 3, 40 * SUB_OP_BYTES)))
def test_broadcast_plan_gives_every_rank_the_root_bytes_once_per_link(size, connections, root,
                                                                      nbytes):
    root %= size
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    bufs = [data.copy() if r == root else np.zeros(nbytes, np.uint8) for r in range(size)]
    carried = simulate_async([plans.broadcast(nbytes, size, r, root, connections)
                              for r in range(size)], bufs)
    for b in bufs:
        np.testing.assert_array_equal(b, data)
    # every byte crosses n - 1 links exactly once: n - 1 sends of nbytes in all
    assert sum(carried.values()) == (size - 1) * nbytes
    m = plans._sub_op_count(nbytes, connections)
    if nbytes >= 2 * plans.BROADCAST_CHUNK_MIN * m:  # pipelined: more than one chunk a chain
        assert max(len(s) for s in plans.broadcast(nbytes, size, root, root, connections)) > 2


@given(size=st.integers(2, 9), connections=st.integers(1, 3),
       block=st.one_of(st.integers(0, 50), st.integers(1000, 5000)))
def test_all_to_all_pairwise_schedule_delivers_block_j_to_rank_j(size, connections, block):
    inputs = [np.random.default_rng([r, block]).integers(0, 256, size * block, dtype=np.uint8)
              for r in range(size)]
    outs = [np.zeros(size * block, np.uint8) for _ in range(size)]
    for r in range(size):  # a rank's own block, as Group.all_to_all copies it
        outs[r][r * block:(r + 1) * block] = inputs[r][r * block:(r + 1) * block]
    simulate([plans.all_to_all_ring(block, size, r, connections) for r in range(size)], outs,
             sources=inputs)
    steps = [plans.pairwise(size, r) for r in range(size)]
    for r in range(size):  # the direct steps: rank r's step k meets rank r + k's step k
        for k, to, frm in steps[r]:
            assert (k, (to + k) % size, r) == steps[to][k - 2]
            outs[to][r * block:(r + 1) * block] = inputs[r][to * block:(to + 1) * block]
    for r in range(size):
        want = np.concatenate([inputs[j][r * block:(r + 1) * block] for j in range(size)])
        np.testing.assert_array_equal(outs[r], want)
    covered = {1, size - 1} | {k for k, _, _ in steps[0]}
    assert covered == set(range(1, size))  # every other rank once: ring or direct
