"""The thread that keeps an RDMA rank's links alive while the rank is outside ringcomm.

On unreliable-connected queue pairs nothing resends a lost frame but its sender, and nothing
acknowledges an arrived one but its receiver (``transports.rdma_reliable``).  A rank whose
send completed (its bytes are in send slots) may go on computing, or wait for something
else; if a frame of that send was lost, or the report that acknowledges it, its peer would
wait for it until this rank's next call.  TCP has the kernel for that; here a thread does
it: every ``KEEPER_NAP`` it takes the transport's lock if no call holds it (a call does the
same work itself), polls, resends and reports.  Every call of the transport holds the lock,
so link state only ever changes under it.
"""
from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

KEEPER_NAP = 0.02   # seconds between the thread's rounds (below rdma_reliable.RTO_FIRST)

F = TypeVar("F", bound=Callable)


class Keeper:
    """Runs ``work()`` every ``KEEPER_NAP`` while nobody holds ``lock``; what it raises is kept
    in ``error`` for the next call to raise (and the thread stops)."""

    def __init__(self, work: Callable[[], object], name: str) -> None:
        self.lock = threading.RLock()
        self.error: BaseException | None = None
        self._work = work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(KEEPER_NAP):
            if not self.lock.acquire(blocking=False):
                continue  # a call is running: it serves the links itself
            try:
                if not self._stop.is_set():
                    self._work()
            except BaseException as e:  # noqa: BLE001 - raised by the next call instead
                self.error = e
                return
            finally:
                self.lock.release()

    def stop(self) -> None:
        """Stop the thread and wait for its round to end (before the links go)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)


def locked(method: F) -> F:
    """Run ``method`` under its object's ``_keeper.lock`` (the transport's calls)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._keeper.lock:
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]
