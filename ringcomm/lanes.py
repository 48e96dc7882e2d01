"""A large collective on several cores: its streams split over threads, one transport lane each.

One Python thread per rank does every send, receive and fold of an operation in turn; from a
few MiB up that thread, not the link, is the limit (docs/performance.md).  A plan's streams
use disjoint channels and disjoint bytes of the working buffer, and socket I/O and numpy's
folds release the GIL, so the streams can progress side by side: ``Lanes`` cuts a plan into
``threads`` sub-plans (stream i to lane i mod threads) and runs each with ``engine.run`` over
a lane of the transport (``Transport.lanes``), lane 0 on the caller's thread and the others on
worker threads kept for the group's life (all of them on workers when the caller has a copy
to make meanwhile: an all_gather's own block).  The plan, the bytes on the wire and the
headers are those of the one-thread path; only who moves them changes.

Operations below ``MIN_BYTES``, a plan of one stream, and the cases with state that lives on
the transport's own connections (a side no stream starts on, so headers travel alone there,
bytes read ahead, sends and receives, which vet the idle side) keep the one-thread path, and
its latency.  Headers that earlier calls left waiting (on 2 ranks every small collective
leaves one each way) ride with the lanes' first sends and receives on connection 0, as they
would on one thread (``_waiting``).

A failure on any lane wakes the others (``LaneStopped``) and is raised on the calling thread
as the same typed error; Ctrl-C on the calling thread stops every lane first; ``close()``
joins the workers, so no thread outlives the group.  Memory: one scratch of
``engine.SCRATCH_BYTES`` per stream, as before.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import Callable

import numpy as np

from .transports import Transport
from .transports.base import LaneStopped

from . import engine
from .engine import NO_HEADS, HeaderCheck, Heads, ScratchPool
from .dtypes import Combine
from .lone import Alone
from .plans import Plan

MIN_BYTES = 1 << 20   # received bytes below which a call stays on the caller's thread (waking the
                      # workers costs tens of us, which a small call cannot win back)
JOIN_GRACE = 5.0      # how long past the deadline a worker may take to stop before close gives up


def auto_threads(co_located: int) -> int:
    """Threads per rank when ``RINGCOMM_THREADS`` is unset: this process's cores shared by the
    ranks on this host (a 2-core machine with 2 ranks: 1, today's path)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, co_located))


class _Call:
    """One operation's lanes on the worker threads: how many are left, and what they raised."""

    __slots__ = ("lock", "left", "errors", "finished")

    def __init__(self, count: int) -> None:
        self.lock = threading.Lock()
        self.left = count
        self.errors: list[BaseException] = []
        self.finished = threading.Event()

    def done(self, error: BaseException | None) -> None:
        with self.lock:
            if error is not None:
                self.errors.append(error)
            self.left -= 1
            if not self.left:
                self.finished.set()


class Lanes:
    """A group's worker threads and transport lanes for large operations."""

    def __init__(self, transport: Transport, threads: int) -> None:
        self._transport = transport
        self._threads = threads
        self._workers: list[tuple[threading.Thread, queue.SimpleQueue]] = []
        self._pools: list[ScratchPool] = []
        self._splits: dict[tuple[int, int], tuple[Plan, list[Plan]]] = {}
        self._closed = False

    def count(self, plan: Plan, heads: Heads, header: bytes | None, vetting: bool) -> int:
        """How many lanes ``plan`` runs on (1: the caller's thread alone, as before)."""
        lanes = min(self._threads, len(plan))
        if lanes < 2 or vetting or self._closed:
            return 1
        sizes, _ = engine._layout(plan)
        if sum(sizes) < MIN_BYTES:
            return 1
        if header is not None and engine._header_only(plan, heads) != NO_HEADS:
            return 1  # headers that travel alone use connection 0 outside the streams
        return lanes

    def run(self, lanes: int, plan: Plan, work: np.ndarray, combine: Combine | None,
            deadline: float, header: bytes | None, check: HeaderCheck | None,
            source: np.ndarray | None, source_at: int = 0,
            meanwhile: Callable[[], None] | None = None, alone: Alone | None = None) -> bool:
        """Run ``plan`` on ``lanes`` threads; False (nothing done) when the transport has no
        lanes to give now, so the caller runs it on one.  ``meanwhile`` (see ``engine.run``)
        runs on the calling thread while workers move every lane where the group has a
        thread to spare, else on the caller's lane once its transfers are posted; ``alone``:
        the group's waiting headers, which go with the lanes' streams."""
        views = self._transport.lanes(lanes)
        if views is None:
            return False
        # With a thread to spare, the workers take every lane and this thread runs
        # ``meanwhile`` (a copy, which releases the GIL): a worker handed it could wait for
        # the GIL until the lanes are done, as the busy lanes take it back first.
        spare = meanwhile is not None and lanes < self._threads
        on_workers = lanes if spare else lanes - 1
        self._start(on_workers)
        parts = self._split(plan, lanes)
        waiting = _waiting(alone, parts) if header is not None else [None] * lanes
        jobs = [_job(view, part, work, combine, deadline, pool, header, check, source,
                     source_at, None if spare or i else meanwhile, lane_alone)
                for i, (view, part, pool, lane_alone) in enumerate(
                    zip(views, parts, self._pools, waiting))]
        call = _Call(on_workers)
        for view in views:
            view.rearm()
        for (_, inbox), job in zip(self._workers, jobs if spare else jobs[1:]):
            inbox.put((job, call, views))  # the workers first: they take longest to start
        mine = meanwhile if spare else jobs[0]
        first: BaseException | None = None
        try:
            mine()
        except BaseException as e:  # a lane failed, or Ctrl-C: stop the others
            first = e
            _wake(views)
        try:
            _join(call, deadline, views)
        except BaseException as e:  # Ctrl-C while waiting for the workers
            first = first if first is not None and not isinstance(first, LaneStopped) else e
            _wake(views)
            call.finished.wait(JOIN_GRACE)
        errors = [first] if first is not None else []
        errors += call.errors
        if errors:
            raise next((e for e in errors if not isinstance(e, LaneStopped)), errors[0])
        return True

    def close(self) -> None:
        """Stop the workers and wait for them (each ends its current lane first)."""
        self._closed = True
        for _, inbox in self._workers:
            inbox.put(None)
        for thread, _ in self._workers:
            thread.join(JOIN_GRACE)
        self._workers.clear()

    def _start(self, workers: int) -> None:
        while len(self._pools) < workers + 1:
            self._pools.append(ScratchPool())
        while len(self._workers) < workers:
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            thread = threading.Thread(target=_serve, args=(inbox,), daemon=True,
                                      name=f"ringcomm-lane-{len(self._workers) + 1}")
            thread.start()
            self._workers.append((thread, inbox))

    def _split(self, plan: Plan, lanes: int) -> list[Plan]:
        """Stream i to lane i mod ``lanes``, worked out once per plan."""
        key = (id(plan), lanes)
        got = self._splits.get(key)
        if got is not None and got[0] is plan:
            return got[1]
        if len(self._splits) >= 64:
            self._splits.clear()
        parts = [plan[i::lanes] for i in range(lanes)]
        self._splits[key] = (plan, parts)
        return parts


def _job(view: Transport, part: Plan, work: np.ndarray, combine: Combine | None,
         deadline: float, pool: ScratchPool, header: bytes | None, check: HeaderCheck | None,
         source: np.ndarray | None, source_at: int,
         meanwhile: Callable[[], None] | None = None,
         alone: Alone | None = None) -> Callable[[], None]:
    """One lane's share: its streams, each carrying the header as on one thread (after the
    waiting headers in ``alone``, this lane's own)."""
    return lambda: engine.run(view, part, work, combine, deadline, pool, header, check, source,
                              alone=alone, source_at=source_at, meanwhile=meanwhile)


def _waiting(alone: Alone | None, parts: list[Plan]) -> list[Alone | None]:
    """Each lane's share of the headers waiting in ``alone``: those to (from) a side go to
    the lane whose stream first sends (receives) on connection 0 there, whose first send
    then leads with them (its first receive expects them), the bytes one thread would move.
    ``count`` let the plan on lanes only where every side has such a stream; ``alone`` is
    drained here, on the calling thread, so no two threads share it."""
    if alone is None or not (any(alone.out) or any(alone.into)):
        return [None] * len(parts)
    shares: list[Alone | None] = []
    for part in parts:
        share = None
        for steps in part:
            s, r = steps[0].send, steps[0].recv
            if s is not None and s.conn == 0 and alone.out[s.side]:
                share = share or Alone()
                share.out[s.side].append(alone.take_out(s.side))
            if r is not None and r.conn == 0 and alone.into[r.side]:
                share = share or Alone()
                share.into[r.side].append(alone.take_in(r.side))
        shares.append(share)
    return shares


def _serve(inbox: queue.SimpleQueue) -> None:
    """A worker: run each lane it is handed; on a failure wake the operation's other lanes."""
    while True:
        item = inbox.get()
        if item is None:
            return
        job, call, views = item
        error = None
        try:
            job()
        except BaseException as e:  # reported to the calling thread, which raises it
            error = e
            _wake(views)
        call.done(error)
        del item, job, call, views, error  # a finished lane keeps nothing (the group) alive


def _wake(views: list[Transport]) -> None:
    for view in views:
        view.wake()


def _join(call: _Call, deadline: float, views: list[Transport]) -> None:
    """Wait for the workers' lanes.  Each ends by the deadline (plus its liveness probe);
    past that they are woken, and a worker that still does not stop is an error."""
    while not call.finished.wait(max(0.0, deadline - time.monotonic()) + JOIN_GRACE):
        if time.monotonic() > deadline + JOIN_GRACE:
            _wake(views)
            if not call.finished.wait(JOIN_GRACE):
                raise RuntimeError("a ringcomm lane thread did not stop after its deadline")
