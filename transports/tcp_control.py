"""The control connections of a TCP ring (ringcomm protocol): failure notices, liveness probes,
goodbyes, and what they tell a wait.

A mixin of ``TcpTransport``, apart so that the data path stays one module.  Each rank has one
control connection per neighbour.  It carries an abort notice when a rank fails (every rank
then learns which one and why), liveness probes at a deadline (``transports.liveness``), and
a goodbye when a rank closes its group, or its program ends, normally: so a connection that
closes *without* one means the neighbour's process died (SIGKILL, a crash, ``os._exit``).

A ring wait takes a neighbour's closing alone as no error (it may have finished everything
it had for this rank; a data connection reports a loss an operation needs).  A wait outside
the ring (a direct link to a non-neighbour, ``transports.direct``) watches these
connections too (``control_sockets``, ``hear``), and there a neighbour gone without a
goodbye is a ``PeerLostError`` naming it at once, as the ring's own waits hear its death.
"""
from __future__ import annotations

import atexit
import socket
import sys
import weakref

from . import liveness, notices
from .base import Side
from .errors import CommError, CommTimeoutError, PeerLostError
from .tcp_conn import Conn

NOTICE_GRACE = 0.1        # how long a broken data connection waits for the abort notice
_OPEN: "weakref.WeakSet[ControlConnections]" = weakref.WeakSet()  # say goodbye at exit


class Heard:
    """What the control connections said, shared by a transport and its lanes."""

    __slots__ = ("goodbyes", "departed", "reported")

    def __init__(self) -> None:
        self.goodbyes: set[Side] = set()       # sides whose neighbour said goodbye
        self.departed: dict[int, bool] = {}    # neighbour -> whether it said goodbye
        self.reported: CommError | None = None  # a failure ``hear`` took off a connection


