"""ringcomm's log: the ``ringcomm`` logger of Python's ``logging``, for what a user should see
without configuring anything and for what ``RINGCOMM_LOG=debug`` adds.

WARNING (shown by default): a set-up that waits for a peer (``waiting``), a misspelled
setting, a rendezvous without a token.  DEBUG: set-up steps, connections, each operation's
plan.  Until the application configures logging itself (a handler on the root logger or on
``ringcomm``), ``FALLBACK`` writes the records the logger lets through to stderr, one line
each, as ``logging.lastResort`` would, but at the logger's level, so that
``RINGCOMM_LOG=debug`` shows debug lines too.  Once the application has a handler, records
go there and the fallback stays silent.  The logger is silenced like any other:
``logging.getLogger("ringcomm").setLevel(logging.ERROR)`` (or ``RINGCOMM_LOG=error``).
"""
from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from typing import Callable

from .errors import ConfigError

logger = logging.getLogger("ringcomm")
DEBUG, INFO, WARNING = logging.DEBUG, logging.INFO, logging.WARNING
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "off": logging.CRITICAL + 1}
FIRST_NOTICE = 5.0   # seconds a set-up waits for a peer before saying so; then at 2x, 4x, ...

# The timeout of the init() under way in this context (for the waiting line: RINGCOMM_TIMEOUT
# or init(timeout=)), set by ringcomm.init; None elsewhere (the line then says the time left).
setup_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "ringcomm_setup_timeout", default=None)


class _Fallback(logging.Handler):
    """stderr for ``ringcomm`` records while the application has no handler of its own."""

    def emit(self, record: logging.LogRecord) -> None:
        if any(h is not self for h in logger.handlers) or (logger.propagate and
                                                           logging.root.handlers):
            return  # the application's handlers have it
        try:
            label = "ringcomm" if record.levelno >= WARNING else \
                f"ringcomm {record.levelname.lower()}"
            sys.stderr.write(f"{label}: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # (a closed stderr, a bad format argument): logging's own policy
            self.handleError(record)


FALLBACK = next((h for h in logger.handlers if type(h).__name__ == "_Fallback"), None)
if FALLBACK is None:  # (once per process, even if this module were loaded twice)
    FALLBACK = _Fallback()
    logger.addHandler(FALLBACK)


def level_named(text: str | None) -> int | None:
    """``RINGCOMM_LOG``'s level (any case), or None when unset; ConfigError when unknown."""
    if text is None or not text.strip():
        return None
    level = LEVELS.get(text.strip().lower())
    if level is None:
        raise ConfigError(f"RINGCOMM_LOG must be one of {', '.join(LEVELS)}; got {text!r}")
    return level


def apply(level: int | None) -> None:
    """Set the logger's level from ``RINGCOMM_LOG`` (None: leave it as the program set it)."""
    if level is not None and logger.level != level:
        logger.setLevel(level)


class waiting:
    """``with waiting(rank, what, deadline):`` around a set-up step that waits for peers:
    if it is still waiting after ``FIRST_NOTICE`` seconds, one WARNING line "rank R: waiting
    for WHAT (RINGCOMM_TIMEOUT=T s, S s left)", repeated at doubling intervals.  ``what`` may
    be a callable, for what changes while waiting (the ranks still missing).  A timer thread
    says it, so the step's own waits stay as they are; nothing starts when WARNING is off."""

    def __init__(self, rank: int, what: str | Callable[[], str], deadline: float,
                 first: float = FIRST_NOTICE) -> None:
        self.rank, self.what, self.deadline, self.first = rank, what, deadline, first
        self.timeout = setup_timeout.get()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._done = False

    def __enter__(self) -> waiting:
        self.start = time.monotonic()
        if logger.isEnabledFor(WARNING) and self.deadline - self.start > self.first:
            self._after(self.first)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
            timer = self._timer
        if timer is not None:  # (ended before set-up returns: no thread outlives the wait)
            timer.cancel()
            timer.join()

    def _after(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._say)
        self._timer.daemon = True
        self._timer.start()

    def _say(self) -> None:
        with self._lock:
            if self._done:
                return
            now = time.monotonic()
            left = self.deadline - now
            if left <= 0:
                return
            self._after(max(2 * (now - self.start), 1.0) - (now - self.start))
        # outside the lock: a slow handler never holds up the end of the wait
        what = self.what() if callable(self.what) else self.what
        limit = f"RINGCOMM_TIMEOUT={self.timeout:g} s, " if self.timeout else ""
        logger.warning("rank %d: waiting for %s (%s%.0f s left)", self.rank, what, limit, left)


def ranks_text(ranks: list[int], most: int = 8) -> str:
    """"rank 3" or "ranks 1, 2, 5" (at most ``most`` named, then how many more)."""
    if not ranks:
        return "no rank (all have arrived)"
    shown = ", ".join(map(str, ranks[:most]))
    more = f" and {len(ranks) - most} more" if len(ranks) > most else ""
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}{more}"
