"""Ctrl-C, SIGTERM and SIGHUP for ``ringcomm-bench -n``: a request to stop, not a crash.

While :class:`Interrupts` is entered, the first of these signals is recorded and the pass's
launcher is told to stop its ranks; nothing is raised in the middle of the bench's own work,
so the parent can still print and write every size that finished (the caller checks
:attr:`Interrupts.signalled` after each pass).  A second signal is passed on too, and the
launcher then kills its ranks at once.  The launcher runs in its own session (``spawn``), so
a terminal's Ctrl-C, sent to the whole foreground process group, reaches it once, through
here, whether it was sent to this process or to its group.

The launcher is told with SIGTERM (:data:`STOP_SIGNAL`), whatever came: it passes it on to
its ranks, which end at once and without a traceback (rank 0 has written every finished
record already), and a launcher still starting up ends quietly too, where SIGINT would make
Python print a KeyboardInterrupt traceback.
"""
from __future__ import annotations

import signal
import subprocess
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_SIGNAL = signal.SIGTERM


class Interrupts:
    """A context manager holding the handlers of :data:`SIGNALS` (main thread only)."""

    def __init__(self) -> None:
        self.signalled: int | None = None
        self._child: subprocess.Popen | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """The recorded signal's name (``SIGINT``), or '' when none came."""
        return signal.Signals(self.signalled).name if self.signalled else ""

    def watch(self, child: subprocess.Popen | None) -> None:
        """Stop ``child`` on a signal from now on (None: nobody); if one came before it
        started, at once."""
        self._child = child
        if child is not None and self.signalled is not None:
            _send(child, STOP_SIGNAL)

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = sig
        if self._child is not None:
            _send(self._child, STOP_SIGNAL)


def _send(child: subprocess.Popen, sig: int) -> None:
    try:
        child.send_signal(sig)   # a no-op once the child has been waited for
    except OSError:
        pass
