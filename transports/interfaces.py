"""This host's network interfaces: the IPv4 address of one by name, or of the first that is up.

For ``RINGCOMM_IFNAME`` and for the MPI bootstrap of ``ringcomm.rendezvous``.  Uses the
``SIOCGIFADDR`` ioctl (Linux and macOS), so it needs no ``ip`` or ``ifconfig`` command.
"""
from __future__ import annotations

import socket
import struct
import sys

from .errors import ConfigError

_SIOCGIFADDR = 0xC0206921 if sys.platform == "darwin" else 0x8915


def interface_ip(name: str) -> str:
    """The IPv4 address of interface ``name``; ConfigError naming the interfaces there are."""
    try:
        import fcntl
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR,
                                 struct.pack("256s", name.encode()[:15]))
    except (ImportError, OSError) as e:
        names = ", ".join(n for _, n in socket.if_nameindex())
        raise ConfigError(f"RINGCOMM_IFNAME={name!r}: no such interface with an IPv4 address "
                          f"({getattr(e, 'strerror', None) or e}); interfaces here: {names}") \
            from None
    return socket.inet_ntoa(packed[20:24])


def primary_ip() -> str:
    """The address of the first interface that has a non-loopback IPv4 address, else loopback."""
    for _, name in socket.if_nameindex():
        try:
            ip = interface_ip(name)
        except ConfigError:
            continue
        if not ip.startswith("127."):
            return ip
    return "127.0.0.1"
