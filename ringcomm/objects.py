"""Collectives of Python objects: ``broadcast_object`` and ``all_gather_object`` (issue 31,
item 10), as torch.distributed's and mpi4py's lower-case ``bcast``/``allgather``.

Warning: the objects travel pickled, and unpickling runs code chosen by whoever pickled.  A
rank of the group can therefore run code on every rank that receives its object: use these
only within an authenticated group, one with a token (``RINGCOMM_TOKEN`` or ``token=``; the
launcher derives one), where only the job's own ranks can join.  A group without a token
warns once per process (``RuntimeWarning``).

The sizes go first (an 8-byte broadcast, resp. all_gather), so every rank allocates exactly
what comes, and every rank checks them alike before any object byte moves: a pickled object
over ``MAX_OBJECT_BYTES`` (all_gather_object: the size times the largest pickle, since every
rank's bytes are padded to the largest), or one that the root (any rank) could not pickle, is
an ``ObjectError`` on every rank and the group stays usable.  The bytes then go by the
ring broadcast (``plans.broadcast``), resp. the ring all_gather (``plans.all_gather``), under
ops 16 and 17 of the operation header, so a rank in another operation or with another root
is a ``MismatchError``.  One deadline, the group's ``timeout``, covers both steps.
"""
from __future__ import annotations

import pickle
import time
import warnings
from typing import Any

import numpy as np

from .transports import RingcommError

from . import plans
from .group_info import has_token
from .ranks import rank_argument

MAX_OBJECT_BYTES = 1 << 30  # the most bytes a pickled object (or all_gather_object's whole
                            # padded gather) may take: what a rank allocates for its peers'
_SIZE = np.dtype(np.int64)
_UNPICKLABLE = -1  # the size a rank sends when it could not pickle its object
_BYTES = np.dtype(np.uint8)
_warned = False


class ObjectError(RingcommError, ValueError):
    """An object collective's object could not be pickled or unpickled, or is too large
    (``MAX_OBJECT_BYTES``).  Raised on every rank when a sender's object cannot go (the
    group stays usable); an unpickling error only where it happens."""


def broadcast_object(group: Any, obj: Any, root: int) -> Any:
    """The root's ``obj`` on every rank (the root gets ``obj`` itself, the others a copy)."""
    n, r = group.size(), group.rank()
    root = rank_argument(root, "root", "broadcast_object", r, n)
    if n == 1:
        return obj
    _warn_without_token(group)
    deadline = time.monotonic() + group.timeout
    size = np.zeros(1, _SIZE)
    payload, failure = _pickle(obj) if r == root else (b"", None)
    size[0] = _UNPICKLABLE if failure is not None else len(payload)
    connections = group._connections()
    group._run("broadcast_object", plans.broadcast(_SIZE.itemsize, n, r, root, connections),
               size.view(np.uint8), None, _SIZE, (1,), root=root, deadline=deadline)
    nbytes = int(size[0])
    _check({root: nbytes}, nbytes, r, "broadcast_object", failure)
    # (writable on the root too: the engine takes headers ahead of data into the buffer)
    data = np.frombuffer(bytearray(payload), np.uint8) if r == root else \
        np.empty(nbytes, np.uint8)
    group._run("broadcast_object", plans.broadcast(nbytes, n, r, root, connections), data, None,
               _BYTES, (nbytes,), root=root, deadline=deadline)
    return obj if r == root else _unpickle(data, r, root, "broadcast_object")


def all_gather_object(group: Any, obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (this rank's is ``obj`` itself)."""
    n, r = group.size(), group.rank()
    if n == 1:
        return [obj]
    _warn_without_token(group)
    deadline = time.monotonic() + group.timeout
    payload, failure = _pickle(obj)
    sizes = np.zeros(n, _SIZE)
    sizes[r] = _UNPICKLABLE if failure is not None else len(payload)
    connections = group._connections()
    group._run("all_gather_object", plans.all_gather(_SIZE.itemsize, n, r, connections),
               sizes.view(np.uint8), None, _SIZE, (1,), deadline=deadline)
    lengths = [int(s) for s in sizes]
    widest = max(lengths)
    _check(dict(enumerate(lengths)), n * widest, r, "all_gather_object", failure)
    data = np.zeros(n * widest, np.uint8)
    data[r * widest:r * widest + len(payload)] = np.frombuffer(payload, np.uint8)
    group._run("all_gather_object", plans.all_gather(widest, n, r, connections), data, None,
               _BYTES, (widest,), deadline=deadline)
    return [obj if j == r else _unpickle(data[j * widest:j * widest + lengths[j]], r, j,
                                         "all_gather_object") for j in range(n)]


def _pickle(obj: Any) -> tuple[bytes, BaseException | None]:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), None
    except Exception as e:  # noqa: BLE001 - every rank is told, then each raises ObjectError
        return b"", e


def _check(sizes: dict[int, int], total: int, rank: int, name: str,
           failure: BaseException | None) -> None:
    """The same verdict on every rank, from the sizes (by sender) every rank holds alike."""
    bad = [j for j, s in sizes.items() if s == _UNPICKLABLE]
    if bad:
        who = "this rank" if failure is not None else f"rank {bad[0]}"
        raise ObjectError(f"rank {rank}: {name}: {who} could not pickle its object"
                          + (f": {type(failure).__name__}: {failure}" if failure else "")) \
            from failure
    if any(s < 0 for s in sizes.values()):
        raise ObjectError(f"rank {rank}: {name}: a peer sent an invalid object size "
                          f"{min(sizes.values())}")
    if total > MAX_OBJECT_BYTES:
        raise ObjectError(f"rank {rank}: {name}: the pickled objects take {total} bytes "
                          f"{'(padded to the largest, on every rank) ' if len(sizes) > 1 else ''}"
                          f"over ringcomm.objects.MAX_OBJECT_BYTES = {MAX_OBJECT_BYTES}")


def _unpickle(data: np.ndarray, rank: int, sender: int, name: str) -> Any:
    try:
        return pickle.loads(data.data)
    except Exception as e:  # noqa: BLE001 - e.g. a class this rank cannot import
        raise ObjectError(f"rank {rank}: {name}: rank {sender}'s object could not be "
                          f"unpickled here: {type(e).__name__}: {e}") from e


def _warn_without_token(group: Any) -> None:
    """Once per process: objects from a group no token authenticates."""
    global _warned
    if _warned or has_token(group):
        return
    _warned = True
    warnings.warn("ringcomm: broadcast_object/all_gather_object unpickle what other ranks "
                  "send, which can run code, and no token authenticates this group's "
                  "connections: use them only in a group with a token (RINGCOMM_TOKEN or "
                  "init(token=...))", RuntimeWarning, stacklevel=5)
