"""The byte stream over one queue pair's slots, shared by the ring's links (``rdma``) and the
direct ones (``rdma_direct``): a posted send copied into free slots as credits allow, arrived
bytes handed to a posted receive, emptied slots reposted and advertised to the peer
(``docs/rdma-protocol.md``, "Framing" and "Credits"); and how both wait (``Backoff``) and
flush at close (``wait_acknowledged``)."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from .errors import CommError
from .rdma_setup import SLOT_BYTES, SLOTS, Link, RdmaSetup

SPIN_SECONDS = 50e-6     # poll without sleeping this long after the last completion
FIRST_NAP, MAX_NAP = 20e-6, 1e-3
POLL_BATCH = 16          # completions taken per poll of a queue
FLUSH_SECONDS = 5.0      # at close, how long to wait for the peers to acknowledge our sends


class Backoff:
    """How a wait idles: it spins for at most ``SPIN_SECONDS`` after the last progress, then
    naps (on the side channel, so a notice wakes it) doubling from ``FIRST_NAP`` to
    ``MAX_NAP``: an idle rank costs no core, and a busy one no sleep."""

    def __init__(self, deadline: float) -> None:
        self.deadline, self.spin_until, self.nap = deadline, None, FIRST_NAP

    def progressed(self) -> None:
        self.spin_until, self.nap = None, FIRST_NAP

    def idle(self, nap: Callable[[float], None]) -> bool:
        """Spin on or nap once (``nap(seconds)``); False once the deadline has passed."""
        now = time.monotonic()
        if now >= self.deadline:
            return False
        if self.spin_until is None:
            self.spin_until = now + SPIN_SECONDS
        elif now >= self.spin_until:
            nap(min(self.nap, self.deadline - now))
            self.nap = min(self.nap * 2, MAX_NAP)
        return True


def wait_acknowledged(links: Iterable[Link], poll: Callable[[], bool], seconds: float) -> None:
    """Wait at most ``seconds`` until the peers acknowledged every message sent on ``links``.

    A send is complete for its caller once its bytes are in a send slot, but a queue pair
    destroyed before the peer's adapter acknowledged the message may never deliver it: the
    peer would wait for bytes that are gone.  A peer that is gone or stuck (or a failed
    completion) ends the wait: closing must not hang on it.
    """
    links = list(links)
    deadline = time.monotonic() + seconds
    nap = FIRST_NAP
    while any(len(link.free_slots) < SLOTS and link.failure is None for link in links):
        if time.monotonic() >= deadline:
            return
        try:
            if poll():
                nap = FIRST_NAP
                continue
        except CommError:
            return
        time.sleep(nap)
        nap = min(nap * 2, MAX_NAP)


class SlotStream:
    """Mixed into a class with ``rank``, ``_api`` (the verbs provider), ``_setup``,
    ``_on_completion(wc)`` and ``address(rank)`` (a peer's, for errors)."""

    rank: int
    _api: Any
    _setup: RdmaSetup | None
    address: Callable[[int], str | None]

    def _poll(self) -> bool:
        """Hand every completion waiting on ``_setup``'s queues to ``_on_completion``."""
        got = False
        for ctx in list(self._setup.contexts.values()):  # another thread may open a device
            n, wcs = ctx.cq.poll(POLL_BATCH)
            for wc in wcs:
                self._on_completion(wc)
            got = got or n > 0
        return got

    def _fill(self, link: Link) -> tuple[bool, bool]:
        """Copy what credits and free slots allow of ``link.sending`` into slots and post it:
        (anything posted, the whole send posted; ``link.sending`` is then None)."""
        p, pushed = link.sending, False
        credits = link.credit_in.value - link.messages_sent
        while credits > 0 and link.free_slots:
            slot = link.free_slots.pop()
            n = min(SLOT_BYTES, len(p.view) - p.pos)
            at = link.send_base + slot * SLOT_BYTES
            link.mem[at:at + n] = p.view[p.pos:p.pos + n]
            wr = link.send_wrs[slot] if n == SLOT_BYTES else self._setup.send_wr(link, slot, n)
            self._post(link, "send", link.qp.post_send, wr)
            link.messages_sent += 1
            credits -= 1
            pushed = True
            if p.advance(n):
                link.sending = None
                return True, True
        return pushed, False

    def _copy_in(self, link: Link) -> tuple[bool, bool]:
        """Hand arrived bytes to ``link.receiving``: (anything moved, the receive complete;
        ``link.receiving`` is then None)."""
        p, moved = link.receiving, False
        while link.arrived:
            slot, length = link.arrived[0]
            at = slot * SLOT_BYTES + link.taken
            n = min(length - link.taken, len(p.view) - p.pos)
            p.view[p.pos:p.pos + n] = link.mem[at:at + n]
            self._taken(link, n)
            moved = True
            if p.advance(n):
                link.receiving = None
                return True, True
        return moved, False

    def _taken(self, link: Link, n: int) -> None:
        """``n`` more bytes of the oldest arrived message handed on; repost its slot when empty."""
        link.taken += n
        if link.taken == link.arrived[0][1]:
            slot = link.arrived.popleft()[0]
            link.taken = 0
            self._post(link, "receive", link.qp.post_recv, link.recv_wrs[slot])
            link.receives_posted += 1
            self._advertise(link)

    def _advertise(self, link: Link) -> None:
        """Write our receive count into the peer's credit word (one write in flight at most)."""
        if link.credit_write_busy or link.receives_posted == link.advertised:
            return
        link.credit_out.value = link.receives_posted
        link.advertised = link.receives_posted
        link.credit_write_busy = True
        self._post(link, "credit update", link.qp.post_send, link.credit_wr)

    def _post(self, link: Link, what: str, post, wr) -> None:
        try:
            post(wr)
        except self._api.PyverbsError as err:
            raise CommError(f"posting a {what} on {link.describe()} failed: {err}",
                            rank=self.rank, peer=link.peer,
                            address=self.address(link.peer)) from err
