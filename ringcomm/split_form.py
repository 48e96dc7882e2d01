"""Forming a subgroup's ring while listening to the parent's (``ringcomm.split``).

The subgroup's set-up (``TcpSetup``, ``RdmaSetup``) knows only the subgroup's ranks: a member
that dies once the exchange is over leaves the others waiting in accept or retrying a refused
connect until the deadline, each blaming whichever subgroup neighbour it waits for (often a
live one), in the subgroup's rank numbers, with advice about the hostfile.  The parent ring
knows better: until split's closing step every parent rank is inside split, so a parent
neighbour whose control connection closes without a goodbye (TCP) or whose side-channel
connection closes (RDMA) has died, and the abort notice its neighbours then send reaches
every rank within milliseconds.  So the set-up runs on a thread of its own while the calling
thread listens to the parent (``form``), and every error is told in the parent's terms
(``in_parent_terms``): the parent ranks, the operation ``split``, the lost process's address.

A set-up abandoned that way (the parent failed first) ends by its own deadline on its thread,
closing what it opened; nothing it formed is handed out.
"""
from __future__ import annotations

import re
import select
import socket
import threading
import time
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

from .transports import Transport
from .transports.errors import CommError, CommTimeoutError

LATE = 2.0      # seconds past the deadline a set-up may take to report (a probe, a notice)
RDMA_NAP = 0.005  # the side channel's watch has no wake-up: check the set-up this often

_RANK = re.compile(r"\brank (\d+)\b")
_RANKS = re.compile(r"\branks \[([\d, ]+)\]")  # RDMA's set-up: "ranks [3] did not reach ..."
_ADVICE = re.compile(r";? (?:is rank \d+|are they) running(?: with the same [\w ]+)?\?")


class Parent(Protocol):
    """What ``form`` needs of the parent group (``ringcomm.group.Group`` is one): its rank,
    its transport to listen to, and breaking it.  Owned here, so this module never imports
    the group module that calls it."""

    _transport: Transport

    def rank(self) -> int: ...

    def _fail(self, error: BaseException) -> None: ...


class Closes(Protocol):
    """What ``form`` needs of the subgroup ``build`` makes: closing it when nobody takes it."""

    def close(self) -> None: ...


Formed = TypeVar("Formed", bound=Closes)


def form(parent: Parent, build: Callable[[], Formed], deadline: float,
         retell: Callable[[CommError], CommError]) -> Formed:
    """``build()`` (the subgroup's set-up, under ``deadline``) on a thread of its own, while
    this thread listens to the parent.  The failure the parent reports first is raised, else
    ``build``'s own (``retell`` puts a ``CommError`` in the parent's terms); either breaks the
    parent, as a failed collective does, so that every other rank hears of it at once."""
    forming = _Forming(build)
    try:  # (a parent that fails here names the lost rank first-hand, or relays who did)
        _listen(parent, forming, deadline + LATE)
    except BaseException as e:
        forming.abandon()
        if isinstance(e, CommError):
            e.op = "split"
        parent._fail(e)
        raise
    finally:
        forming.close()
    error = forming.error
    if error is None and forming.group is None:
        forming.abandon()
        error = CommTimeoutError("the subgroup's set-up did not end by the deadline",
                                 rank=parent.rank(), op="split")
    if error is not None:
        told = retell(error) if isinstance(error, CommError) and error.op != "split" else error
        if isinstance(told, CommTimeoutError):
            raise SetupTimedOut(told)
        parent._fail(told)
        raise told from (error if told is not error else None)
    return forming.group


class SetupTimedOut(Exception):
    """The subgroup's set-up reached the deadline: ``error`` names whom this rank waited for,
    who may be alive and waiting too.  split's closing step over the parent, at the same
    deadline, names the rank that is frozen (the parent's liveness probes) instead."""

    def __init__(self, error: CommTimeoutError) -> None:
        super().__init__(str(error))
        self.error = error


class _Forming(Generic[Formed]):
    """The set-up's thread and what it produced; ``wake`` becomes readable when it ends."""

    def __init__(self, build: Callable[[], Formed]) -> None:
        self.group: Formed | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.wake, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._abandoned = False
        threading.Thread(target=self._run, args=(build,), daemon=True,
                         name="ringcomm-split-form").start()

    def _run(self, build: Callable[[], Formed]) -> None:
        try:
            group = build()
        except BaseException as e:  # handed to the caller (it is not raised on this thread)
            self.error = e
        else:
            with self._lock:
                unwanted = self._abandoned
                if not unwanted:
                    self.group = group
            if unwanted:
                group.close()
        finally:
            self.done.set()
            try:
                self._wake_w.send(b"!")
            except OSError:  # the caller has stopped listening
                pass
            self._wake_w.close()

    def abandon(self) -> None:
        """Nobody takes the group now: close it (or have the thread close it when done)."""
        with self._lock:
            self._abandoned = True
            group, self.group = self.group, None
        if group is not None:
            group.close()

    def close(self) -> None:
        self.wake.close()


def _listen(parent: Parent, forming: _Forming, until: float) -> None:
    """Wait for ``forming`` to end; raise the failure the parent reports first, if any."""
    transport: Any = parent._transport
    hear = getattr(transport, "hear", None)  # TCP: its control connections
    side = getattr(transport, "_side", None)  # RDMA: its side channel
    if hear is not None:
        transport.check_departed()
    while not forming.done.is_set():
        left = until - time.monotonic()
        if left <= 0:
            return
        if side is not None:
            side.watch(min(left, RDMA_NAP))
            continue
        sockets = transport.control_sockets() if hear is not None else []
        poll = select.poll()
        for sock in (forming.wake, *sockets):
            poll.register(sock, select.POLLIN)
        ready = {fd for fd, _ in poll.poll(max(1, int(left * 1000)))}
        for sock in sockets:
            if sock.fileno() in ready:
                hear(sock)  # raises a notice, or the death of a neighbour


def in_parent_terms(error: CommError, parent_rank: int, members: Sequence[int], color: int,
                    addresses: Sequence[str]) -> CommError:
    """``error`` from the subgroup's set-up, told as split's: this rank and its peer by their
    parent ranks (also inside the text), operation ``split``, the peer's address, and none of
    the set-up's advice about the hostfile or coordinator (split made them itself)."""
    def parent_rank_of(rank: int | None) -> int | None:
        return members[rank] if rank is not None and 0 <= rank < len(members) else rank

    def retold(text: str) -> str:
        text = _ADVICE.sub("", text)  # about the hostfile or coordinator split made itself
        text = _RANKS.sub(lambda m: "ranks [" + ", ".join(
            str(parent_rank_of(int(r))) for r in m[1].split(",")) + "]", text)
        return _RANK.sub(lambda m: f"rank {parent_rank_of(int(m[1]))}", text)

    what = (f"forming the ring of color {color} (parent ranks "
            f"{', '.join(map(str, members))}): {retold(error.what)}")
    peer = parent_rank_of(error.peer)
    address = error.address
    if address is None and error.peer is not None and 0 <= error.peer < len(members):
        address = addresses[error.peer]
    told = type(error)(what, rank=parent_rank, peer=peer, address=address, op="split")
    if error.origin is not None:  # relayed inside the subgroup: its layers, retold
        told.origin, told.failed = parent_rank_of(error.origin), parent_rank_of(error.failed)
        told.reported = retold(error.reported) if error.reported else error.reported
    return told