class ControlConnections:
    """Notices, probes and goodbyes for ``TcpTransport`` (whose ``_control`` they use)."""

    def _init_control(self, heard: Heard | None = None) -> None:
        self._heard = Heard() if heard is None else heard
        self._aborted = False

    def _track_for_exit(self) -> None:
        if self.secure:
            _OPEN.add(self)

    # -- for a wait outside the ring (transports.direct) ----------------------------------

    def control_sockets(self) -> list[socket.socket]:
        """The open control connections, to poll for reading while waiting elsewhere."""
        return [c.sock for c in self._control.values()]

    def hear(self, sock: socket.socket) -> None:
        """Take what arrived on control connection ``sock``: answer a probe, note a goodbye,
        raise a notice; raise ``PeerLostError`` if it closed without a goodbye."""
        c = next((c for c in self._control.values() if c.sock is sock), None)
        if c is None:
            return
        try:
            self._on_notice(c, strict=True)
        except CommError as e:  # read off the connection now: later errors report it too
            self._heard.reported = self._heard.reported or e
            raise

    def check_departed(self) -> None:
        """Raise ``PeerLostError`` if a neighbour's process was found gone earlier."""
        for peer, said_goodbye in self._heard.departed.items():
            if not said_goodbye:
                raise self._departure(peer)

    def _departure(self, peer: int) -> PeerLostError:
        return PeerLostError(f"ring neighbour rank {peer} is gone: its control connection "
                             "closed without a goodbye (its process died, was killed, or "
                             "crashed)", rank=self.rank, peer=peer,
                             address=self._address(peer))

    # -- notices on the ring's own waits -----------------------------------------------------

    def _on_notice(self, c: Conn, strict: bool = False) -> None:
        """Raise the error a neighbour's abort notice reports; answer its liveness probe.

        A control connection that just closes means the neighbour closed its group (or died):
        in a ring wait that alone is no error, since it may have finished everything it had
        for this rank; the data connections report a real loss when an operation needs that
        neighbour.  With ``strict`` (a wait outside the ring) a closing without a goodbye is
        a ``PeerLostError``.
        """
        message = notices.read(c.sock)
        if message is None:
            said_goodbye = c.side in self._heard.goodbyes
            self._watch(c, 0)
            c.sock.close()
            del self._control[c.side]
            departed = self._heard.departed
            departed[c.peer] = departed.get(c.peer, True) and said_goodbye
            if strict and not said_goodbye:
                raise self._departure(c.peer)
        elif message.kind == notices.PROBE:
            notices.send((c.sock,), notices.alive(self.rank, self._receiving_from()))
        elif message.kind == notices.BYE:
            self._heard.goodbyes.add(c.side)
        elif message.kind != notices.ALIVE:  # a late answer to a probe of ours: nothing to do
            raise notices.to_error(message, rank=self.rank, size=self.size, sender=c.peer,
                                   address=self._address,
                                   receiving_from=self._receiving_from())

    def _receiving_from(self) -> set[int]:
        """The neighbours a receive of this rank waits for now (told to a probe)."""
        return {c.peer for conns in self._conns for c in conns if c.receiving is not None}

    def _lost(self, c: Conn, what: str, e: OSError | None) -> CommError:
        """The error for a broken data connection: the neighbour's abort notice if it sent
        one (it does so just before closing), else a PeerLostError blaming the neighbour."""
        if self._heard.reported is not None:  # heard first, by a wait outside the ring
            return self._heard.reported
        control = self._control.get(c.side)
        if control is not None:
            heard = liveness.listen(self.rank, self.size, [(control.peer, control.sock)],
                                    self._address, probe=False, seconds=NOTICE_GRACE)
            if heard.notice is not None:
                return heard.notice
        reason = "peer closed the connection" if e is None else (e.strerror or str(e))
        return PeerLostError(f"connection {c.side.name.lower()}[{c.index}] lost during "
                             f"{what}: {reason}", rank=self.rank, peer=c.peer,
                             address=str(c.address))

    def _timed_out(self) -> CommError:
        """The error at a deadline.  With ringcomm's protocol the neighbours are probed first
        (``transports.liveness``), so that the error names the frozen rank, not a live one
        that was waiting for it too; this adds at most ``liveness.NOTICE_SECONDS``."""
        if self._heard.reported is not None:
            return self._heard.reported
        pending = [(c, k) for conns in self._conns for c in conns
                   for k, v in (("send to", c.sending), ("receive from", c.receiving))
                   if v is not None]
        detail = "; ".join(f"{k} rank {p.peer} on {p.side.name.lower()}[{p.index}]"
                           for p, k in pending) or "progress"
        peer = pending[0][0].peer if pending else None
        why = "a peer may be frozen, overloaded or in a different operation"
        if self.secure and self._control:
            receiving = self._receiving_from()
            heard = liveness.listen(self.rank, self.size,
                                    [(c.peer, c.sock) for c in self._control.values()],
                                    self._address, probe=True, seconds=liveness.PROBE_SECONDS,
                                    receiving_from=receiving)
            if heard.notice is not None:
                return heard.notice
            both = liveness.waiting_for_each_other(self.rank, receiving, heard)
            if both is not None and not heard.silent:
                peer, why = both, notices.each_waits(self.rank, both)
            elif heard.silent or heard.closed:
                peer = next((c.peer for c, _ in pending if c.peer in heard.silent),
                            (heard.silent or heard.closed)[0])
                why = (f"rank {peer} did not answer a liveness probe within "
                       f"{liveness.PROBE_SECONDS:g} s: it is frozen (stopped, swapping), busy "
                       "outside ringcomm, or still in init() connecting to its other neighbour"
                       if peer in heard.silent else
                       f"rank {peer} closed its control connection without a notice")
            else:
                why = ("every neighbour answered a liveness probe: a rank further along the "
                       "ring, or ranks in different operations, hold the ring up")
        return CommTimeoutError(f"deadline passed while waiting to {detail}; {why}",
                                rank=self.rank, peer=peer,
                                address=self._address(peer) if peer is not None else None)

    # -- the end -------------------------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        """Tell both neighbours why this rank stops (they pass it on), then close.

        Best effort and non-blocking: a notice that does not fit in the socket buffer is
        dropped, and the neighbour still learns of the failure from the closed connections.
        """
        if self._closed:
            return
        if isinstance(error, CommError) and error.peer is not None and error.address is None \
                and 0 <= error.peer < self.size:
            error.address = self._address(error.peer)  # e.g. a MismatchError from the engine
        self._aborted = True
        if self.secure:
            notices.send((c.sock for c in self._control.values()),
                         notices.encode(error, self.rank))
        self.close()

    def _say_goodbye(self) -> None:
        """Before a normal close: the neighbours then know this process did not die."""
        _OPEN.discard(self)
        if self.secure and not self._aborted and not self._closed:
            notices.send((c.sock for c in self._control.values()), notices.goodbye(self.rank))


@atexit.register
def _goodbye_at_exit() -> None:
    """A program that ends without closing its groups says goodbye too, unless it ends with
    an unhandled exception (a crash: its neighbours should hear of it)."""
    if getattr(sys, "last_value", None) is not None:
        return
    for transport in list(_OPEN):
        transport._say_goodbye()
