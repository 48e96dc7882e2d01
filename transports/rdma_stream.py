"""The byte stream over one queue pair's frames, shared by the ring's links (``rdma``) and the
direct ones (``rdma_direct``): a posted send copied into data frames as the window and credits
allow, arrived bytes handed in order to a posted receive, emptied receives reposted
(``docs/rdma-protocol.md``, "Framing"; what makes the frames reliable is
``transports.rdma_reliable``); and how both wait (``Backoff``) and flush at close
(``wait_acknowledged``)."""
from __future__ import annotations

import time
from typing import Callable, Iterable

from .errors import CommError
from .rdma_frames import (DATA, FRAME_BYTES, HEADER_BYTES, PAYLOAD_BYTES, SEQ_MOD, WINDOW,
                          payload_crc)
from .rdma_reliable import Reliable
from .rdma_setup import RECV, Link, RdmaSetup

SPIN_SECONDS = 50e-6     # poll without sleeping this long after the last completion
FIRST_NAP, MAX_NAP = 20e-6, 1e-3
POLL_BATCH = 16          # completions taken per poll of a queue
FLUSH_SECONDS = 5.0      # at close, the least time to wait for the peers' acknowledgements


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


def wait_acknowledged(links: Iterable[Link], progress: Callable[[], bool], seconds: float,
                      nap: Callable[[float], None] = time.sleep) -> None:
    """Wait at most ``seconds`` until the peers acknowledged every frame sent on ``links``
    (``progress()`` polls and resends), or said they close.

    A send is complete for its caller once its bytes are in a send frame, but on UC nothing
    delivers a lost frame except this side sending it again: the peer would wait for bytes
    that are gone.  A live peer answers whatever it does (its keeper thread), so this waits
    as long as a call would; a peer that is gone (``nap`` sleeps on the side channel, whose
    notice of it raises), or a failed completion, ends the wait at once.
    """
    links = list(links)
    deadline = time.monotonic() + seconds
    pause = FIRST_NAP
    try:
        while any(link.unacked and link.failure is None and not link.peer_bye
                  for link in links):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if progress():
                pause = FIRST_NAP
                continue
            nap(min(pause, left))
            pause = min(pause * 2, MAX_NAP)
    except CommError:
        return


def payload_at(slot: int) -> int:
    """Where receive frame ``slot``'s payload starts in its link's memory."""
    return slot * FRAME_BYTES + HEADER_BYTES


class SlotStream(Reliable):
    """Mixed into a class with ``rank``, ``_api`` (the verbs provider), ``_setup``,
    ``_on_completion(wc)`` and ``address(rank)`` (a peer's, for errors)."""

    _setup: RdmaSetup | None

    def _poll(self) -> bool:
        """Hand every completion waiting on ``_setup``'s queues to ``_on_completion``."""
        got = False
        for ctx in list(self._setup.contexts.values()):  # another thread may open a device
            n, wcs = ctx.cq.poll(POLL_BATCH)
            for wc in wcs:
                self._on_completion(wc)
            got = got or n > 0
        return got

    def _progress(self, quiet: bool = True) -> bool:
        """Poll, then resend and report what each link owes (``Reliable._service``)."""
        got = self._poll()
        now = time.monotonic()
        for link in list(self._setup.by_number):
            got = self._service(link, now, quiet and not got) or got
        return got

    def _book(self, wc) -> Link:
        """A successful completion: a frame in (``_on_frame``) or out (``_on_sent``)."""
        link = self._setup.by_number[wc.wr_id >> 16]
        if (wc.wr_id >> 8) & 0xFF == RECV:
            self._on_frame(link, wc.wr_id & 0xFF, wc.byte_len)
        else:
            self._on_sent(link, wc.wr_id & 0xFF)
        return link

    def _fill(self, link: Link) -> tuple[bool, bool]:
        """Copy what the window and credits allow of ``link.sending`` into data frames and
        post them: (anything posted, the whole send posted; ``link.sending`` is then None)."""
        p, pushed = link.sending, False
        mem = link.mem
        while link.free_slots and len(link.unacked) < WINDOW and self._credit(link, 1):
            slot = link.free_slots.pop()
            at = link.send_base + slot * FRAME_BYTES + HEADER_BYTES
            n, done = 0, False
            while not done and n < PAYLOAD_BYTES:
                k = min(PAYLOAD_BYTES - n, len(p.view) - p.pos)
                mem[at + n:at + n + k] = p.view[p.pos:p.pos + k]
                n += k
                done = p.advance(k)
            seq = link.next_seq
            link.next_seq = (seq + 1) % SEQ_MOD
            link.unacked.append((seq, slot, n))
            self._send_frame(link, slot, DATA, seq, n, payload_crc(mem[at:at + n]))
            self._arm(link)
            pushed = True
            if done:
                link.sending = None
                return True, True
        self._arm(link)  # blocked: if no report comes, a timer asks for one
        return pushed, False

    def _copy_in(self, link: Link) -> tuple[bool, bool]:
        """Hand arrived bytes to ``link.receiving``: (anything moved, the receive complete;
        ``link.receiving`` is then None)."""
        p, moved = link.receiving, False
        while link.arrived:
            slot, length = link.arrived[0]
            at = payload_at(slot) + link.taken
            n = min(length - link.taken, len(p.view) - p.pos)
            p.view[p.pos:p.pos + n] = link.mem[at:at + n]
            self._taken(link, n)
            moved = True
            if p.advance(n):
                link.receiving = None
                return True, True
        return moved, False

    def _taken(self, link: Link, n: int) -> None:
        """``n`` more bytes of the oldest arrived frame handed on; repost it when empty."""
        link.taken += n
        if link.taken == link.arrived[0][1]:
            slot = link.arrived.popleft()[0]
            link.taken = 0
            self._repost(link, slot)
