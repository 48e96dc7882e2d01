"""Runs a plan over a transport: post each stream's step, reduce what arrives, advance.

With an operation header (ringcomm protocol), each stream's first send carries the header
ahead of its data (one vectored send: no copy), and its first receive takes the peer's header
with the first piece of data.  ``heads`` names the connection-0 channels on which the header
must go out and come in whatever the plan uses (a collective: both ways to both neighbours),
so that ranks in different operations always see each other's header; where no stream starts,
the header goes alone and waits (``lone``): for the next data on that connection, for every
``lone.LIMIT``-th, or until this rank sleeps in a call, when it goes, and the headers that
wait here from the neighbours are checked where they wait (``transports.arrivals``).
A received header is checked as soon as any byte of it is in (the transport reports
``HEAD``), so a peer in another operation is caught before this rank waits for data it will
not send, and always before any received byte is folded or the call returns.

A plan of one stream whose reducing receives each fit one scratch piece (a small collective)
runs in ``single.run``'s plain loop instead: the same bytes and checks, less Python.

Receives that must be combined land in a per-stream scratch buffer, ``SCRATCH_BYTES`` at a
time, and are folded into the working buffer (``np.add(..., out=...)`` for sums) as each
piece completes; everything else is received straight into the working buffer.  Extra memory
per call is therefore at most ``streams * SCRATCH_BYTES`` (streams <= 2K), reused across calls.

``source``: the caller's input (same dtype as ``work``), when ``work`` does not hold a copy of
it.  Every plan of ``plans`` sends, at step ``k + 1`` of a stream, exactly the bytes that step
``k`` received; its folds read each input byte at most once; and a step never receives into
the bytes its own send reads (``tests/test_plans.py`` checks all three).  So with a
``source``, a stream's first send reads ``source``, and a reducing receive writes ``work =
source[range + step.shift] op received``: the input is never copied into the output, which
saves a full pass over memory per call (and lets sum_scatter work in two blocks, not n).  An
all_gather's input is this rank's block alone, at ``source_at``; its copy into the output is
the caller's ``meanwhile``, made while the first transfers move.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np

from .transports import Channel, Kind, Side, Transport
from .transports.arrivals import HEAD

from . import plans, single
from .dtypes import Combine
from .lone import Alone, Idle, report
from .plans import Move, Plan, Step

HeaderCheck = Callable[[bytes, Side, bytes], None]  # (theirs, side, ours)
NextVet = Callable[[Side, bytes], list[tuple[int, int]]]  # -> (connection, bytes) to read ahead
Heads = tuple[tuple[Side, ...], tuple[Side, ...]]  # sides the header goes to, comes from
BOTH_SIDES = (Side.LEFT, Side.RIGHT)
COLLECTIVE: Heads = (BOTH_SIDES, BOTH_SIDES)  # every rank takes part: both neighbours, both ways
NO_HEADS: Heads = ((), ())
_NOTHING: tuple[list, list] = ([], [])

SCRATCH_BYTES = 1 << 20
WINDOW_BYTES = 2 << 20  # streams run at once while their bytes fit in this (but at least 2)
MIN_ACTIVE = 2          # one per direction
_SEND, _RECV = Kind.SEND, Kind.RECV


class _Stream:
    __slots__ = ("steps", "index", "pending", "recv_pos", "chunk", "scratch", "typed",
                 "header_in", "want")

    def __init__(self, steps: tuple[Step, ...], scratch: np.ndarray) -> None:
        self.steps = steps
        self.index = 0
        self.pending = 0
        self.recv_pos = 0  # next byte of a reducing receive still to be posted
        self.chunk = 0     # bytes of the reducing receive in flight
        self.scratch = scratch
        self.typed: np.ndarray | None = None  # scratch seen as the element type
        self.header_in: bytearray | None = None  # the peer's header, arriving before the data
        self.want = b""  # what header_in must be: ours (after any that waited)


class ScratchPool:
    """Reusable receive scratch, one buffer per concurrent stream, so steady loops allocate nothing."""

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []

    def first(self) -> np.ndarray:
        return self._buffers[0] if self._buffers else self.get(1)[0]

    def get(self, count: int) -> list[np.ndarray]:
        while len(self._buffers) < count:
            self._buffers.append(np.empty(SCRATCH_BYTES, np.uint8))
        return self._buffers[:count]


def run(transport: Transport, plan: Plan, work: np.ndarray, combine: Combine | None,
        deadline: float, scratch: ScratchPool, header: bytes | None = None,
        check: HeaderCheck | None = None, source: np.ndarray | None = None,
        heads: Heads = NO_HEADS, alone: Alone | None = None, vet: NextVet | None = None,
        source_at: int = 0, meanwhile: Callable[[], None] | None = None) -> None:
    """Execute ``plan`` on ``work`` (1-D, C-contiguous; its dtype is the element type).

    ``header`` leads every stream's first send and goes out and comes in on connection 0 of
    ``heads`` (alone where no stream starts: ``lone``, whose state ``alone`` keeps);
    ``check(got, side, want)`` vets the peer's (``want``: ours, when not ``header``).
    ``vet`` judges what arrives, while this rank sleeps, on connection 0 of the sides a send
    or recv reads nothing from (``transports.arrivals``).  ``source`` (optional, see the
    module's doc) is the input when ``work`` is not a copy of it, and ``source_at`` the byte
    of ``work`` its first byte stands for (all_gather: this rank's block).  ``meanwhile`` runs
    once the first sends and receives are posted, while their bytes move (all_gather: the copy
    of this rank's block into the output, which no send then reads).
    """
    if len(plan) == 1 and vet is None and (header is None or heads is COLLECTIVE or
                                           heads is NO_HEADS):
        lone = _shape(plan)[2]
        if lone is not None:  # a small collective, or a lane's one stream: less Python
            return single.run(transport, plan[0], work, combine, deadline, scratch.first(),
                              header, check, source, alone,
                              lone if header is not None and heads is COLLECTIVE else NO_HEADS,
                              source_at, meanwhile)
    _streams(transport, plan, work, combine, deadline, scratch, header, check, source, heads,
             alone, vet, source_at, meanwhile)


def _streams(transport: Transport, plan: Plan, work: np.ndarray, combine: Combine | None,
             deadline: float, scratch: ScratchPool, header: bytes | None,
             check: HeaderCheck | None, source: np.ndarray | None, heads: Heads,
             alone: Alone | None, vet: NextVet | None, source_at: int,
             meanwhile: Callable[[], None] | None) -> None:
    """``run`` of any plan (apart, so that a small collective's call does not make the
    closures' cells this needs)."""
    if header is None:
        alone = None
    lone_out, lone_in = _header_only(plan, heads) if header is not None else NO_HEADS
    if not plan and not lone_out and not lone_in:
        if meanwhile is not None:
            meanwhile()
        return
    send_now, take_now = alone.begin(header, lone_out, lone_in, heads is not COLLECTIVE) \
        if lone_out or lone_in else _NOTHING
    raw = memoryview(work.view(np.uint8))
    first_raw = raw if source is None else memoryview(source.view(np.uint8))
    itemsize = work.itemsize
    dtype = work.dtype
    post_send, post_recv = transport.post_send, transport.post_recv
    owner: dict[Channel, _Stream] = {}
    lone = 0  # header-only messages in flight

    def start(st: _Stream) -> None:
        step = st.steps[st.index]
        st.pending = 0
        first = st.index == 0
        with_header = header is not None and first
        s = step.send
        if s is not None:
            owner[Channel(s.side, s.conn, _SEND)] = st
            st.pending += 1
            head = None
            if with_header:  # (after the headers waiting to go there)
                head = header if alone is None else alone.lead(s.side, s.conn, header)
            post_send(s.side, s.conn, first_raw[s.start - source_at:s.stop - source_at]
                      if first else raw[s.start:s.stop], head)
        r = step.recv
        if r is not None:
            owner[Channel(r.side, r.conn, _RECV)] = st
            st.pending += 1
            if with_header:  # the peer's header arrives with the first piece of data; it
                # starts as ours, so any byte that differs shows at once
                want = header if alone is None else alone.expect(r.side, r.conn, header)
                st.want, st.header_in = want, bytearray(want)
            if step.reduce and r.stop > r.start:
                st.recv_pos = r.start
                post_reduce_chunk(st, r)
            else:
                post_recv(r.side, r.conn, raw[r.start:r.stop], st.header_in)

    def post_reduce_chunk(st: _Stream, r) -> None:
        st.chunk = min(r.stop - st.recv_pos, SCRATCH_BYTES)
        post_recv(r.side, r.conn, memoryview(st.scratch)[:st.chunk], st.header_in)

    def fold(lo: int, n: int, received: np.ndarray, shift: int) -> None:
        """``work[lo:lo+n] = (source[lo+shift:] or work[lo:])[:n] op received``, elements."""
        combine(work[lo:lo + n], received,
                None if source is None else source[lo + shift:lo + shift + n])

    def differ(want: bytes, got: bytes | bytearray, side: Side) -> None:
        report(check, want, got, side)

    def early(ch: Channel) -> None:
        """Some of a peer's header is in, its data not yet: check what differs now."""
        st = owner.get(Channel(ch.side, ch.conn, _RECV))
        got = st.header_in if st is not None else None
        if got is not None and got != st.want:
            differ(st.want, got, ch.side)

    def received(st: _Stream) -> bool:
        """Fold a completed scratch piece into ``work``; False while the step wants more."""
        step = st.steps[st.index]
        r = step.recv
        if st.header_in is not None:  # vet the peer's header before its bytes are used
            got, st.header_in = st.header_in, None
            if got != st.want:
                differ(st.want, got, r.side)
        if not step.reduce or r.stop == r.start:
            return True
        typed = st.typed
        if typed is None:
            typed = st.typed = st.scratch.view(dtype)
        n = st.chunk // itemsize
        fold(st.recv_pos // itemsize, n, typed[:n], step.shift // itemsize)
        st.recv_pos += st.chunk
        if st.recv_pos < r.stop:
            post_reduce_chunk(st, r)
            return False
        return True

    def send_alone(side: Side, data: bytes) -> None:
        nonlocal lone
        st = owner[Channel(side, 0, _SEND)] = _Stream(_ALONE[side, _SEND], None)
        st.pending = 1
        lone += 1
        post_send(side, 0, memoryview(data))  # plain bytes: no head

    def take_alone(side: Side, want: bytes) -> None:
        nonlocal lone
        st = _Stream(_ALONE[side, _RECV], None)
        st.pending, st.want, st.header_in = 1, want, bytearray(want)
        owner[Channel(side, 0, _RECV)] = st
        lone += 1
        post_recv(side, 0, raw[0:0], st.header_in)

    quiet = () if vet is None else _QUIET[heads[1]]
    watched = lone_in if not take_now and not quiet else \
        tuple(dict.fromkeys(lone_in + tuple(take_now) + quiet))
    if watched or (alone is not None and (alone.out[0] or alone.out[1])):
        idle = Idle(transport, alone, quiet, vet, check, send_alone)
        transport.vet_idle(watched, idle.judge, idle.stuck)
        watching = True
    else:
        watching = False
    try:
        # Streams start in plan order, at most a window of them at a time (the lowest
        # unfinished stream is always running on every rank, so every rank makes progress):
        # a stream's bytes then stay in cache from the step that receives them to the step
        # that sends them on.
        sizes, window = _layout(plan)
        free = scratch.get(window)[::-1]
        waiting = list(reversed(range(len(plan))))
        active = 0
        in_flight = 0

        def admit() -> None:
            nonlocal active, in_flight
            while waiting and (active < window and (
                    active < MIN_ACTIVE or in_flight + sizes[waiting[-1]] <= WINDOW_BYTES)):
                i = waiting.pop()
                st = _Stream(plan[i], free.pop())
                active += 1
                in_flight += sizes[i]
                start(st)

        if window == len(plan):  # every stream at once (always so for small messages)
            waiting.clear()
            for i, steps in enumerate(plan):
                start(_Stream(steps, free.pop()))
            active = len(plan)
        wait = transport.wait
        # inf - inf is a NaN like any other here, as in MLX: no warnings from the reductions
        with (np.errstate(all="ignore") if combine is not None else _NO_CONTEXT):
            admit()
            for side, data in send_now:  # after the data: in the time spent waiting for it
                send_alone(side, data)
            if meanwhile is not None:
                meanwhile()
            while True:
                if not active:
                    for side in take_now:  # the plan is done: they are in by now
                        if alone.into[side]:  # (unless checked while this rank slept)
                            take_alone(side, alone.take_in(side))
                    take_now = ()
                    if not lone:
                        break
                for ch in wait(deadline):
                    if ch.kind is HEAD:
                        early(ch)
                        continue
                    st = owner[ch]
                    if ch.kind is _RECV and not received(st):
                        continue
                    st.pending -= 1
                    if st.pending == 0:
                        st.index += 1
                        if st.index < len(st.steps):
                            start(st)
                        elif st.scratch is None:  # a header-only message
                            lone -= 1
                            del owner[ch]
                        else:
                            active -= 1
                            free.append(st.scratch)
                            st.typed = None
                            if waiting:  # (large plans only)
                                in_flight -= _stream_bytes(st.steps)
                                admit()
    finally:
        if watching:
            transport.vet_idle((), None, None)


# The header-only messages: one step of an empty move on connection 0, each way.
_ALONE = {(side, kind): ((Step(Move(side, 0, 0, 0), None) if kind is _SEND
                          else Step(None, Move(side, 0, 0, 0)),))
          for side in Side for kind in (_SEND, _RECV)}
_QUIET = {(): BOTH_SIDES, (Side.LEFT,): (Side.RIGHT,), (Side.RIGHT,): (Side.LEFT,),
          BOTH_SIDES: ()}  # the sides a call reads nothing from, by those it reads from
_HEADER_ONLY: dict[tuple[int, Heads], tuple[Plan, Heads]] = {}  # by id(plan)


def _header_only(plan: Plan, heads: Heads) -> Heads:
    """The sides of ``heads`` that no stream of ``plan`` starts on, so that the header goes
    to them (resp. comes from them) alone; worked out once per plan."""
    key = (id(plan), heads)
    got = _HEADER_ONLY.get(key)
    if got is not None and got[0] is plan:
        return got[1]
    if len(_HEADER_ONLY) >= 2 * plans.PLAN_CACHE:
        _HEADER_ONLY.clear()
    sends = {s[0].send.side for s in plan if s[0].send is not None and s[0].send.conn == 0}
    recvs = {s[0].recv.side for s in plan if s[0].recv is not None and s[0].recv.conn == 0}
    alone = (tuple(side for side in heads[0] if side not in sends),
             tuple(side for side in heads[1] if side not in recvs))
    _HEADER_ONLY[key] = (plan, alone)
    return alone


def _stream_bytes(steps: tuple[Step, ...]) -> int:
    """The bytes a stream receives: its share of the traffic and of the working set."""
    return sum(s.recv.stop - s.recv.start for s in steps if s.recv is not None)


_NO_CONTEXT = contextlib.nullcontext()
_LAYOUTS: dict[int, tuple[Plan, tuple[list[int], int, Heads | None]]] = {}  # id -> (plan, _shape)


def _layout(plan: Plan) -> tuple[list[int], int]:
    """Each stream's bytes and how many streams run at once."""
    sizes, window, _ = _shape(plan)
    return sizes, window


def _shape(plan: Plan) -> tuple[list[int], int, Heads | None]:
    """``_layout``, and, where ``single.run`` can take the plan (one stream, every reducing
    receive one scratch piece), the sides a collective's header goes to and comes from
    alone; plans are cached (``plans``), so this is worked out once."""
    got = _LAYOUTS.get(id(plan))
    if got is not None and got[0] is plan:
        return got[1]
    if len(_LAYOUTS) >= 2 * plans.PLAN_CACHE:
        _LAYOUTS.clear()
    sizes = [_stream_bytes(steps) for steps in plan]
    window = min(len(plan), _window(sizes, _multi_step(plan)))
    one = _header_only(plan, COLLECTIVE) if len(plan) == 1 and all(
        not s.reduce or s.recv.stop - s.recv.start <= SCRATCH_BYTES for s in plan[0]) else None
    shape = sizes, window, one
    _LAYOUTS[id(plan)] = (plan, shape)
    return shape


def _multi_step(plan: Plan) -> bool:
    return any(len(steps) > 1 for steps in plan)


def _window(sizes: list[int], limit: bool = True) -> int:
    """How many streams can be running at once (so how many scratch buffers are needed)."""
    if not limit:
        return len(sizes)
    ordered = sorted(sizes)
    count, total = 0, 0
    for size in ordered:
        if count >= MIN_ACTIVE and total + size > WINDOW_BYTES:
            break
        count += 1
        total += size
    return max(count, 1)
