"""The engine's path for a plan of one stream: the same protocol, less Python.

A small collective (an 8-byte all_sum, a barrier, a small all_gather or sum_scatter) is one
stream of steps whose receives each fit one scratch piece, and its time is the network's
latency plus the Python around it.  ``engine.run``'s bookkeeping for any number of streams,
scratch pieces and read-ahead (closures, a channel-to-stream map, a window of streams) cost
more than the latency itself (24 of 35 us of an 8-byte all_sum's Python on this project's
2-core machine).  Here
the steps run in a plain loop: post the step's send and receive, wait for both, fold.
Headers go and come exactly as ``engine.run`` sends and takes them (``docs/wire-protocol.md``):
the first send and receive carry them, and headers alone go and are taken with ``lone``;
``tests/test_mismatch.py`` and ``tests/test_collectives.py`` run through both paths.
A lane of a large collective (``lanes``) is often one stream too (a 2-rank all_gather's two
directions, one per thread), and comes here with its header and no headers alone: a worker
then holds the GIL for less time before its first send.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .transports import Kind, Side, Transport
from .transports.arrivals import HEAD

from .dtypes import Combine, quiet, restore
from .lone import Alone, Idle, report
from .plans import Step

_SEND, _RECV = Kind.SEND, Kind.RECV
_BYTES = np.dtype(np.uint8)
_NO_HEAD: tuple = (None, None)
_NOTHING: tuple = ((), ())


def run(transport: Transport, steps: tuple[Step, ...], work: np.ndarray,
        combine: Combine | None, deadline: float, scratch: np.ndarray, header: bytes | None,
        check, source: np.ndarray | None, alone: Alone | None,
        lone: tuple[tuple[Side, ...], tuple[Side, ...]], source_at: int = 0,
        meanwhile: Callable[[], None] | None = None) -> None:
    """``engine.run`` of a collective (headers both ways to both neighbours, ``engine.COLLECTIVE``,
    or none) or of a lane (``engine.NO_HEADS``; ``alone``: its share of the headers earlier
    calls left waiting, or None) whose plan is the one stream ``steps``, every reducing
    receive of which fits ``scratch``; ``lone``: the sides its header goes to and comes from
    alone."""
    lone_out, lone_in = lone
    post_send, post_recv, wait = transport.post_send, transport.post_recv, transport.wait
    raw = memoryview(work if work.dtype is _BYTES else work.view(np.uint8))
    first_raw = raw if source is None else memoryview(source.view(np.uint8))
    send_now, take_now = alone.begin(header, lone_out, lone_in, False) \
        if lone_out or lone_in else _NOTHING
    idle = None
    if lone_in or (alone is not None and (alone.out[0] or alone.out[1])):
        idle = alone.idle  # its sends are counted in idle.sent; kept from call to call
        if idle is None or idle.transport is not transport or idle.check != check:
            idle = alone.idle = Idle(transport, alone, (), None, check)
        idle.sent = 0
        transport.vet_idle(lone_in if not take_now else tuple(dict.fromkeys(lone_in + tuple(
            take_now))), idle.judge, idle.stuck)
    try:
        alone_sent = 0  # header-only messages posted here, less every one completed (with
                        # those idle posted, which idle.sent counts: both sum to in flight)
        want = head_in = None
        for index, step in enumerate(steps):
            s, r = step.send, step.recv
            sent = got = None
            if s is not None:
                head = None
                if not index and header is not None:  # after the headers waiting there
                    head = header if alone is None or not alone.out[s.side] else \
                        alone.lead(s.side, s.conn, header)
                post_send(s.side, s.conn, raw[s.start:s.stop] if index else
                          first_raw[s.start - source_at:s.stop - source_at], head)
                sent = (s.side, s.conn, _SEND)
            if r is not None:
                if not index and header is not None:  # the peer's, checked as soon as it is in
                    want = header if alone is None or not alone.into[r.side] else \
                        alone.expect(r.side, r.conn, header)
                    head_in = bytearray(want)
                folding = step.reduce and r.stop > r.start
                post_recv(r.side, r.conn, memoryview(scratch)[:r.stop - r.start] if folding
                          else raw[r.start:r.stop], head_in)
                got = (r.side, r.conn, _RECV)
            if not index and send_now:
                for side, data in send_now:  # after the data: in the time spent waiting for it
                    alone_sent += 1
                    post_send(side, 0, memoryview(data))
            if not index and meanwhile is not None:
                meanwhile()
            while sent or got:
                for ch in wait(deadline):
                    if ch == sent:
                        sent = None
                    elif ch == got:
                        got = None
                        if head_in is not None:
                            if head_in != want:
                                report(check, want, head_in, r.side)
                            head_in = None
                        if folding:  # inf - inf is a NaN like any other, as in MLX
                            token = quiet()
                            try:
                                _fold(combine, work, scratch, r, step.shift, source)
                            finally:
                                restore(token)
                    elif ch.kind is HEAD:  # (only the stream's receive has a head yet)
                        if head_in is not None and head_in != want:
                            report(check, want, head_in, ch.side)
                    else:
                        alone_sent -= 1
        checks: dict[tuple, tuple[bytes, bytearray]] = {}  # header-only receives
        for side in take_now:  # the plan is done: they are in by now
            if alone.into[side]:  # (unless checked while this rank slept)
                want_alone = alone.take_in(side)
                checks[(side, 0, _RECV)] = (want_alone, bytearray(want_alone))
                alone_sent += 1
                post_recv(side, 0, raw[0:0], checks[(side, 0, _RECV)][1])
        while alone_sent + (idle.sent if idle is not None else 0):
            for ch in wait(deadline):
                if ch.kind is HEAD:
                    _early(ch, checks, check)
                    continue
                if ch.kind is _RECV:
                    want_alone, got_alone = checks.pop((ch.side, ch.conn, _RECV))
                    if got_alone != want_alone:
                        report(check, want_alone, got_alone, ch.side)
                alone_sent -= 1
    finally:
        if idle is not None:
            transport.vet_idle((), None, None)


def _fold(combine: Combine, work: np.ndarray, scratch: np.ndarray, r, shift: int,
          source: np.ndarray | None) -> None:
    """``work[r] = (source[r + shift] or work[r]) op scratch``, in elements."""
    itemsize = work.itemsize
    lo, n = r.start // itemsize, (r.stop - r.start) // itemsize
    shift //= itemsize
    combine(work[lo:lo + n], scratch.view(work.dtype)[:n],
            None if source is None else source[lo + shift:lo + shift + n])


def _early(ch, checks: dict[tuple, tuple[bytes, bytearray]], check) -> None:
    """Some of a header-only message is in on ``ch``: check what differs now."""
    want_alone, got = checks.get((ch.side, ch.conn, _RECV), _NO_HEAD)
    if got is not None and got != want_alone:
        report(check, want_alone, got, ch.side)

