"""Errors shared by every layer: a failure names the rank, the peer and the operation."""
from __future__ import annotations


class RingcommError(RuntimeError):
    """Base class of every error ringcomm raises on purpose."""


class ConfigError(RingcommError, ValueError):
    """The environment, hostfile or arguments cannot describe a ring; the message says what to fix."""


class GroupBrokenError(RingcommError):
    """A previous failure left the group unusable; create a new group with init()."""


class CommError(RingcommError):
    """A failure while talking to a peer, with who and what it was doing.

    ``op`` starts empty in the transport and is filled in by the collective that was running,
    so that the message reads e.g. "rank 2: all_sum: connection to rank 3 (127.0.0.1:5003) lost".
    """

    def __init__(self, what: str, *, rank: int, peer: int | None = None,
                 address: str | None = None, op: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.rank = rank
        self.peer = peer
        self.address = address
        self.op = op
        # For a failure relayed around the ring (``transports.notices``): the rank that saw
        # it, the rank it blamed, and its own words, which every relay forwards unchanged.
        self.origin: int | None = None
        self.failed: int | None = None
        self.reported: str | None = None

    def __str__(self) -> str:
        where = f"rank {self.rank}"
        if self.op:
            where += f": {self.op}"
        if self.peer is not None:
            peer = f"rank {self.peer}" + (f" ({self.address})" if self.address else "")
            return f"{where}: {self.what} [peer {peer}]"
        return f"{where}: {self.what}"


class PeerLostError(CommError):
    """A peer closed or broke its connection (it crashed, was killed, or failed itself)."""


class CommTimeoutError(CommError, TimeoutError):
    """An operation did not finish before its deadline: a peer is frozen, slow, or missing."""


class MismatchError(CommError, ValueError):
    """Ranks called different collectives, or the same one with other dtypes or sizes."""
