"""TCP sockets as a ring transport: forming the connections, and what a ring holds besides them.

``tcp_setup`` forms a rank's K connections to each neighbour; this module keeps them for the
group's life and hands out lanes (``tcp_lanes``) that other threads drive at once.  The bytes
move through ``tcp_data`` (non-blocking sockets and one ``poll()`` loop).  With ringcomm's
protocol a control connection per neighbour carries abort notices (``tcp_control``), and a
warm-up exchange runs once after set-up (``_warm_up``).
"""
from __future__ import annotations

import select
import socket
import threading
import time
from typing import Sequence

from . import settings
from .base import Channel, Side, Transport
from .errors import CommError
from .hostfile import Address
from .sockets import set_congestion
from .tcp_conn import Conn
from .tcp_data import TcpDataPath
from .tcp_lanes import TcpLane
from .tcp_setup import TcpSetup

WARMUP_BYTES = 4 << 20   # each way per data connection, ringcomm protocol (see _warm_up)


class TcpTransport(TcpDataPath):
    """A rank's K connections to each ring neighbour over TCP.

    ``protocol="mlx"`` is MLX's bare set-up (no byte before the first operation), for rings
    shared with MLX processes.  ``protocol="ringcomm"`` opens every connection with the
    handshake of ``transports.handshake`` (job id, ranks, optional HMAC with ``token``) and
    adds one control connection per neighbour, which carries abort notices: when any rank
    fails, every other rank learns which one and why, instead of waiting for its deadline.
    """

    def __init__(self, rank: int, hostfile: Sequence[Sequence[Address]], *, timeout: float,
                 protocol: str = "mlx", job_id: str = "", token: bytes | None = None,
                 knobs: settings.Settings | None = None,
                 listeners: Sequence[socket.socket] = ()) -> None:
        knobs = settings.load() if knobs is None else knobs
        self.rank = rank
        self.size = len(hostfile)
        self.connections = len(hostfile[0])
        self.protocol = protocol
        self._hostfile = hostfile
        self._warm = protocol == "ringcomm" and knobs.tcp_warmup
        self._poll = select.poll()
        self._polled: dict[int, Conn] = {}  # fd -> connection, for what is registered
        self._spin = knobs.spin_seconds
        self._done: list[Channel] = []
        self._conns: tuple[list[Conn], list[Conn]] = ([], [])
        self._control: dict[Side, Conn] = {}
        self._closed = False
        self._listeners: list[socket.socket] = []  # tcp_setup's, bound until close()
        self._lanes: list[Transport] = []  # TcpLane views for other threads, made on first use
        self._lanes_errors = threading.Lock()  # the lanes' errors read the control connections
        # what transports.direct opens links to non-neighbours with (ringcomm protocol)
        self.direct_identity = (job_id, token) if protocol == "ringcomm" else None
        self._init_idle()
        self._init_control()
        if self.size == 1:
            return
        deadline = time.monotonic() + timeout
        formed = TcpSetup(rank, hostfile, protocol=protocol, job_id=job_id, token=token,
                          warm_up=self._warm, listeners=listeners)
        formed.form(deadline)
        self._listeners = formed.listeners
        for side in (Side.LEFT, Side.RIGHT):
            peer = self.peer(side)
            self._conns[side].extend(Conn(sock, side, i, peer, addr)
                                     for i, (sock, addr) in enumerate(formed.conns[side]))
            if side in formed.control:
                sock, addr = formed.control[side]
                self._control[side] = Conn(sock, side, self.connections, peer, addr)
        for c in self._all_conns():
            c.sock.setblocking(False)
        for conns in self._conns:
            for c in conns:
                set_congestion(c.sock, knobs.tcp_congestion)
        for c in self._control.values():
            self._watch(c, select.POLLIN)
        self._track_for_exit()
        if self._warm:
            try:
                self._warm_up(deadline)
            except BaseException as e:  # tell the neighbours, as a failed collective does
                if isinstance(e, CommError):
                    e.op = e.op or "init"
                self.abort(e)
                raise

    def _warm_up(self, deadline: float) -> None:
        """ringcomm protocol: ``WARMUP_BYTES`` each way over every data connection before the
        first operation.  Reno on a new connection moves 256 KiB-2 MiB steps at half the
        speed it reaches once the connection has carried a few MiB (docs/performance.md);
        this pays that once, at set-up (~10 ms on 2 local ranks), instead of in the first
        operations."""
        out, into = memoryview(bytes(WARMUP_BYTES)), memoryview(bytearray(WARMUP_BYTES))
        for side in (Side.LEFT, Side.RIGHT):
            for i in range(self.connections):
                self.post_send(side, i, out)
                self.post_recv(side, i, into)
        pending = 4 * self.connections
        while pending:
            pending -= len(self.wait(deadline))

    def _all_conns(self):
        yield from self._conns[Side.LEFT]
        yield from self._conns[Side.RIGHT]
        yield from self._control.values()

    def lanes(self, count: int) -> list[Transport] | None:
        """``count`` views of the data connections that other threads drive at once
        (``tcp_lanes``); None while bytes read ahead wait here, which a lane would not see."""
        if self._stash or self._closed:
            return None
        if len(self._lanes) < count:
            self._lanes += [TcpLane(self, self._lanes_errors)
                            for _ in range(count - len(self._lanes))]
        return self._lanes[:count]

    def close(self) -> None:
        if self._closed:
            return
        self._say_goodbye()
        self._closed = True
        for c in self._all_conns():
            c.sock.close()
        for listener in self._listeners:
            listener.close()
        for lane in self._lanes:
            lane.close()
        self._polled.clear()

