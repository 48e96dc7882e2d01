"""Asynchronous collectives: ``async_op=True`` and the ``Work`` handle it returns (issue 19).

Every public collective of ``Group`` is wrapped by ``asynchronous``.  With ``async_op=True``
the call returns a ``Work`` at once and the operation runs on the group's progress thread
(one per group, started on the first such call): operations run one at a time, in the order
they were issued, so ranks that issue the same sequence stay matched, and the operation
header's sequence numbers catch those that do not, as for blocking calls.

A blocking call made while nothing is pending runs on the caller's thread, exactly as
before (no hand-off, no added latency).  With work pending it first waits for all of it,
then runs on the caller's thread: the same order as queueing it, and MLX arrays keep their
gradients.  A failure breaks the group (``Group._fail``), so every later pending operation
fails with ``GroupBrokenError`` chained from the cause.

Inputs are read, and outputs written, while the operation runs: they must not change, nor be
read, until its ``Work`` completes.  MLX arrays are evaluated and exported on the caller's
thread (MLX's graph is not built from a background thread); the result is a new mx.array
that the operation fills, outside MLX's autodiff.
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import inspect
import math
import numbers
import threading
import weakref
from typing import Any, Callable

import numpy as np

from .transports.errors import ConfigError, GroupBrokenError, RingcommError

from .mlx_arrays import _result_shape, is_mlx_array, mlx_dtype_to_numpy, new_array, to_numpy


ASYNC_OP = inspect.Parameter("async_op", inspect.Parameter.KEYWORD_ONLY, default=False,
                             annotation="bool")


class WaitTimeoutError(RingcommError, TimeoutError):
    """``Work.wait(timeout)`` returned before the operation completed.  The operation goes on
    under the group's own deadline; wait again for it."""


class Work:
    """One operation issued with ``async_op=True`` (torch.distributed's ``Work``)."""

    _future: concurrent.futures.Future[Any] | None = None  # made by get_future, on first call
    _future_settled = False

    def __init__(self, rank: int, name: str, number: int, result: Any = None) -> None:
        self.name = name
        self._label = f"rank {rank}: {name}" + (f" (async operation #{number} of this group)"
                                                if number else " (async)")
        self._done = threading.Event()
        self._result = result      # an MLX result is known, and filled, before it runs
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "failed" if self._error else "completed" if self._done.is_set() else "pending"
        return f"<ringcomm.Work {self._label}: {state}>"

    def is_completed(self) -> bool:
        """True once the operation has finished, successfully or not."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """The operation's result once it completes (``None`` for barrier), or its error
        (``PeerLostError``, ``MismatchError``, ... naming the rank, the peer and the operation;
        ``GroupBrokenError`` when an earlier failure broke the group).  Past ``timeout``
        seconds, ``WaitTimeoutError``: the operation keeps running.  ``None``, ``inf`` or
        any timeout beyond what the system can sleep waits until it completes (it ends by
        the group's own deadline); a negative or NaN timeout is a ``ConfigError``."""
        if not self._done.wait(_limit(timeout)):  # Ctrl-C raises KeyboardInterrupt here
            raise WaitTimeoutError(f"{self._label} is still running after waiting {timeout:g} s; "
                                   "it keeps the group's deadline: wait again")
        if self._error is not None:
            raise self._error
        return self._result

    def result(self) -> Any:
        """The result of a completed operation, without waiting (``WaitTimeoutError`` if it
        is still running; its error if it failed)."""
        return self.wait(0)

    def exception(self) -> BaseException | None:
        """The error the operation failed with; ``None`` if it succeeded or is still running."""
        return self._error

    def get_future(self) -> concurrent.futures.Future[Any]:
        """A ``concurrent.futures.Future`` completed when the operation completes, with its
        result or its exception (torch's ``Work.get_future``; ``concurrent.futures.wait``
        and ``as_completed`` take it).  The same Future on every call; it cannot be
        cancelled (the operation runs in order whatever happens)."""
        with _FUTURES:
            if self._future is None:
                self._future = concurrent.futures.Future()
                self._future.set_running_or_notify_cancel()
            settle = self._done.is_set() and not self._future_settled
            self._future_settled |= settle
        if settle:
            _settle(self._future, self._result, self._error)
        return self._future

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if error is not None:
            self._error = error
        elif self._result is None:
            self._result = result
        self._done.set()
        if self._future is not None:  # (unlocked: get_future sees _done set from here on)
            with _FUTURES:
                settle = not self._future_settled
                self._future_settled = True
            if settle:
                _settle(self._future, self._result, self._error)


_FUTURES = threading.Lock()  # who completes a Work's Future: get_future or _finish, once


def _settle(future: concurrent.futures.Future[Any], result: Any,
            error: BaseException | None) -> None:
    """Complete ``future`` (outside the lock: its callbacks run here)."""
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _limit(timeout: float | None) -> float | None:
    """``Work.wait``'s timeout as ``threading.Event.wait`` takes it (None: no limit)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"Work.wait: timeout={timeout!r} is not a number of seconds (or None)")
    if math.isnan(timeout) or timeout < 0:
        raise ConfigError(f"Work.wait: timeout={timeout!r} is not a number of seconds >= 0 "
                          "(None or inf: wait until the operation completes)")
    return None if timeout >= threading.TIMEOUT_MAX else float(timeout)


class Progress:
    """A group's queue of issued operations and the thread that runs them in order."""

    def __init__(self, rank: int) -> None:
        self._rank = rank
        self._queue: collections.deque = collections.deque()  # (work, group, call), in order
        self._cond = threading.Condition()
        self._busy = 0        # operations queued or running
        self._issued = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def idle(self) -> bool:
        return self._busy == 0

    def on_thread(self) -> bool:
        """True on the progress thread (a collective calling another runs it directly)."""
        return self._thread is not None and threading.get_ident() == self._thread.ident

    def submit(self, group: Any, name: str, call: Callable[[], Any], result: Any) -> Work:
        with self._cond:
            if self._closed:
                raise GroupBrokenError(f"rank {self._rank}: {name} on a closed group")
            self._issued += 1
            work = Work(self._rank, name, self._issued, result)
            self._queue.append((work, group, call))
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name=f"ringcomm-progress-rank{self._rank}")
                self._thread.start()
            self._cond.notify_all()
        return work

    def drain(self) -> None:
        """Wait until every operation issued so far has finished (Ctrl-C interrupts)."""
        with self._cond:
            while self._busy:
                self._cond.wait()

    def close(self) -> None:
        """Fail every operation not yet started; let the running one end (it completes, fails,
        or reaches the group's deadline); stop the thread."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._busy -= len(dropped)
            self._cond.notify_all()
        for work, _group, _call in dropped:
            work._finish(error=GroupBrokenError(
                f"{work._label} had not started when the group was closed"))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                work, group, call = self._queue.popleft()
            try:
                broken = group._broken
                if broken is not None:
                    raise GroupBrokenError(f"{work._label} on a broken group: "
                                           f"{broken}") from broken
                result, error = call(), None
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits
                result, error = None, e
            del group, call
            with self._cond:  # idle before the Work says so: a caller's next call is direct
                self._busy -= 1
                self._cond.notify_all()
            work._finish(result, error)
            del work, result, error


def asynchronous(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a public collective of ``Group``) with ``async_op=False``: True returns a
    ``Work`` at once and runs the operation, in issue order, on the group's progress thread."""
    name = method.__name__
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self: Any, *args: Any, async_op: bool = False, **kwargs: Any) -> Any:
        progress: Progress | None = self._progress
        if progress is None and not async_op:  # never used async: the call as it always was
            return method(self, *args, **kwargs)
        if progress is not None and progress.on_thread():
            return method(self, *args, **kwargs)  # a collective made of others: run them now
        if async_op:
            if self._broken is not None:  # fails through its Work, as pending work does
                return _broken_work(self, name)
            if progress is None:
                self._progress = progress = Progress(self.rank())
                weakref.finalize(self, progress.close).atexit = False  # dropped unclosed
            bound = signature.bind(self, *args, **kwargs)  # x and dtype by position
            return _issue(self, progress, name, method, bound.args[1:], bound.kwargs)
        if progress is not None and not progress.idle():
            progress.drain()  # behind the pending work, then on this thread as always
        return method(self, *args, **kwargs)
    # what help() and IDEs show: async_op included
    call.__signature__ = signature.replace(parameters=[*signature.parameters.values(), ASYNC_OP])
    return call


