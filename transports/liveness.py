"""Whom to blame when a TCP wait times out: the neighbour that does not answer.

When one rank of a ring freezes (SIGSTOP, swapping, stuck outside ringcomm), every rank
waits, and the peer a rank waits for is often alive and waiting itself.  So before it raises
``CommTimeoutError``, a rank sends a probe on each control connection (``notices.probe``) and
listens: a live neighbour answers at once from whatever wait it is in
(``TcpTransport._on_notice``, or this module when it is timing out too), and the neighbour
that stays silent for ``PROBE_SECONDS`` is the frozen one.  When every neighbour answers,
the frozen rank is further along the ring: its own neighbours find it the same way and send
their abort notice, which this rank waits for up to ``NOTICE_SECONDS`` in all.  A notice
that arrives meanwhile wins at once, since its sender saw the failure first.  So a timeout
is raised at most ``NOTICE_SECONDS`` after the deadline.

Each answer lists the ranks its sender waits to receive from (``notices.alive``): a
neighbour that this rank waits to receive from, and that waits to receive from this rank,
is half of a likely deadlock in the program, and both ranks' errors say so
(``waiting_for_each_other``).
"""
from __future__ import annotations

import selectors
import socket
import time
from typing import Collection, NamedTuple, Sequence

from . import notices
from .errors import CommError

PROBE_SECONDS = 0.5    # a live rank answers within this (it is sleeping in poll())
NOTICE_SECONDS = 1.0   # ... and a rank further along the ring reports within this

Link = tuple[int, socket.socket]  # (neighbour rank, control connection to it)


class Verdict(NamedTuple):
    notice: CommError | None    # the failure a neighbour reported meanwhile
    silent: list[int]           # neighbours that did not answer
    closed: list[int]           # neighbours whose control connection closed
    waits: dict[int, frozenset[int]]  # neighbour -> whom it waits to receive from, answering


def listen(rank: int, size: int, links: Sequence[Link], address: notices.Address, *,
           probe: bool, seconds: float, receiving_from: Collection[int] = ()) -> Verdict:
    """Read the control connections for up to ``seconds``, answering probes.

    With ``probe``, first ask every neighbour whether it is alive, and stop once each has
    answered or closed, or ``seconds`` pass; without, wait for a notice (or for every
    connection to close).  Once every neighbour has answered, keep listening for a notice
    until ``NOTICE_SECONDS``.  ``receiving_from``: the ranks this rank waits to receive from,
    told to a neighbour that probes.
    """
    start = time.monotonic()
    if probe:
        notices.send((sock for _, sock in links), notices.probe(rank))
    answered: set[int] = set()
    waits: dict[int, frozenset[int]] = {}
    closed: list[int] = []
    sel = selectors.DefaultSelector()
    try:
        for peer, sock in links:
            sel.register(sock, selectors.EVENT_READ, (peer, sock))
        while sel.get_map():
            waiting = {key.data[0] for key in sel.get_map().values()} - answered
            limit = seconds if waiting or not probe else max(seconds, NOTICE_SECONDS)
            left = start + limit - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                peer, sock = key.data
                message = notices.read(sock)
                if message is None:
                    sel.unregister(sock)
                    closed.append(peer)
                elif message.kind == notices.PROBE:
                    answered.add(peer)  # asking is answering: it is alive
                    notices.send((sock,), notices.alive(rank, receiving_from))
                elif message.kind == notices.ALIVE:
                    answered.add(peer)
                    waits[peer] = waits.get(peer, frozenset()) | \
                        notices.receiving_from(message, size)
                else:
                    return Verdict(notices.to_error(message, rank=rank, size=size,
                                                    sender=peer, address=address,
                                                    receiving_from=receiving_from),
                                   [], [], waits)
        silent = [peer for peer, _ in links if peer not in answered and peer not in closed]
        return Verdict(None, list(dict.fromkeys(silent)) if probe else [], closed, waits)
    finally:
        sel.close()


def waiting_for_each_other(rank: int, receiving_from: Collection[int],
                           verdict: Verdict) -> int | None:
    """A neighbour this rank waits to receive from that answered it waits to receive from
    this rank too (the first such), or None."""
    return next((peer for peer in receiving_from
                 if rank in verdict.waits.get(peer, frozenset())), None)
