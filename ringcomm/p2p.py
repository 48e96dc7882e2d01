"""send/recv between ranks that are not ring neighbours: ``Group``'s side of
``transports.direct`` (ringcomm protocol over TCP) and ``transports.rdma_direct`` (queue pairs
of their own over RDMA); neighbours keep the ring's path.

Each direction between two ranks has its own message counter, so the operation header (seq,
op, dtype, shape, job) of a direct message is checked as the ring's are: a peer in another
operation, or with another dtype or shape, is a ``MismatchError`` naming both calls, found
before any byte of its data is taken.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .transports import CommError, GroupBrokenError, MismatchError, PeerLostError, Side
from .transports.direct import DirectLinks

from . import first_failure
from .header import HEADER, OpHeader, describe, pack_header, vet_next

MIN_SIZE = 4  # below this every rank is a neighbour of every other


class Direct:
    """A group's direct links and their per-peer message counters."""

    def __init__(self, transport: Any, job: int) -> None:
        self._job = job
        self.links: DirectLinks | None = None
        identity = getattr(transport, "direct_identity", None)
        listeners = getattr(transport, "_listeners", None)
        opener = getattr(transport, "direct_links", None)  # RDMA: queue pairs (rdma_direct)
        if opener is not None and transport.size >= MIN_SIZE:
            self.links = opener()
        elif identity is not None and transport.size >= MIN_SIZE and listeners:
            self.links = DirectLinks(transport.rank, transport.size,
                                     [addrs[0] for addrs in transport._hostfile], listeners[0],
                                     job_id=identity[0], token=identity[1], ring=transport,
                                     announced=self._announced)
            transport.read_direct(self.links)  # a ring send or recv reads them ahead too
        self._sent: dict[int, int] = {}
        self._received: dict[int, int] = {}

    def reaches(self, transport: Any, peer: Any) -> bool:
        """True when ``peer`` is another rank of the group but not a ring neighbour, and this
        group can open a direct connection to it."""
        return (self.links is not None and isinstance(peer, (int, np.integer))
                and 0 <= peer < transport.size and peer != transport.rank
                and peer not in (transport.peer(Side.LEFT), transport.peer(Side.RIGHT)))

    def exchange(self, group: Any, name: str, op: str, dtype: np.dtype,
                 shape: tuple[int, ...], send: tuple[int, np.ndarray] | None,
                 recv: tuple[int, np.ndarray] | None) -> None:
        """Send ``send`` = (peer, bytes) and receive ``recv`` = (peer, bytes) at once under the
        group's deadline; a failure breaks the group, as a collective's does."""
        if group._broken is not None:
            raise GroupBrokenError(f"rank {group.rank()}: {name} on a broken group: "
                                   f"{group._broken}") from group._broken
        outgoing = incoming = None
        if send is not None:
            peer, data = send
            self._sent[peer] = seq = self._sent.get(peer, 0) + 1
            outgoing = (peer, pack_header(seq, op, dtype, shape, self._job),
                        memoryview(data.reshape(-1).view(np.uint8)))
        if recv is not None:
            peer, into = recv
            self._received[peer] = seq = self._received.get(peer, 0) + 1
            want = OpHeader(seq, op, dtype, tuple(shape), self._job)
            incoming = (peer, bytearray(HEADER.size),
                        memoryview(into.reshape(-1).view(np.uint8)),
                        self._checker(group.rank(), peer, want, name))
        try:
            self.links.exchange(outgoing, incoming, time.monotonic() + group.timeout, name)
        except CommError as e:
            if isinstance(e, PeerLostError) and e.origin is None and any(
                    e.peer == x[0] for x in (send, recv) if x is not None):
                # the direct peer is gone: often the echo of a failure the ring reports (a
                # ring neighbour's death, heard while waiting, is first-hand already)
                e = first_failure.reported(group._transport) or e
            e.op = e.op or name
            group._fail(e)
            raise e
        except BaseException as e:
            group._fail(e)
            raise

    def _announced(self, peer: int, head: bytes, index: int) -> int | None:
        """The data bytes of a message head read ahead from ``peer`` (``index`` messages
        after the next one this rank receives from it), or None when it cannot be that."""
        seq = self._received.get(peer, 0) + 1 + index
        fits, nbytes = vet_next(head, job=self._job, call=0, message=seq)  # no call #0
        return nbytes if fits else None

    def _checker(self, rank: int, peer: int, want: OpHeader, name: str):
        packed = want.pack()

        def check(got: bytes) -> None:
            if got != packed:
                raise MismatchError(
                    f"operations differ: this rank called {want.describe(name)} from rank "
                    f"{peer} but rank {peer} sent {describe(got, want.job, want.shape)} over "
                    "their direct connection",
                    rank=rank, peer=peer, address=self.links.address(peer))
        return check

    def abort(self, error: BaseException) -> None:
        if self.links is not None:
            self.links.abort(error)

    def close(self) -> None:
        if self.links is not None:
            self.links.close()
