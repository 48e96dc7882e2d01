"""A group garbage-collected without ``close()``: what would outlive it is released.

Its direct links' acceptor thread and listener, its lanes' worker threads and its sockets do
not go away with the ``Group`` object (a running thread keeps what it serves alive), so a
program that drops subgroups would gain a thread and a few file descriptors each time.  A
``weakref.finalize`` on the group (holding those parts, never the group, so it never keeps
the group alive nor touches a half-built one) closes them and warns with a
``ResourceWarning``, as Python does for an unclosed file.  ``close()`` detaches it.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from typing import Any


def watch(group: Any, direct: Any, lanes: Any, transport: Any) -> weakref.finalize[..., None]:
    """Release ``direct`` (or None), ``lanes`` and ``transport`` when ``group`` is collected;
    the caller detaches the returned finalizer when it closes them itself."""
    finalizer = weakref.finalize(group, _release, repr(group), direct, lanes, transport)
    finalizer.atexit = False  # at exit the process releases everything anyway
    return finalizer


def _release(name: str, direct: Any, lanes: Any, transport: Any) -> None:
    warnings.warn(f"{name} was garbage-collected without close(): its connections and "
                  "threads are released now; call close() or use it in a with block",
                  ResourceWarning)
    if threading.current_thread().name.startswith("ringcomm-"):
        # collected as cyclic garbage (a broken group holds its error's traceback) on one
        # of ringcomm's threads, which cannot join itself: close from a thread of its own
        threading.Thread(target=_close, args=(direct, lanes, transport), daemon=True,
                         name="ringcomm-release").start()
    else:
        _close(direct, lanes, transport)


def _close(direct: Any, lanes: Any, transport: Any) -> None:
    if direct is not None:
        direct.close()  # its acceptor first: the transport closes the listener
    lanes.close()
    transport.close()
