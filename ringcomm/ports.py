"""Ports for ranks to listen on, chosen before they listen."""
from __future__ import annotations

import random
import socket


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now, below the kernel's ephemeral range where it
    says where that starts (Linux): a port that bind(0) hands out can be taken as some other
    connection's source port before its rank listens on it (then that rank cannot listen,
    and the others wait out their deadline: one failure in a full test run)."""
    socks: list[socket.socket] = []
    try:
        low = _ephemeral_start()
        for _ in range(100 * count if low else 0):
            if len(socks) == count:
                break
            s = socket.socket()
            try:
                s.bind((host, random.randrange(max(1024, low - 10000), low)))
            except OSError:
                s.close()
                continue
            socks.append(s)
        while len(socks) < count:  # no range known, or none free below it
            socks.append(socket.socket())
            socks[-1].bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
