"""Small blocking-socket helpers shared by the TCP transport and the RDMA side channel."""
from __future__ import annotations

import socket
import struct
import time

from .errors import ConfigError
from .hostfile import Address


def recv_exactly(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """``n`` bytes from ``sock``; ConnectionError if it closes.

    Without ``deadline`` the socket's own timeout applies to each receive.  With one (a
    ``time.monotonic()`` value) every receive waits at most until it, and ``TimeoutError``
    follows it: a peer that dribbles a byte at a time cannot stretch the wait.
    """
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"deadline passed with {len(buf)} of {n} bytes received")
            sock.settimeout(left)
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError("the peer closed the connection")
        buf += data
    return bytes(buf)


def read_reason(sock: socket.socket, deadline: float | None = None) -> str:
    """The ``length:u16`` + UTF-8 reason a refusing peer sends, or "rejected"."""
    try:
        (length,) = struct.unpack("!H", recv_exactly(sock, 2, deadline))
        return recv_exactly(sock, length, deadline).decode(errors="replace")
    except (OSError, struct.error):
        return "rejected"


def resolve(addr: Address, rank: int, *, passive: bool = False, what: str = "host") -> tuple:
    """The first getaddrinfo entry for ``addr``, or a ConfigError naming rank and host."""
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as e:
        raise ConfigError(f"rank {rank}: cannot resolve {what} {addr.host!r} of {addr}: "
                          f"{e.strerror}") from e
    return infos[0]


def set_congestion(sock: socket.socket, name: str) -> None:
    """Use congestion control ``name`` (``RINGCOMM_TCP_CONGESTION``, default reno; ``system``
    keeps the system's choice) on a data connection, where Linux allows it.

    Ring steps are bursts between two hosts on one link.  BBR, the default of many Linux
    systems, paces each burst at its bandwidth estimate, and the estimate falls after the
    first large transfers: on loopback a 128 KiB all_gather then takes 60 us instead of 30, and
    8-32 MiB all_sums take 1.5-1.6x as long as under reno (docs/performance.md).  A system that does not
    allow the choice (an unprivileged process, an algorithm missing from
    ``net.ipv4.tcp_allowed_congestion_control``, macOS) keeps its own.
    """
    option = getattr(socket, "TCP_CONGESTION", None)
    if option is None or not name or name == "system":
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, name.encode())
    except OSError:
        pass
