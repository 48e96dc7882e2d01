"""A group of ranks on one ring, and the collectives that run on it."""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import numpy as np

from .transports import CommError, GroupBrokenError, MismatchError, Side, Transport, settings

from . import dropped, engine, memcopy, plans, small, spread
from .plan_log import DEBUG, debug_on, operation as log_operation
from .buffers import contiguous, disjoint_or_same, output, same_buffer
from .dtypes import Combine, reducer, wire_dtype
from .lanes import Lanes, auto_threads
from .header import OpHeader, check, describe, pack_header, vet_next
from .group_info import GroupInfo, describe as describe_group
from .group_rooted import RootedMethods
from .lone import Alone
from .mlx_arrays import collective, is_mlx_array, recv as recv_mlx, to_numpy
from .p2p import Direct
from .ranks import neighbour_side, rank_argument
from .split import Origin, split as split_group
from .work import Progress, asynchronous


class Group(RootedMethods):
    """The ranks of one ring.  Collectives are eager: they run when called and block until done.

    Every call shares the group's ``timeout`` (seconds).  After any communication failure the
    group is broken and every later call raises ``GroupBrokenError`` at once.  ``stream=``
    (MLX's keyword) is accepted by every collective and ignored: they run on the calling thread.

    ``async_op=True`` (every collective, send and recv) returns a ``work.Work`` at once; the
    operation runs in issue order on the group's progress thread, and its inputs and ``out=``
    must not be touched until it completes (``ringcomm.work``).
    """

    def __init__(self, transport: Transport, timeout: float, *, headers: bool = False,
                 job: int = 0) -> None:
        self._transport = transport
        self.timeout = timeout
        self._scratch = engine.ScratchPool()
        self._broken: BaseException | None = None
        self._headers = headers  # send and check an OpHeader with every operation
        self._job = job
        self.origin: Origin | None = None  # how it was formed, for split (set by init)
        self._calls = 0          # collectives so far: the header's seq
        self._messages = {(Side.LEFT, True): 0, (Side.RIGHT, True): 0,   # sends per side
                          (Side.LEFT, False): 0, (Side.RIGHT, False): 0}  # receives per side
        self._ahead = {Side.LEFT: 0, Side.RIGHT: 0}  # messages read ahead, not yet received
        self._current: tuple[OpHeader, str] | None = None  # the send/recv running, for _vet
        self._checking: tuple = ()  # the running operation's header fields (_check_header)
        self._alone = Alone()    # collectives' headers that travel alone (``lone``)
        self._direct = Direct(transport, job) if headers else None  # to non-neighbours (p2p)
        threads = settings.load().threads
        self._lanes = Lanes(transport, threads or auto_threads(transport.local_ranks()))
        self._progress: Progress | None = None  # async_op=True's queue and thread (``work``)
        self._gathered: tuple | None = None  # small all-reduces' buffer and plan (``small``)
        self._dropped = dropped.watch(self, self._direct, self._lanes, transport)  # no close()
        self._log_plans = debug_on(DEBUG)  # RINGCOMM_LOG=debug, or the logger at DEBUG by now

    # -- membership ----------------------------------------------------------------------------

    def rank(self) -> int:
        return self._transport.rank

    def size(self) -> int:
        return self._transport.size

    def split(self, color: int, key: int = -1) -> Group | None:
        """MLX's ``Group.split``, a collective: the ranks passing the same ``color`` form a new
        group with a ring of its own, ranked by ``key`` (negative: by this group's rank; ties
        too).  A negative color joins no group and returns ``None`` (MPI's MPI_UNDEFINED).
        Closing or breaking the subgroup leaves this group as it was (``ringcomm.split``)."""
        return split_group(self, color, key, make_group=type(self))

    def close(self) -> None:
        """Close every connection.  Later calls raise ``GroupBrokenError``.  Pending async work
        that has not started fails with ``GroupBrokenError``; the running operation ends first
        (done, failed, or at the group's deadline), so no thread outlives the group."""
        self._dropped.detach()
        if self._progress is not None:
            self._progress.close()
        if self._broken is None:
            self._broken = GroupBrokenError(f"rank {self.rank()}: the group was closed")
        if self._direct is not None:
            self._direct.close()  # its acceptor first: the transport closes the listener
        self._lanes.close()
        self._transport.close()

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> GroupInfo:
        """What this group runs on: transport, protocol, addresses, threads... (``GroupInfo``)."""
        return describe_group(self)

    def __repr__(self) -> str:
        return f"<ringcomm.Group {describe_group(self)}>"

    # -- collectives ---------------------------------------------------------------------------

    @asynchronous
    def all_sum(self, x: Any, *, out: np.ndarray | None = None,
                stream: Any = None) -> np.ndarray:
        """Element-wise sum over all ranks; every rank gets the same bytes."""
        return self._all_reduce("all_sum", "sum", x, out)

    @asynchronous
    def all_max(self, x: Any, *, out: np.ndarray | None = None,
                stream: Any = None) -> np.ndarray:
        return self._all_reduce("all_max", "max", x, out)

    @asynchronous
    def all_min(self, x: Any, *, out: np.ndarray | None = None,
                stream: Any = None) -> np.ndarray:
        return self._all_reduce("all_min", "min", x, out)

    @asynchronous
    def all_gather(self, x: Any, *, out: np.ndarray | None = None,
                   stream: Any = None) -> np.ndarray:
        """Concatenate every rank's ``x`` along axis 0 (a 0-d ``x`` gathers into shape (size,)).

        In place: ``x`` may be this rank's block of ``out`` (``out[rank * len(x):(rank + 1) *
        len(x)]``), which saves copying it (a fifth of the time at 64 MiB on 2 ranks).
        """
        if is_mlx_array(x):
            return self._mlx_call("all_gather", x, out)
        a = contiguous(x)
        n, r = self.size(), self.rank()
        shape = (n,) if a.ndim == 0 else (n * a.shape[0], *a.shape[1:])
        result = output(out, shape, a.dtype, "all_gather")
        flat = result.reshape(-1).view(np.uint8)
        nbytes = a.nbytes
        own, mine = flat[r * nbytes:(r + 1) * nbytes], a.reshape(-1).view(np.uint8)
        plan = plans.all_gather(nbytes, n, r, self._connections())
        if not np.may_share_memory(flat, mine):  # the sends read x, and x is copied into out
            self._run("all_gather", plan, flat, None, a.dtype, a.shape,  # while the bytes move
                      source=mine, source_at=r * nbytes,
                      meanwhile=functools.partial(memcopy.copy, own, mine))
            return result
        if not same_buffer(own, mine):  # x is other bytes of out, which are received into:
            memcopy.copy(own, mine)      # copy it first (in place, x is this rank's block)
        self._run("all_gather", plan, flat, None, a.dtype, a.shape)
        return result

    @asynchronous
    def sum_scatter(self, x: Any, *, out: np.ndarray | None = None,
                    stream: Any = None) -> np.ndarray:
        """Sum over all ranks, then return this rank's slice of axis 0 (which must divide by size)."""
        if is_mlx_array(x):
            return self._mlx_call("sum_scatter", x, out)
        a = contiguous(x)
        n, r = self.size(), self.rank()
        if a.ndim == 0 or a.shape[0] % n:
            raise ValueError(f"sum_scatter: axis 0 of an array of shape {a.shape} must divide by "
                             f"the group size {n}")
        rows = a.shape[0] // n
        result = output(out, (rows, *a.shape[1:]), a.dtype, "sum_scatter")
        source, flat = a.reshape(-1), result.reshape(-1)
        if n == 1:
            flat[...] = source
            return result
        # The engine reads the input where it is and folds into two blocks (plans.reduce_scatter):
        # the last fold lands in block 0.  With 2 ranks there is one fold, straight into the
        # output, unless out= overlaps the input other than as this rank's own block.
        if n == 2 and (not np.may_share_memory(flat, source)
                       or same_buffer(flat, source[r * flat.size:])):
            work = flat
        else:
            work = np.empty(2 * flat.size, a.dtype)
        self._run("sum_scatter", plans.reduce_scatter(source.size, a.itemsize, n, r,
                                                      self._connections()),
                  work, reducer("sum", a.dtype), a.dtype, a.shape, source=source)
        if work is not flat:
            memcopy.copy(flat, work[:flat.size])
        return result

    @asynchronous
    def send(self, x: Any, dst: int, *, stream: Any = None) -> np.ndarray:
        """Send ``x`` to rank ``dst`` (a non-neighbour over a direct connection), which must
        call ``recv``/``recv_like`` with the same shape and dtype."""
        dst = rank_argument(dst, "dst", "send", self.rank(), self.size())
        a = contiguous(to_numpy(x) if is_mlx_array(x) else x)
        if self._direct is not None and self._direct.reaches(self._transport, dst):
            self._direct.exchange(self, "send", "send", a.dtype, a.shape, (dst, a), None)
            return x if is_mlx_array(x) else a
        side = neighbour_side(self._transport, dst, "send", (Side.RIGHT, Side.LEFT))
        plan = plans.point_to_point(a.nbytes, side, self._connections(), sending=True)
        self._run("send", plan, a.reshape(-1).view(np.uint8), None, a.dtype, a.shape,
                  message=(side, True))
        return x if is_mlx_array(x) else a

    @asynchronous
    def recv(self, shape: Sequence[int] | int, dtype: Any, src: int, *,
             out: np.ndarray | None = None, stream: Any = None) -> np.ndarray:
        """Receive an array of ``shape`` and ``dtype`` from rank ``src`` (any rank of the
        group: a non-neighbour over a direct connection).

        An ``mx.Dtype`` gives an ``mx.array`` (numpy's dtypes give numpy arrays).
        """
        src = rank_argument(src, "src", "recv", self.rank(), self.size())
        if type(dtype).__module__.startswith("mlx"):
            if out is not None:
                raise ValueError("recv: out= takes numpy arrays; with an mx.Dtype the result "
                                 "is a new mx.array")
            return recv_mlx(self, (shape,) if isinstance(shape, (int, np.integer))
                            else tuple(shape), dtype, src)
        dtype = wire_dtype(dtype)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        result = output(out, shape, dtype, "recv")
        if self._direct is not None and self._direct.reaches(self._transport, src):
            self._direct.exchange(self, "recv", "send", dtype, shape, None, (src, result))
            return result
        side = neighbour_side(self._transport, src, "recv", (Side.LEFT, Side.RIGHT))
        raw = result.reshape(-1).view(np.uint8)
        self._run("recv", plans.point_to_point(raw.size, side, self._connections(),
                                               sending=False), raw, None, dtype, shape,
                  message=(side, False))
        return result

    @asynchronous
    def recv_like(self, x: Any, src: int, *, out: np.ndarray | None = None,
                  stream: Any = None) -> np.ndarray:
        """Receive an array shaped and typed like ``x`` (numpy or MLX) from rank ``src`` (any
        rank of the group: a non-neighbour over a direct connection)."""
        if is_mlx_array(x):
            return self.recv(tuple(x.shape), x.dtype, src, out=out)
        a = np.asarray(x)
        return self.recv(a.shape, a.dtype, src, out=out)

    @asynchronous
    def broadcast(self, x: Any, root: int, *, out: np.ndarray | None = None,
                  stream: Any = None) -> Any:
        """Root's ``x`` on every rank; other ranks pass an array of the same shape and dtype,
        filled in place when it is a writeable numpy array (``spread.broadcast``)."""
        return spread.broadcast(self, x, root, out)

    @asynchronous
    def all_to_all(self, x: Any, *, out: np.ndarray | None = None,
                   stream: Any = None) -> Any:
        """Axis 0 cut into ``size`` blocks, block j sent to rank j; returns the blocks
        received, in rank order (axis 0 must divide by the size)."""
        return spread.all_to_all(self, x, out)

    @asynchronous
    def barrier(self, *, stream: Any = None) -> None:
        """Return once every rank of the group has called barrier() (an all_sum of one byte)."""
        self._all_reduce("barrier", "sum", np.zeros(1, np.uint8), None)

    # -- machinery -----------------------------------------------------------------------------

    def _mlx_call(self, op: str, x: Any, out: Any) -> Any:
        """An MLX array through ``op``: evaluated, sent from its memory, differentiable."""
        if out is not None:
            raise ValueError(f"{op}: out= takes numpy arrays; for an mx.array the result is "
                             "a new mx.array")
        return collective(self, op, x)  # the result written straight into a new mx.array

    def _all_reduce(self, name: str, op: str, x: Any, out: np.ndarray | None,
                    root: int | None = None) -> np.ndarray:
        """``root``: a reduce's (``rooted``), carried in the header; never gathers (``small``)."""
        if type(x) is not np.ndarray and is_mlx_array(x):
            return self._mlx_call(name, x, out)
        a = contiguous(x)
        n = self.size()
        result = output(out, a.shape, a.dtype, name)
        flat = result if result.ndim == 1 else result.reshape(-1)
        source = a if a.ndim == 1 else a.reshape(-1)
        if self._headers and n > 1 and root is None and small.fits(flat.nbytes, n, a.dtype):
            small.gather_reduce(self, name, op, source, flat, a.shape)
            return result
        if flat.size < n:  # MLX pads fewer elements than ranks with zeros to one element per rank
            work = np.zeros(n, a.dtype)
            work[:a.size] = source
            source = None
        elif n > 1 and disjoint_or_same(flat, source):
            work = flat  # the engine reads the input where it is: no copy into the output
        else:  # one rank, or out= overlaps the input in some other way: work on a copy
            memcopy.copy(flat, source)
            work, source = flat, None
        plan = plans.all_reduce(flat.size, a.itemsize, n, self.rank(), self._connections())
        self._run(name, plan, work, reducer(op, a.dtype), a.dtype, a.shape, source=source,
                  root=root or 0)
        if work is not flat:
            flat[...] = work[:flat.size]
        return result

    def _run(self, name: str, plan: plans.Plan, work: np.ndarray, combine: Combine | None,
             dtype: np.dtype, shape: tuple[int, ...],
             message: tuple[Side, bool] | None = None, source: np.ndarray | None = None,
             root: int = 0, source_at: int = 0,
             meanwhile: Callable[[], None] | None = None,
             deadline: float | None = None) -> None:
        """Run one operation's plan; ``message`` is (side, sending) for send and recv;
        ``source``, ``source_at`` and ``meanwhile`` as in ``engine.run``; ``root`` a
        broadcast's, carried in its header; ``deadline`` a call's made of several runs
        (``split``), else ``timeout`` from now."""
        if self._broken is not None:
            raise GroupBrokenError(f"rank {self.rank()}: {name} on a broken group: "
                                   f"{self._broken}") from self._broken
        if self._transport.size == 1:
            if meanwhile is not None:
                meanwhile()
            return
        header = self._header(name, dtype, shape, message, root) if self._headers else None
        check_header = self._check_header if header is not None else None
        if message is None:  # both neighbours, both ways
            heads, vet = engine.COLLECTIVE, None
        else:  # to or from that neighbour; what comes from the other side is vetted
            heads = ((message[0],), ()) if message[1] else ((), (message[0],))
            vet = self._vet if header is not None else None
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        try:
            lanes = 1 if len(plan) < 2 else \
                self._lanes.count(plan, heads, header, vet is not None)
            if self._log_plans:  # (off, this attribute is all the log costs a call)
                log_operation(self.rank(), name, dtype, shape, plan, lanes, message)
            if lanes == 1 or not self._lanes.run(lanes, plan, work, combine, deadline, header,
                                                 check_header, source, source_at, meanwhile,
                                                 self._alone):
                engine.run(self._transport, plan, work, combine, deadline, self._scratch,
                           header, check_header, source, heads, self._alone, vet, source_at,
                           meanwhile)
        except CommError as e:
            e.op = e.op or name
            self._fail(e)
            raise
        except BaseException as e:  # e.g. KeyboardInterrupt mid-transfer: the streams are torn
            self._fail(e)
            raise
        finally:
            self._current = None

    def _header(self, name: str, dtype: np.dtype, shape: tuple[int, ...],
                message: tuple[Side, bool] | None, root: int = 0) -> bytes:
        """This operation's header (ringcomm protocol); ``_check_header`` vets the peers'."""
        if message is None:
            self._calls += 1
            seq = self._calls
        else:
            self._messages[message] += 1
            seq = self._messages[message]
        op = "send" if message else name
        header = pack_header(seq, op, dtype, shape, self._job, root)
        self._checking = (seq, op, dtype, shape, root, name, header)
        if message is not None:
            self._current = (OpHeader(seq, op, dtype, tuple(shape), self._job, root), name)
            if not message[1] and self._ahead[message[0]]:
                self._ahead[message[0]] -= 1  # this receive takes a message read ahead
        return header

    def _check_header(self, got: bytes, side: Side, want: bytes) -> None:
        """The running operation's check of a peer's header: ``want`` is its own, or that
        of an earlier call of this rank that went alone."""
        if got != want:
            seq, op, dtype, shape, root, name, header = self._checking
            check(OpHeader(seq, op, dtype, tuple(shape), self._job, root), want, got,
                  rank=self.rank(), peer=self._transport.peer(side), side=side.name.lower(),
                  name=name if want == header else None)

    def _vet(self, side: Side, got: bytes) -> list[tuple[int, int]]:
        """The start of what a neighbour sent on connection 0 of ``side`` while this rank is
        blocked in a send or recv that reads nothing there: it must be able to start this
        rank's next operation there (``header.vet_next``), else both calls are named now.
        A message is read ahead, so that a neighbour that sends first, as this rank does,
        can go on to its receive (held in memory until this rank's recv takes it): returns
        the (connection, bytes) to read ahead."""
        message = self._messages[(side, False)] + self._ahead[side] + 1
        fits, nbytes = vet_next(got, job=self._job, call=self._calls + 1, message=message)
        peer = self._transport.peer(side)
        expected, name = self._current
        if not fits:
            raise MismatchError(
                f"operations differ: this rank called {expected.describe(name)} but its "
                f"{side.name.lower()} neighbour rank {peer} called {describe(got, self._job)}, "
                f"which cannot come next on that connection (this rank's next there is call "
                f"#{self._calls + 1} or message #{message} from rank {peer})",
                rank=self.rank(), peer=peer)
        if nbytes is None:
            return []
        self._ahead[side] += 1  # each piece with its header; an empty message is a header
        pieces = plans.point_to_point(nbytes, side, self._connections(), sending=False)
        return [(m.conn, len(expected.pack()) + m.stop - m.start)
                for m in [steps[0].recv for steps in pieces] or [plans.Move(side, 0, 0, 0)]]

    def _fail(self, error: BaseException) -> None:
        """Break the group, and tell the other ranks (they stop at once instead of waiting)."""
        self._broken = error
        if self._direct is not None:
            self._direct.abort(error)
        self._transport.abort(error)

    def _connections(self) -> int:
        return self._transport.connections

