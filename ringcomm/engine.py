"""Runs a plan over a transport: post each stream's step, reduce what arrives, advance.

With an operation header (ringcomm protocol), each stream's first send carries the header
ahead of its data (one vectored send: no copy), and its first receive takes the peer's header
with the first piece of data; the header is checked before any received byte is folded or
the call returns.

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
saves a full pass over memory per call (and lets sum_scatter work in two blocks, not n).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np

from .transports import Channel, Kind, Side, Transport

from . import plans
from .dtypes import Combine
from .plans import Plan, Step

HeaderCheck = Callable[[bytes, Side], None]

SCRATCH_BYTES = 1 << 20
WINDOW_BYTES = 2 << 20  # streams run at once while their bytes fit in this (but at least 2)
MIN_ACTIVE = 2          # one per direction
_SEND, _RECV = Kind.SEND, Kind.RECV


class _Stream:
    __slots__ = ("steps", "index", "pending", "recv_pos", "chunk", "scratch", "typed",
                 "header_in")

    def __init__(self, steps: tuple[Step, ...], scratch: np.ndarray) -> None:
        self.steps = steps
        self.index = 0
        self.pending = 0
        self.recv_pos = 0  # next byte of a reducing receive still to be posted
        self.chunk = 0     # bytes of the reducing receive in flight
        self.scratch = scratch
        self.typed: np.ndarray | None = None  # scratch seen as the element type
        self.header_in: bytearray | None = None  # the peer's header, arriving before the data


class ScratchPool:
    """Reusable receive scratch, one buffer per concurrent stream, so steady loops allocate nothing."""

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []

    def get(self, count: int) -> list[np.ndarray]:
        while len(self._buffers) < count:
            self._buffers.append(np.empty(SCRATCH_BYTES, np.uint8))
        return self._buffers[:count]


def run(transport: Transport, plan: Plan, work: np.ndarray, combine: Combine | None,
        deadline: float, scratch: ScratchPool, header: bytes | None = None,
        check: HeaderCheck | None = None, source: np.ndarray | None = None) -> None:
    """Execute ``plan`` on ``work`` (1-D, C-contiguous; its dtype is the element type).

    ``header`` leads every stream's first send; ``check(bytes, side)`` vets the peer's.
    ``source`` (optional, see the module's doc) is the input when ``work`` is not a copy of it.
    """
    if not plan:
        return
    raw = memoryview(work.view(np.uint8))
    first_raw = raw if source is None else memoryview(source.view(np.uint8))
    itemsize = work.itemsize
    dtype = work.dtype
    post_send, post_recv = transport.post_send, transport.post_recv
    owner: dict[Channel, _Stream] = {}

    def start(st: _Stream) -> None:
        step = st.steps[st.index]
        st.pending = 0
        first = st.index == 0
        with_header = header is not None and first
        s = step.send
        if s is not None:
            owner[Channel(s.side, s.conn, _SEND)] = st
            st.pending += 1
            post_send(s.side, s.conn, (first_raw if first else raw)[s.start:s.stop],
                      header if with_header else None)
        r = step.recv
        if r is not None:
            owner[Channel(r.side, r.conn, _RECV)] = st
            st.pending += 1
            if with_header:  # the peer's header arrives with the first piece of data
                st.header_in = bytearray(len(header))
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

    def received(st: _Stream) -> bool:
        """Fold a completed scratch piece into ``work``; False while the step wants more."""
        step = st.steps[st.index]
        r = step.recv
        if st.header_in is not None:  # vet the peer's header before its bytes are used
            got, st.header_in = bytes(st.header_in), None
            check(got, r.side)
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

    # Streams start in plan order, at most a window of them at a time (the lowest unfinished
    # stream is always running on every rank, so every rank makes progress): a stream's bytes
    # then stay in cache from the step that receives them to the step that sends them on.
    sizes, window = _layout(plan)
    free = scratch.get(window)[::-1]
    waiting = list(reversed(range(len(plan))))
    active = 0
    in_flight = 0

    def admit() -> None:
        nonlocal active, in_flight
        while waiting and (active < window
                           and (active < MIN_ACTIVE or in_flight + sizes[waiting[-1]] <= WINDOW_BYTES)):
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
        while active:
            for ch in wait(deadline):
                st = owner[ch]
                if ch.kind is _RECV and not received(st):
                    continue
                st.pending -= 1
                if st.pending == 0:
                    st.index += 1
                    if st.index < len(st.steps):
                        start(st)
                    else:
                        active -= 1
                        in_flight -= _stream_bytes(st.steps)  # (rare: large plans)
                        free.append(st.scratch)
                        st.typed = None
                        if waiting:
                            admit()


def _stream_bytes(steps: tuple[Step, ...]) -> int:
    """The bytes a stream receives: its share of the traffic and of the working set."""
    return sum(s.recv.stop - s.recv.start for s in steps if s.recv is not None)


_NO_CONTEXT = contextlib.nullcontext()
_LAYOUTS: dict[int, tuple[Plan, list[int], int]] = {}  # id(plan) -> (plan, sizes, window)


def _layout(plan: Plan) -> tuple[list[int], int]:
    """Each stream's bytes and how many streams run at once; plans are cached (``plans``),
    so this is worked out once per plan."""
    got = _LAYOUTS.get(id(plan))
    if got is not None and got[0] is plan:
        return got[1], got[2]
    if len(_LAYOUTS) >= 2 * plans.PLAN_CACHE:
        _LAYOUTS.clear()
    sizes = [_stream_bytes(steps) for steps in plan]
    window = min(len(plan), _window(sizes, _multi_step(plan)))
    _LAYOUTS[id(plan)] = (plan, sizes, window)
    return sizes, window


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
