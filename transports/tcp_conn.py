"""One TCP connection of a ring, as the TCP transport's modules all see it.

``TcpTransport`` (``tcp``) forms these, its data path (``tcp_data``) and lanes (``tcp_lanes``)
move bytes through them, and its mixins read them (``tcp_control``: notices on the control
connection; ``tcp_idle``: what arrives where nothing is posted).  A module of its own, below
all of them, so that none of them imports another for it.
"""
from __future__ import annotations

import socket

from .base import Channel, Kind, Side
from .hostfile import Address
from .posted import Posted


class Conn:
    """One socket to a neighbour and the (at most one) send and receive posted on it."""

    __slots__ = ("sock", "fd", "side", "index", "peer", "address", "sending", "receiving",
                 "events", "send_done", "recv_done", "head", "expect")

    def __init__(self, sock: socket.socket, side: Side, index: int, peer: int,
                 address: Address) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.side = side
        self.index = index
        self.peer = peer
        self.address = address
        self.sending: Posted | None = None    # the send the kernel has not taken all of
        self.receiving: Posted | None = None  # the receive still waiting for bytes
        self.events = 0
        self.send_done = Channel(side, index, Kind.SEND)  # what wait() reports, made once
        self.recv_done = Channel(side, index, Kind.RECV)
        self.head: bytearray | None = None  # the posted receive's head, and what it held
        self.expect = b""                   # when posted (the caller's own header): see HEAD
