"""What a group is, in public: ``Group.describe()`` and the group's repr (issue 31, item 3).

Everything here is read from the group's transport, direct links and lanes, so the answer is
what the group runs on now, not what was asked for: the transport ("tcp", "rdma", or "local"
for a group of one rank), the verbs provider under RDMA (the emulation named as such: it
involves no RDMA hardware), the protocol, the connections to each neighbour, the addresses,
the direct links opened so far, the threads the collectives may use, the timeout, the job id,
and whether a token authenticates the group (never the token itself).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .transports import Side
from .transports.devicefile import ring_devices
from .transports.verbs import provider_name


@dataclasses.dataclass(frozen=True)
class GroupInfo:
    """A group as ``Group.describe()`` sees it; ``str()`` gives one line."""

    rank: int
    size: int
    transport: str                 # "tcp", "rdma", or "local" (a group of one rank)
    verbs: str | None              # RDMA: the verbs provider ("pyverbs", "emulated"), else None
    emulated: bool                 # RDMA on the verbs emulation: no RDMA hardware involved
    protocol: str | None           # "ringcomm" or "mlx"; None for a group of one rank
    connections: int               # connections (queue pairs) to each ring neighbour
    address: tuple[str, ...]       # this rank's: TCP, one per connection; RDMA, its side channel
    left: int                      # the ring neighbours' ranks ...
    right: int
    left_address: tuple[str, ...]  # ... and their addresses, as ``address``
    right_address: tuple[str, ...]
    devices: tuple[str, ...]       # RDMA: this rank's devices toward the left, then the right
    direct_links: tuple[int, ...]  # ranks reached by a direct link opened so far (send/recv,
                                   # all_to_all, gather, scatter to non-neighbours)
    threads: int                   # threads (lanes) a collective may run its streams on
    timeout: float                 # seconds, for each call as a whole
    job_id: str | None             # what tells this job's ranks from another's (None: local)
    has_token: bool                # a token authenticates every connection (the ringcomm
                                   # protocol's HMAC handshake); the token is never shown

    def __str__(self) -> str:
        what = self.transport
        if self.verbs is not None:
            what += (" on the emulated verbs provider (no RDMA hardware)" if self.emulated
                     else f" on verbs provider {self.verbs}")
        if self.size == 1:
            return f"rank 0 of 1, {what}, timeout {self.timeout:g} s"
        k = self.connections
        text = (f"rank {self.rank} of {self.size}, {what}, {self.protocol} protocol, "
                f"{k} connection{'' if k == 1 else 's'} per neighbour, "
                f"at {_addresses(self.address)}, left {self.left} at "
                f"{_addresses(self.left_address)}, right {self.right} at "
                f"{_addresses(self.right_address)}")
        if self.devices:
            text += f", devices {', '.join(self.devices)}"
        if self.direct_links:
            text += f", direct links to {', '.join(map(str, self.direct_links))}"
        return (text + f", {self.threads} thread{'' if self.threads == 1 else 's'}, timeout "
                f"{self.timeout:g} s, {'a token' if self.has_token else 'no token'}")


def describe(group: Any) -> GroupInfo:
    """``group``'s ``GroupInfo`` (``Group.describe``)."""
    transport, origin = group._transport, group.origin
    rank, size = transport.rank, transport.size
    left, right = transport.peer(Side.LEFT), transport.peer(Side.RIGHT)
    rdma = hasattr(transport, "direct_links")
    kind = "local" if size == 1 else "rdma" if rdma else "tcp"
    emulated = bool(getattr(transport, "emulated", False))
    verbs = None
    if kind == "rdma":
        verbs = provider_name(transport._api)
    devices: tuple[str, ...] = ()
    if kind == "rdma":
        lefts, rights = ring_devices(transport._devices, rank)
        devices = (*lefts, *rights)
    return GroupInfo(
        rank=rank, size=size, transport=kind, verbs=verbs, emulated=emulated,
        protocol=None if size == 1 else getattr(transport, "protocol", "ringcomm"),
        connections=transport.connections, address=_where(transport, rank),
        left=left, right=right, left_address=_where(transport, left),
        right_address=_where(transport, right), devices=devices,
        direct_links=_direct_peers(group), threads=group._lanes._threads,
        timeout=group.timeout, job_id=origin.job_id if origin is not None else None,
        has_token=has_token(group))


def has_token(group: Any) -> bool:
    """True when a token authenticates the group's connections."""
    origin = group.origin
    if origin is not None:
        return origin.token is not None
    identity = getattr(group._transport, "direct_identity", None)  # TCP
    token = identity[1] if identity is not None else getattr(group._transport, "_token", None)
    return token is not None


def _where(transport: Any, rank: int) -> tuple[str, ...]:
    """``rank``'s addresses: TCP, where it listens for each connection; RDMA, its side
    channel's IP and direct-link port (RDMA has no hostfile); () for a group of one."""
    if transport.size == 1:
        return ()
    hostfile = getattr(transport, "_hostfile", None)
    if hostfile is not None:
        return tuple(str(a) for a in hostfile[rank])
    address = transport.address(rank)
    return (address,) if address is not None else ()


def _direct_peers(group: Any) -> tuple[int, ...]:
    """The ranks this rank has a direct link with (opened or accepted), so far."""
    links = group._direct.links if group._direct is not None else None
    if links is None:
        return ()
    opened = getattr(links, "_qp_out", links._out)  # RDMA: queue pairs, else TCP sockets
    accepted = getattr(links, "_qp_in", links._in)
    return tuple(sorted({*opened, *accepted}))


def _addresses(addresses: tuple[str, ...]) -> str:
    if not addresses:
        return "?"
    return addresses[0] if len(set(addresses)) == 1 else ", ".join(addresses)
