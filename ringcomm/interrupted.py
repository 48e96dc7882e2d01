"""A rank stopped by the user's Ctrl-C says so in one line, not in a traceback.

``ringcomm-launch`` passes a Ctrl-C (SIGINT) on to every rank and sets ``RINGCOMM_LAUNCHED=1``
in their environment.  Under it, a rank's uncaught ``KeyboardInterrupt`` can only be that
Ctrl-C (ranks lead their own sessions: a terminal's SIGINT reaches the launcher alone), and
one traceback per rank, all alike, would bury what the user wants to see.  So ``init()``
installs :func:`quiet_hook` there, and only there: an uncaught exception that is, or was
raised while handling, a ``KeyboardInterrupt``, or a ringcomm error saying a peer reported
one (that peer got the same Ctrl-C a moment sooner, and told this rank before its own
SIGINT arrived), prints one line: where in the user's code the rank was.  Every other
exception goes to the hook that was installed before.  The interpreter still ends as it does
after an uncaught ``KeyboardInterrupt`` (killed by SIGINT: exit code 130).
A program outside the launcher, or one that sets its own ``sys.excepthook`` later, is
left alone.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from types import TracebackType
from typing import Callable

from .transports import errors

LAUNCHED = "RINGCOMM_LAUNCHED"   # set by ringcomm-launch in every rank's environment
# ringcomm's own code: a rank "was at" the innermost frame outside these folders
OURS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
             for m in (sys.modules[__name__], errors))

_Hook = Callable[[type[BaseException], BaseException, "TracebackType | None"], object]


def _interrupted(error: BaseException | None) -> bool:
    """Whether ``error`` is a KeyboardInterrupt, came while handling one, or relays a peer's."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        reported = getattr(error, "reported", None) if isinstance(error, errors.CommError) else None
        if isinstance(reported, str) and reported.split(":")[0] == "KeyboardInterrupt":
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def where(tb: TracebackType | None) -> str:
    """`` at file.py:12 in step``: the innermost frame of ``tb`` in the user's code (outside
    ringcomm), or '' without one."""
    frames = traceback.extract_tb(tb)
    theirs = [f for f in frames if not os.path.abspath(f.filename).startswith(OURS)]
    if not (theirs or frames):
        return ""
    last = (theirs or frames)[-1]
    return f" at {os.path.basename(last.filename)}:{last.lineno} in {last.name}"


def quiet_hook(previous: _Hook) -> _Hook:
    """An excepthook: one line for a Ctrl-C, ``previous`` for everything else."""
    def hook(kind: type[BaseException], error: BaseException,
             tb: TracebackType | None) -> object:
        if not _interrupted(error):
            return previous(kind, error, tb)
        quiet = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if quiet:   # the launcher's SIGINT may still be on its way: not in the middle of this
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            print(f"interrupted (Ctrl-C at ringcomm-launch){where(tb)}", file=sys.stderr,
                  flush=True)
        except (OSError, ValueError):
            pass
        if quiet:   # and from here on a SIGINT just ends the process (exit code 130)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        return None
    hook.ringcomm_quiet = True   # type: ignore[attr-defined]
    return hook


def install(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """Install :func:`quiet_hook` when running under ringcomm-launch (once); whether it is."""
    if env.get(LAUNCHED) != "1":
        return False
    if not getattr(sys.excepthook, "ringcomm_quiet", False):
        sys.excepthook = quiet_hook(sys.excepthook)
    return True
