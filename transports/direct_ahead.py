"""Messages read ahead on a direct link (``transports.direct``), so that ranks that all send
first never wait on each other forever.

Two non-neighbours that each send the other a message larger than the kernel's buffers
before receiving would both block in their send: each direction has its own connection, and
nobody reads the one that fills.  So while a rank is blocked in a direct send or recv, or in
a ring call (from ``VET_AFTER`` on, as the ring's own read-ahead, ``transports.arrivals``,
``transports.tcp_idle``), it reads what arrives on its other accepted direct links: each
message's head, then as many bytes as the head announces, held in memory until the receive
that wants them (which takes them first, in order).  With the ring's read-ahead of its
neighbours' messages, every cycle of ranks that all send first completes, whatever links it
takes.  A head that announces no message of this group (``Announced`` says so) stops
the read-ahead on that link: its receive then checks the head and names the mismatch.
"""
from __future__ import annotations

import select
import socket
from typing import Callable

from . import notices
from .errors import CommError
from .arrivals import AHEAD_CHUNK, Stash
from .posted import Posted

HEAD_BYTES = 32  # ringcomm.header's operation header

# (peer, a message head, how many messages from that peer were read ahead before it) ->
# the data bytes it announces, or None when it is not a message this rank can receive next
Announced = Callable[[int, bytes, int], "int | None"]


class Notice(Exception):
    """An abort notice came where a message was due: ``first`` holds its first bytes."""

    def __init__(self, first: bytes) -> None:
        super().__init__("an abort notice")
        self.first = first


class Ahead:
    """What one accepted direct link carried before a receive asked for it."""

    __slots__ = ("stash", "head", "messages", "halted")

    def __init__(self) -> None:
        self.stash = Stash()        # whole heads and the data after them, in order
        self.head = bytearray()     # the next head, while it is incomplete
        self.messages = 0           # heads in the stash (each one message's start)
        self.halted = False         # nothing more to read ahead here in this wait

    def pull(self, sock: socket.socket, peer: int, announced: Announced) -> None:
        """Read what ``sock`` has now, as far as the message it is in; raises ``Notice``
        when the peer sent an abort notice instead of a message."""
        stash = self.stash
        try:
            got = sock.recv(min(stash.want, AHEAD_CHUNK)) if stash.want else \
                sock.recv(HEAD_BYTES - len(self.head))
        except BlockingIOError:
            return
        except OSError:
            got = b""
        if not got:  # it closed: the receive that wants more reports it
            self.halted = True
            return
        if stash.want:
            stash.add(got)
            return
        self.head += got
        if len(self.head) >= len(notices.ABORT_MAGIC) and \
                self.head.startswith(notices.ABORT_MAGIC):
            raise Notice(bytes(self.head))
        if len(self.head) < HEAD_BYTES:
            return
        head, self.head = bytes(self.head), bytearray()
        nbytes = announced(peer, head, self.messages)
        stash.want = HEAD_BYTES + (nbytes or 0)
        stash.add(head)
        self.messages += 1
        if nbytes is None:  # not a message this rank can take next: its receive says why
            self.halted = True

    def take(self, head: bytearray, data: memoryview, check: Callable[[bytes], None]) -> int:
        """Fill a receive from this link with what was read ahead: the head first, checked
        (``check``) before any data byte is taken, then its data.  Returns the bytes filled;
        what the message still lacks comes from the socket, straight into the receive."""
        filled = 0
        if self.stash.left():  # it starts with a whole head: the oldest message read ahead
            self.messages -= 1
            self.stash.serve(Posted(memoryview(head)))
            check(bytes(head))
            rest = Posted(data)
            if self.stash.serve(rest):
                return len(head) + len(data)
            filled = len(head) + rest.pos
        elif self.head:  # part of a head, not yet in the stash
            filled = len(self.head)
            head[:filled] = self.head
        self.head.clear()
        self.stash = Stash()  # all handed on; the rest of this message is the receive's
        self.halted = False
        return filled


class ReadsAhead:
    """The read-ahead of ``DirectLinks`` (a mixin), for its own waits and the ring's."""

    _in: dict[int, socket.socket]        # set by DirectLinks: the accepted links
    _ahead: dict[int, Ahead]
    _announced: Announced | None
    _notice: Callable[[socket.socket, bytes, int], CommError]

    def _watch_ahead(self, poll: select.poll, ahead: dict[int, int],
                     recv: tuple | None) -> None:
        """Read ahead on every accepted link but the one this call receives on."""
        for fd, peer in self.links_to_read(None if recv is None else recv[0]).items():
            if fd not in ahead:
                ahead[fd] = peer
                poll.register(fd, select.POLLIN)

    def _read_ahead(self, poll: select.poll, ahead: dict[int, int], fd: int, op: str) -> None:
        try:
            more = self.read_ahead(ahead[fd])
        except CommError as e:
            e.op = e.op or op
            raise
        if not more:
            poll.unregister(fd)
            del ahead[fd]

    # -- read-ahead, also while the rank waits on the ring (transports.tcp_idle) ---------------

    def links_to_read(self, skip: int | None = None) -> dict[int, int]:
        """fd -> peer of the accepted links to read ahead on now (all but ``skip``'s)."""
        if self._announced is None:
            return {}
        links = {}
        for peer, sock in list(self._in.items()):
            if peer != skip and not self._ahead.setdefault(peer, Ahead()).halted:
                links[sock.fileno()] = peer
        return links

    def read_ahead(self, peer: int) -> bool:
        """Read ahead what ``peer``'s link holds now; False once there is nothing more to
        read ahead there (it closed, or sent what no receive here can take next).  An abort
        notice on it raises the error it reports."""
        state, sock = self._ahead[peer], self._in[peer]
        try:
            state.pull(sock, peer, self._announced)
        except Notice as notice:
            raise self._notice(sock, notice.first, peer) from None
        return not state.halted

