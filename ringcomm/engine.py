"""Runs a plan over a transport: post each stream's step, reduce what arrives, advance.

With an operation header (ringcomm protocol), each stream's first send is preceded by the
header on the same connection, and its first receive reads the peer's header and checks it
before any byte of data is taken.

Receives that must be combined land in a per-stream scratch buffer, ``SCRATCH_BYTES`` at a
time, and are folded into the working buffer in place (``np.add(..., out=...)`` for sums) as
each piece completes; everything else is received straight into the working buffer.  Extra memory per
call is therefore at most ``streams * SCRATCH_BYTES`` (streams <= 2K), reused across calls.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from transports import Channel, Kind, Side, Transport

from .dtypes import Combine
from .plans import Plan, Step

HeaderCheck = Callable[[bytes, Side], None]

SCRATCH_BYTES = 1 << 20
JOIN_HEADER_BYTES = 1 << 16  # a first send up to this size is copied behind its header


class _Stream:
    __slots__ = ("steps", "index", "pending", "recv_pos", "chunk", "scratch", "header_out",
                 "header_in", "joined")

    def __init__(self, steps: tuple[Step, ...], scratch: np.ndarray) -> None:
        self.steps = steps
        self.index = 0
        self.pending = 0
        self.recv_pos = 0  # next byte of a reducing receive still to be posted
        self.chunk = 0     # bytes of the reducing receive in flight
        self.scratch = scratch
        self.header_out = False  # the header send is in flight; the data send follows
        self.header_in: bytearray | None = None  # the peer's header is being received
        self.joined = False      # header and data arrive together in scratch


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
        check: HeaderCheck | None = None) -> None:
    """Execute ``plan`` on ``work`` (1-D, C-contiguous; its dtype is the element type).

    ``header`` leads every stream's first send; ``check(bytes, side)`` vets the peer's.
    """
    if not plan:
        return
    raw = memoryview(work.view(np.uint8))
    itemsize = work.itemsize
    owner: dict[Channel, _Stream] = {}

    def start(st: _Stream) -> None:
        step = st.steps[st.index]
        st.pending = 0
        with_header = header is not None and st.index == 0
        if step.send is not None:
            s = step.send
            owner[Channel(s.side, s.conn, Kind.SEND)] = st
            st.pending += 1
            if with_header and s.stop - s.start <= JOIN_HEADER_BYTES:  # one segment, one wake-up
                transport.post_send(s.side, s.conn, memoryview(header + raw[s.start:s.stop]))
            elif with_header:
                st.header_out = True
                transport.post_send(s.side, s.conn, memoryview(header))
            else:
                transport.post_send(s.side, s.conn, raw[s.start:s.stop])
        if step.recv is not None:
            r = step.recv
            owner[Channel(r.side, r.conn, Kind.RECV)] = st
            st.pending += 1
            if with_header and r.stop - r.start <= JOIN_HEADER_BYTES:  # one receive for both
                st.joined = True
                transport.post_recv(r.side, r.conn,
                                    memoryview(st.scratch)[:len(header) + r.stop - r.start])
            elif with_header:
                st.header_in = bytearray(len(header))
                transport.post_recv(r.side, r.conn, memoryview(st.header_in))
            else:
                post_data_recv(st, step)

    def post_data_recv(st: _Stream, step: Step) -> None:
        r = step.recv
        if step.reduce and r.stop > r.start:
            st.recv_pos = r.start
            post_reduce_chunk(st, r)
        else:
            transport.post_recv(r.side, r.conn, raw[r.start:r.stop])

    def post_reduce_chunk(st: _Stream, r) -> None:
        st.chunk = min(r.stop - st.recv_pos, SCRATCH_BYTES)
        transport.post_recv(r.side, r.conn, memoryview(st.scratch)[:st.chunk])

    def sent(st: _Stream) -> bool:
        """False when only the header went: the step's data follows on the same connection."""
        if not st.header_out:
            return True
        st.header_out = False
        s = st.steps[st.index].send
        transport.post_send(s.side, s.conn, raw[s.start:s.stop])
        return False

    def received(st: _Stream) -> bool:
        """Fold a completed scratch piece into ``work``; False while the step wants more."""
        if st.joined:  # header and a small payload together in scratch: vet, then place
            st.joined = False
            step = st.steps[st.index]
            r, h = step.recv, len(header)
            check(st.scratch[:h].tobytes(), r.side)
            data = st.scratch[h:h + r.stop - r.start]
            if step.reduce:
                combine(work[r.start // itemsize:r.stop // itemsize], data.view(work.dtype))
            else:
                raw[r.start:r.stop] = data
            return True
        if st.header_in is not None:  # the peer's header: vet it, then take the data
            got, st.header_in = bytes(st.header_in), None
            step = st.steps[st.index]
            check(got, step.recv.side)
            post_data_recv(st, step)
            return False
        r = st.steps[st.index].recv
        if not st.steps[st.index].reduce or r.stop == r.start:
            return True
        lo, n = st.recv_pos // itemsize, st.chunk // itemsize
        combine(work[lo:lo + n], st.scratch[:st.chunk].view(work.dtype))
        st.recv_pos += st.chunk
        if st.recv_pos < r.stop:
            post_reduce_chunk(st, r)
            return False
        return True

    streams = [_Stream(steps, buf) for steps, buf in zip(plan, scratch.get(len(plan)))]
    active = len(streams)
    for st in streams:
        start(st)
    with np.errstate(all="ignore"):  # inf - inf is a NaN like any other here, as in MLX
        while active:
            for ch in transport.wait(deadline):
                st = owner[ch]
                if not (received(st) if ch.kind is Kind.RECV else sent(st)):
                    continue
                st.pending -= 1
                if st.pending == 0:
                    st.index += 1
                    if st.index < len(st.steps):
                        start(st)
                    else:
                        active -= 1