def _broken_work(group: Any, name: str) -> Work:
    work = Work(group.rank(), name, 0)
    work._finish(error=GroupBrokenError(f"rank {group.rank()}: {name} on a broken group: "
                                        f"{group._broken}"))
    work._error.__cause__ = group._broken
    return work


def _issue(group: Any, progress: Progress, name: str, method: Callable[..., Any],
           args: tuple, kwargs: dict) -> Work:
    args, kwargs, result = _from_mlx(group, name, args, kwargs)
    return progress.submit(group, name, functools.partial(method, group, *args, **kwargs),
                           result)


_OBJECTS = frozenset({"broadcast_object", "all_gather_object"})  # pickled as they are
_NUMPY_RESULTS = frozenset({"reduce", "gather", "scatter"})


def _from_mlx(group: Any, name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict, Any]:
    """MLX inputs of an async call, made numpy on the caller's thread: the input evaluated and
    exported, the result a new mx.array the operation writes into (returned as the third
    item; ``None`` when nothing is MLX)."""
    first = args[0] if args else None
    mlx_dtype = name == "recv" and len(args) > 1 and type(args[1]).__module__.startswith("mlx")
    if name in _OBJECTS or not (is_mlx_array(first) or mlx_dtype):
        return args, kwargs, None
    if name in _NUMPY_RESULTS:  # ``rooted``: numpy results (None off the root)
        return (to_numpy(first), *args[1:]), kwargs, None
    if kwargs.get("out") is not None:
        raise ValueError(f"{name}: out= takes numpy arrays; for MLX the result is a new "
                         "mx.array")
    kwargs = dict(kwargs)
    if name == "send":
        return (to_numpy(first), *args[1:]), kwargs, first
    if name == "recv":  # recv(shape, mx.Dtype, src): filled through a numpy view
        shape = (first,) if isinstance(first, (int, np.integer)) else tuple(first)
        result, kwargs["out"] = new_array(shape, mlx_dtype_to_numpy(args[1]))
        return (shape, kwargs["out"].dtype, *args[2:]), kwargs, result
    if name == "recv_like":
        result, kwargs["out"] = new_array(tuple(first.shape), mlx_dtype_to_numpy(first.dtype))
        return (kwargs["out"], *args[1:]), kwargs, result
    a = to_numpy(first)
    shape = _result_shape(name, a.shape, group.size())
    if shape is None:  # the numpy path raises its error
        return (a, *args[1:]), kwargs, None
    result, kwargs["out"] = new_array(shape, a.dtype)
    return (a, *args[1:]), kwargs, result
