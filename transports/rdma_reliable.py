"""Nothing lost, repeated or damaged over unreliable-connected queue pairs: the sequence,
acknowledgements, credits and retransmission of ringcomm's RDMA frames
(``docs/rdma-protocol.md``, "Reliability"; the frame layout is ``transports.rdma_frames``).

Each link (``rdma_setup.Link``) sends data frames numbered ``seq`` 0, 1, 2, ... and keeps each
in its send slot until the peer acknowledges it (``ack``: every frame before it arrived
intact).  The receiver hands frames on strictly in ``seq`` order: one that arrives ahead of a
gap is held in its receive slot (selective repeat, within the window) and the gap is reported
at once (``NAK``, with ``held``: which later frames are in), so the sender resends the
missing frames alone; a duplicate is dropped and re-acknowledged; a damaged one is dropped.  Where nothing is heard for ``rto`` the sender
resends its oldest unacknowledged frame (or, blocked on credits, a bare report) marked
``POKE``, doubling ``rto`` up to ``RTO_MAX``, until the deadline of the call.

Credits: a message that finds no receive posted is lost on UC, so every frame also reports
``seen`` (the newest message number received) and ``free`` (receives posted and empty after
it): a side posts message number ``m`` only while ``m - seen <= free`` (one receive kept for
a bare report).  Reports ride on data frames; a frame with the report alone goes when
``ACK_EVERY`` frames were taken or arrived unreported, when the link is quiet, or at once for
a gap, a duplicate or a poke.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from .errors import CommError
from .rdma_frames import (BYE, DATA, FRAME_BYTES, HEADER_BYTES, NAK, POKE, REPORT_SLOT,
                          SEQ_MOD, SLOTS, newer, payload_crc, read_header,
                          stored_payload_crc, write_header)
from .rdma_setup import Link

RTO_FIRST = 0.05     # resend the oldest unacknowledged frame after this long without an ack
RTO_MAX = 0.25       # ... doubling each time up to this
RTO_SLOW = 1.0       # the first timeout on the slowest links (4 round trips, at most this)
ACK_EVERY = 2        # frames taken or arrived unreported before a report goes alone


class Reliable:
    """The protocol's per-link bookkeeping, mixed into ``rdma_stream.SlotStream``; needs
    ``rank``, ``_api`` and ``address(rank)``."""

    rank: int
    _api: Any
    address: Callable[[int], str | None]

    # -- receiving ----------------------------------------------------------------------------

    def _on_frame(self, link: Link, slot: int, byte_len: int) -> None:
        """A message landed in receive ``slot``: check it, take its report, and keep it for
        the stream (in order), hold it (after a gap) or drop it (damaged, duplicate, report)."""
        link.free -= 1
        at = slot * FRAME_BYTES
        fields = read_header(link.mem, at) if byte_len == FRAME_BYTES else None
        if fields is not None and fields[0] & DATA and payload_crc(
                link.mem[at + HEADER_BYTES:at + HEADER_BYTES + fields[2]]) != fields[7]:
            fields = None
        if fields is None:
            link.counts["damaged"] += 1
            self._repost(link, slot)
            return
        flags, seq, length, msg, ack, seen, free, _, held = fields
        if newer(msg, link.report_msg):  # (a repeated old message must not undo a report)
            link.report_msg, link.peer_seen, link.peer_free = msg, seen, free
            self._on_ack(link, ack, flags & NAK, held)
        if newer(msg, link.seen):
            link.seen = msg
        if flags & BYE:
            link.peer_bye = True
        if flags & POKE:
            link.urgent |= POKE
        if not flags & DATA:
            self._repost(link, slot)
            return
        ahead = (seq - link.expected) % SEQ_MOD
        if ahead == 0:
            link.arrived.append((slot, length))
            link.expected = (seq + 1) % SEQ_MOD
            while link.expected in link.held:
                link.arrived.append(link.held.pop(link.expected))
                link.expected = (link.expected + 1) % SEQ_MOD
        elif ahead < SLOTS and seq not in link.held:
            link.held[seq] = (slot, length)
            link.counts["out_of_order"] += 1
            if link.naked != link.expected:
                link.urgent |= NAK
        else:  # had it already: its acknowledgement was lost
            link.counts["duplicates"] += 1
            link.urgent |= POKE
            self._repost(link, slot)

    def _repost(self, link: Link, slot: int) -> None:
        self._post(link, "receive", link.qp.post_recv, link.recv_wrs[slot])
        link.free += 1

    # -- sending --------------------------------------------------------------------------------

    def _on_ack(self, link: Link, ack: int, nak: int, held: int) -> None:
        """The peer has every data frame before ``ack``: their slots are free once sent.
        With a gap reported (``nak``), the frames missing below the newest one ``held`` (a
        bit per frame after ``ack``) are sent again: on a link that keeps order, they are
        lost (each at most once per ``rto``, so a repeated report does not repeat them)."""
        if link.unacked and newer(ack, link.unacked[0][0]):
            now = time.monotonic()
            while link.unacked and newer(ack, link.unacked[0][0]):
                slot = link.unacked.popleft()[1]
                if not link.in_flight[slot]:
                    link.free_slots.append(slot)
                if slot not in link.resent_slots:  # a round trip, to time the resends by
                    link.srtt += (now - link.sent_at[slot] - link.srtt) / 8
                link.resent_slots.discard(slot)
            link.acked, link.rto = ack, self._rto_first(link)
            link.resend_at = now + link.rto if link.unacked else None
        if nak and link.unacked and link.unacked[0][0] == ack:
            newest = held.bit_length()  # frames up to ack + newest are accounted for
            now = time.monotonic()
            for entry in list(link.unacked):
                after = (entry[0] - ack) % SEQ_MOD
                if after > newest:
                    break
                if (after == 0 or not held >> (after - 1) & 1) and \
                        now - link.sent_at[entry[1]] >= link.rto / 2:
                    self._resend(link, entry, 0)

    def _on_sent(self, link: Link, slot: int) -> None:
        """A send completed (UC: it left; nothing says it arrived)."""
        link.in_flight[slot] -= 1
        if slot != REPORT_SLOT and not link.in_flight[slot] and \
                slot not in link.free_slots and all(s != slot for _, s, _ in link.unacked):
            link.free_slots.append(slot)  # acknowledged while it was still going out

    def _credit(self, link: Link, reserve: int) -> bool:
        """Whether the next message finds a receive posted at the peer (keeping ``reserve``
        receives for reports)."""
        return (link.msgs_sent - link.peer_seen) % SEQ_MOD < link.peer_free - reserve

    def _send_frame(self, link: Link, slot: int, flags: int, seq: int, length: int,
                    crc: int) -> None:
        """Post send ``slot`` (its payload in place) with a fresh header: this side's report
        rides on every frame."""
        link.msgs_sent = (link.msgs_sent + 1) % SEQ_MOD
        flags |= link.urgent & NAK
        if link.held:  # every report names the gap while there is one
            flags |= NAK
        if flags & NAK:
            link.naked = link.expected
        held = 0
        for frame in link.held:
            held |= 1 << ((frame - link.expected - 1) % SEQ_MOD)
        write_header(link.mem, link.send_base + slot * FRAME_BYTES, flags, seq, length,
                     link.msgs_sent, link.expected, link.seen, link.free, crc, held)
        link.sent_at[slot] = time.monotonic()
        link.reported, link.urgent = (link.expected, link.free), 0
        link.in_flight[slot] += 1
        self._post(link, "send", link.qp.post_send, link.send_wrs[slot])

    def _resend(self, link: Link, entry: tuple[int, int, int], flags: int) -> bool:
        """Send an unacknowledged data frame again from its slot (not while a copy of it is
        still going out)."""
        seq, slot, length = entry
        if link.in_flight[slot]:
            return False
        crc = stored_payload_crc(link.mem, link.send_base + slot * FRAME_BYTES)
        self._send_frame(link, slot, DATA | flags, seq, length, crc)
        link.resent_slots.add(slot)
        link.counts["resent"] += 1
        return True

    def _report(self, link: Link, flags: int = 0) -> bool:
        """A frame with this side's report alone (never while the last one is going out)."""
        if link.in_flight[REPORT_SLOT]:
            return False
        self._send_frame(link, REPORT_SLOT, flags, link.next_seq, 0, 0)
        link.counts["reports"] += 1
        return True

    def _service(self, link: Link, now: float, quiet: bool) -> bool:
        """Timers and owed reports of one link: resend on silence, report what is owed."""
        if link.failure is not None or link.qp is None:
            return False
        did = False
        if link.resend_at is not None and now >= link.resend_at:
            if link.unacked and self._credit(link, 0):
                did = self._resend(link, link.unacked[0], POKE)
            elif link.unacked or link.sending is not None:
                # no credits: the report that would give some may be lost; ask for one
                # (if the peer has no receive free, this is lost too, and asked again later)
                did = self._report(link, POKE)
            link.rto = min(2 * link.rto or RTO_FIRST, max(RTO_MAX, 2 * self._rto_first(link)))
            busy = link.unacked or link.sending is not None
            link.resend_at = now + link.rto if busy else None
        expected, free = link.reported
        unreported = (link.expected - expected) % SEQ_MOD + max(link.free - free, 0)
        if (link.urgent or unreported >= (1 if quiet else ACK_EVERY)) and \
                self._credit(link, 0) and self._report(link):
            did = True
        return did

    def _arm(self, link: Link) -> None:
        """Frames went out, or a send waits for credits: make sure a timer runs (it resends,
        or asks for a report, if nothing is heard)."""
        if link.resend_at is None:
            link.rto = link.rto or self._rto_first(link)
            link.resend_at = time.monotonic() + link.rto

    @staticmethod
    def _rto_first(link: Link) -> float:
        """The first resend timeout: ``RTO_FIRST``, or 4 smoothed round trips where the link
        is slower (a software RDMA device under emulation takes milliseconds a frame)."""
        return min(max(RTO_FIRST, 4 * link.srtt), RTO_SLOW)

    def _say_bye(self, link: Link) -> None:
        """Tell the peer this side closes (it need not wait for acknowledgements)."""
        if link.failure is None and link.qp is not None:
            try:
                self._report(link, BYE)
            except CommError:
                pass

    def _post(self, link: Link, what: str, post, wr) -> None:
        try:
            post(wr)
        except self._api.PyverbsError as err:
            raise CommError(f"posting a {what} on {link.describe()} failed: {err}",
                            rank=self.rank, peer=link.peer,
                            address=self.address(link.peer)) from err
