"""Byte movers between ring neighbours: the interface and its implementations."""
from .base import Channel, Kind, Side, Transport
from .errors import (CommError, CommTimeoutError, ConfigError, GroupBrokenError,
                     MismatchError, PeerLostError, RingcommError)
from .hostfile import Address, parse_hostfile, read_hostfile, write_hostfile

__all__ = ["Address", "Channel", "CommError", "CommTimeoutError", "ConfigError",
           "GroupBrokenError", "Kind", "MismatchError", "PeerLostError", "RingcommError", "Side", "Transport",
           "parse_hostfile", "read_hostfile", "write_hostfile"]
