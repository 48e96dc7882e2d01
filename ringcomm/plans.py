"""Schedules of the ring collectives, as plans: lists of (send range, receive range) steps.

A plan is a tuple of streams that run at the same time; a stream is a tuple of steps that run
in order, each step starting when the previous one's send and receive have both completed.
Ranges are byte offsets into one working buffer.  Building a plan touches no network, so the
schedules are checked by unit tests; ``engine.run`` executes them over any transport.

all_sum/all_max/all_min, all_gather, send and recv follow MLX's ring backend byte for byte
(``docs/wire-protocol.md``); sum_scatter is ringcomm's own reduce-scatter on the same ring.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

from .transports import Side

SUB_OP_BYTES = 262144    # MLX: one sub-operation per this many bytes (per rank), up to 2K
SMALL_SEND_BYTES = 1024  # MLX: a send/recv is cut into pieces of at least this size
PLAN_CACHE = 256         # plans kept per schedule: a plan is immutable, and a steady loop
                         # calls with the same sizes, so it is built once (O(2K * n) tuples each)


class Move(NamedTuple):
    """Bytes ``[start, stop)`` of the working buffer over connection ``conn`` on ``side``."""

    side: Side
    conn: int
    start: int
    stop: int


class Step(NamedTuple):
    send: Move | None
    recv: Move | None
    reduce: bool = False  # combine the received bytes into the range instead of overwriting
    shift: int = 0        # a reducing receive's input bytes are its range + shift in ``source``


Stream = tuple[Step, ...]
Plan = tuple[Stream, ...]
Mover = Callable[[Side, int], Move]  # (side, segment index) -> Move


@functools.lru_cache(maxsize=PLAN_CACHE)
def all_reduce(count: int, itemsize: int, size: int, rank: int, connections: int) -> Plan:
    """MLX's ring all-reduce of ``count`` elements.

    When ``count < size`` the caller pads to ``size`` zeroed elements: one sub-reduction over
    them on pair 0, direction -1.  Otherwise ``m = max(min(2K, B // (n * 262144)), 1)``
    sub-reductions of ``ceil(count/m)`` elements, on pair ``i // 2``, direction +1 for even
    ``i`` and -1 for odd, all at once.
    """
    if size == 1:
        return ()
    if count < size:
        return (_all_reduce_stream(0, size, -1, 0, itemsize, size, rank),)
    m = _sub_op_count(count * itemsize // size, connections)
    step = _ceil(count, m)
    return tuple(_all_reduce_stream(i * step, min(count, (i + 1) * step), _direction(i), i // 2,
                                    itemsize, size, rank) for i in range(m))


@functools.lru_cache(maxsize=PLAN_CACHE)
def all_gather(nbytes: int, size: int, rank: int, connections: int) -> Plan:
    """MLX's ring all-gather of ``nbytes`` per rank into a buffer of ``size * nbytes``.

    The caller copies its own block to ``[rank * nbytes, (rank + 1) * nbytes)`` first.  Each
    block is cut into ``m = max(min(2K, B // 262144), 1)`` byte ranges of ``ceil(B/m)``;
    range ``i`` travels on pair ``i // 2`` in direction +1 (even) or -1 (odd).
    """
    if size == 1:
        return ()
    m = _sub_op_count(nbytes, connections)
    length = _ceil(nbytes, m)
    return tuple(
        _ring_steps(rank, _direction(i), size, size - 1,
                    _block_mover(i // 2, nbytes, min(i * length, nbytes),
                                 min((i + 1) * length, nbytes)))
        for i in range(m))


@functools.lru_cache(maxsize=PLAN_CACHE)
def reduce_scatter(count: int, itemsize: int, size: int, rank: int, connections: int) -> Plan:
    """ringcomm's sum_scatter: the reduce-scatter phase, arranged so rank r ends with block r.

    ``count`` divides by ``size``; block ``j`` is elements ``[j*count/size, (j+1)*count/size)``
    of the input (the engine's ``source``).  Blocks are cut into sub-ranges as all_gather cuts
    its blocks; sub-reduction ``i`` reduces sub-range ``i`` of every block in direction ``d``
    (+1 even, -1 odd): step ``k`` sends block ``r + (k+1)d`` and receives block ``r + (k+2)d``,
    so that its last receive completes block ``r`` (docs/wire-protocol.md).

    The working buffer is two blocks long, not ``size``: step ``k`` folds into slot
    ``(size - 2 - k) % 2``, so the last fold lands in slot 0 (the caller's output) and each
    partial sum is sent on from the other slot while the next one is folded.  Step 0 sends
    from the input (the engine reads a stream's first send from ``source``).
    """
    if size == 1:
        return ()
    block = count // size * itemsize
    m = _sub_op_count(block, connections)
    piece = _ceil(count // size, m) * itemsize
    return tuple(_reduce_scatter_stream(min(i * piece, block), min((i + 1) * piece, block),
                                        _direction(i), i // 2, block, size, rank)
                 for i in range(m))
@functools.lru_cache(maxsize=PLAN_CACHE)
def point_to_point(nbytes: int, side: Side, connections: int, *, sending: bool) -> Plan:
    """MLX's send/recv: pieces of ``max(1024, ceil(B/K))`` bytes, piece ``i`` on connection ``i``."""
    piece = max(SMALL_SEND_BYTES, _ceil(nbytes, connections))
    moves = (Move(side, i, i * piece, min(nbytes, (i + 1) * piece))
             for i in range(connections) if i * piece < nbytes)
    return tuple((Step(m, None) if sending else Step(None, m),) for m in moves)


def _all_reduce_stream(lo: int, hi: int, direction: int, pair: int, itemsize: int, size: int,
                       rank: int) -> Stream:
    """One sub-reduction over elements [lo, hi): n-1 reducing steps, then n-1 copying steps."""
    count = hi - lo
    seg = _ceil(count, size)

    def move(side: Side, j: int) -> Move:
        return Move(side, pair, (lo + min(j * seg, count)) * itemsize,
                    (lo + min((j + 1) * seg, count)) * itemsize)

    last = (rank + (size - 1) * direction) % size  # where phase 1 left the send index
    return (_ring_steps(rank, direction, size, size - 1, move, reduce=True)
            + _ring_steps(last, direction, size, size - 1, move))


def _reduce_scatter_stream(lo: int, hi: int, direction: int, pair: int, block: int, size: int,
                           rank: int) -> Stream:
    """Bytes [lo, hi) of every block, reduced around the ring into slot 0 of the work buffer."""
    send_side, recv_side = _sides(direction)
    steps = []
    for k in range(size - 1):
        slot, sending = (size - 2 - k) % 2, (rank + (k + 1) * direction) % size
        arriving = (rank + (k + 2) * direction) % size
        start = sending * block if k == 0 else (1 - slot) * block  # input, then the last fold
        steps.append(Step(Move(send_side, pair, start + lo, start + hi),
                          Move(recv_side, pair, slot * block + lo, slot * block + hi),
                          reduce=True, shift=(arriving - slot) * block))
    return tuple(steps)


def _ring_steps(first_send: int, direction: int, size: int, count: int, move: Mover,
                reduce: bool = False) -> Stream:
    """``count`` steps that send segment ``s`` and receive segment ``s + d``, then advance by d."""
    send_side, recv_side = _sides(direction)
    steps = []
    s = first_send
    for _ in range(count):
        steps.append(Step(move(send_side, s), move(recv_side, (s + direction) % size), reduce))
        s = (s + direction) % size
    return tuple(steps)


def _block_mover(pair: int, block_bytes: int, lo: int, hi: int) -> Mover:
    """Moves of byte range [lo, hi) within block ``j`` of a buffer of equal blocks."""
    return lambda side, j: Move(side, pair, j * block_bytes + lo, j * block_bytes + hi)


def _direction(i: int) -> int:
    return 1 if i % 2 == 0 else -1


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _sides(direction: int) -> tuple[Side, Side]:
    """(send side, receive side): direction +1 sends left and receives from the right."""
    return (Side.LEFT, Side.RIGHT) if direction > 0 else (Side.RIGHT, Side.LEFT)


def _sub_op_count(nbytes: int, connections: int) -> int:
    return max(min(2 * connections, nbytes // SUB_OP_BYTES), 1)


BROADCAST_CHUNKS = 32  # a broadcast stream is cut into at most this many pipelined chunks ...
BROADCAST_CHUNK_MIN = SUB_OP_BYTES  # ... of at least this many bytes


@functools.lru_cache(maxsize=PLAN_CACHE)
def broadcast(nbytes: int, size: int, rank: int, root: int, connections: int) -> Plan:
    """ringcomm's pipelined ring broadcast of ``root``'s ``nbytes``: every link carries each
    byte once.  The buffer is cut as all_gather cuts a block (``m`` sub-ranges, range ``i`` on
    pair ``i // 2``, direction +1 for even ``i``, -1 for odd): each range flows down a chain
    from the root (direction d: ``root -> root - d -> root - 2d ...``), cut into chunks of
    ``max(256 KiB, ceil(range / 32))``.  A rank in the middle receives chunk 0, then sends
    chunk c - 1 while it receives chunk c, then sends the last: ``chunks + 1`` steps, after a
    first step that carries only the operation header.  The root only sends, the chain's
    last rank only receives (docs/wire-protocol.md)."""
    if size == 1:
        return ()
    m = _sub_op_count(nbytes, connections)
    length = _ceil(nbytes, m)
    return tuple(_broadcast_stream(min(i * length, nbytes), min((i + 1) * length, nbytes),
                                   _direction(i), i // 2, size, rank, root) for i in range(m))


def _broadcast_stream(lo: int, hi: int, direction: int, pair: int, size: int, rank: int,
                      root: int) -> Stream:
    send_side, recv_side = _sides(direction)
    position = ((root - rank) * direction) % size  # 0: the root; size - 1: the chain's end
    chunk = max(BROADCAST_CHUNK_MIN, _ceil(hi - lo, BROADCAST_CHUNKS))
    cuts = [(a, min(a + chunk, hi)) for a in range(lo, hi, chunk)] or [(lo, hi)]
    sends = [Move(send_side, pair, a, b) for a, b in cuts]
    recvs = [Move(recv_side, pair, a, b) for a, b in cuts]
    # step 0 moves no data, only the operation header (the engine sends it with a stream's
    # first send and takes it with its first receive): every rank's first step then has the
    # send and the receive the header needs, and every later send matches one receive
    head_out = None if position == size - 1 else Move(send_side, pair, lo, lo)
    head_in = None if position == 0 else Move(recv_side, pair, lo, lo)
    if position == 0:
        return (Step(head_out, None),) + tuple(Step(s, None) for s in sends)
    if position == size - 1:
        return (Step(None, head_in),) + tuple(Step(None, r) for r in recvs)
    return (Step(head_out, head_in),) + tuple(Step(s, r) for s, r in
                                              zip([None, *sends], [*recvs, None]))


@functools.lru_cache(maxsize=PLAN_CACHE)
def all_to_all_ring(block: int, size: int, rank: int, connections: int) -> Plan:
    """The neighbour steps of ringcomm's pairwise all_to_all (``block`` bytes per rank): step
    k = 1 sends block ``rank + 1`` right and receives block ``rank - 1`` from the left; step
    k = size - 1 the reverse (with 2 ranks they are one step).  Each block is cut as MLX's
    send (``point_to_point``), piece i on connection i.  One step per stream: its send reads
    the caller's input (the engine's ``source``), its receive writes the output."""
    if size == 1:
        return ()
    ways = [(Side.RIGHT, Side.LEFT, 1)] + ([(Side.LEFT, Side.RIGHT, -1)] if size > 2 else [])
    streams = []
    for send_side, recv_side, k in ways:
        out, into = ((rank + k) % size) * block, ((rank - k) % size) * block
        for piece in point_to_point(block, send_side, connections, sending=True):
            m = piece[0].send
            streams.append((Step(Move(send_side, m.conn, out + m.start, out + m.stop),
                                 Move(recv_side, m.conn, into + m.start, into + m.stop)),))
    return tuple(streams)


def pairwise(size: int, rank: int) -> tuple[tuple[int, int, int], ...]:
    """ringcomm's all_to_all beyond the neighbours: (k, send to, receive from) for the steps
    k = 2 .. size - 2, in order, each over the direct connections (``transports.direct``)."""
    return tuple((k, (rank + k) % size, (rank - k) % size) for k in range(2, size - 1))



@functools.lru_cache(maxsize=PLAN_CACHE)
def gather(nbytes: int, size: int, rank: int, root: int, connections: int) -> Plan:
    """ringcomm's chain gather of ``nbytes`` per rank into ``root``'s buffer of ``size *
    nbytes`` (block j: rank j's; each rank copies its own block in first).  Each block is cut
    as all_gather cuts it (range ``i`` on pair ``i // 2``, direction +1 for even ``i``, -1 for
    odd), and each range flows down a chain into the root (direction d: ``root + (n-1)d ->
    ... -> root + d -> root``).  The rank at position p of the chain sends its own block and
    receives the next one's, then forwards each block the step after it came: ``n - p``
    steps; the root only receives (n-1 steps).  The links into the root carry (n-1) blocks,
    half each way, which no schedule can beat; no rank touches a direct link."""
    if size == 1:
        return ()
    return _chains(nbytes, size, rank, root, connections, _gather_stream)


@functools.lru_cache(maxsize=PLAN_CACHE)
def scatter(nbytes: int, size: int, rank: int, root: int, connections: int) -> Plan:
    """ringcomm's chain scatter of ``root``'s buffer of ``size * nbytes`` (block j for rank
    j), the gather's mirror: ranges and chains as ``gather``; the root sends the farthest
    rank's block first, each rank forwards what it received the step before and keeps its
    own, which comes last: ``n - p`` steps at position p, ``n - 1`` sends at the root,
    after a first step that carries only the operation header."""
    if size == 1:
        return ()
    return _chains(nbytes, size, rank, root, connections, _scatter_stream)


def _chains(nbytes: int, size: int, rank: int, root: int, connections: int,
            stream: Callable[..., Stream]) -> Plan:
    m = _sub_op_count(nbytes, connections)
    length = _ceil(nbytes, m)
    return tuple(stream(_block_mover(i // 2, nbytes, min(i * length, nbytes),
                                     min((i + 1) * length, nbytes)),
                        _direction(i), size, rank, root) for i in range(m))


def _gather_stream(move: Mover, direction: int, size: int, rank: int, root: int) -> Stream:
    """Position p (``rank = root + p * direction``: direction +1 sends left, toward the
    root) sends block p + s and receives block p + s + 1 at step s, one hop a step."""
    send_side, recv_side = _sides(direction)
    position = ((rank - root) * direction) % size
    block = lambda q: (root + q * direction) % size  # the rank at position q
    return tuple(Step(move(send_side, block(q)) if position else None,
                      move(recv_side, block(q + 1)) if q + 1 < size else None)
                 for q in range(position, size) if q + 1 < size or position)


def _scatter_stream(move: Mover, direction: int, size: int, rank: int, root: int) -> Stream:
    """The root sends the blocks of positions n-1 .. 1 (``rank = root - p * direction``:
    direction +1 sends left); position p receives them in that order down to its own,
    sending each on (but its own) the step after.  A first step moves only the operation
    header (as in ``broadcast``): a rank in the middle sends from its second data step on,
    and the engine sends the header with a stream's first send, takes it with its first
    receive."""
    send_side, recv_side = _sides(direction)
    position = ((root - rank) * direction) % size  # away from the root, on the send side
    block = lambda q: (root - q * direction) % size  # the rank at position q
    first = move(send_side, block(size - 1))
    head_out = None if position == size - 1 else Move(send_side, first.conn, first.start,
                                                      first.start)
    head_in = None if position == 0 else Move(recv_side, first.conn, first.start, first.start)
    if position == 0:
        return (Step(head_out, None),) + tuple(Step(move(send_side, block(q)), None)
                                               for q in range(size - 1, 0, -1))
    return ((Step(head_out, head_in), Step(None, move(recv_side, block(size - 1))))
            + tuple(Step(move(send_side, block(q + 1)), move(recv_side, block(q)))
                    for q in range(size - 2, position - 1, -1)))
