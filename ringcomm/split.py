"""``Group.split(color, key)``: subgroups with rings of their own, formed through the parent.

Every rank of the parent binds its subgroup's listening sockets first (port 0, on the same
IPs as its parent's addresses), then an all_gather over the parent hands every rank a
fixed-size record of every other: color, key, and where it listens.  The ranks of one color
then form a ring of their own, ordered by (key, parent rank), with the parent's timeout,
protocol, token and knobs, and a job id made of the parent's, a split counter and the color
(so two subgroups, or two splits, never accept each other's connections).  Since the sockets
were bound before their ports were published, no other process can take them in between.

The exchange and a closing step (a byte per rank: "formed") run over the parent as
operations of their own (header op ``split``): a rank in any other call gets a
``MismatchError`` naming both.  The subgroup's set-up runs on a thread while the caller
listens to the parent (``split_form``), and nobody leaves before the closing step, so a parent
rank that dies meanwhile is named on every rank at once, and one that freezes by the parent's
liveness probes at the deadline.  The whole call (exchange, set-up, closing step) has one
deadline, the parent's timeout; a failure breaks the parent, as a failed collective does.

RDMA: the subgroup's device table is the parent's rows and columns of its members; every
rank binds a coordinator listener on its side channel's IP, and the subgroup's rank 0 keeps
its own (the others close theirs once the table is in).

A subgroup is a ``Group`` like any other: closing or breaking it leaves the parent as it was,
and a failure inside it is reported on its own connections only.  This module sees groups
through ``SplitGroup`` (what it needs of one) and makes them with the ``make_group`` that
``Group.split`` passes down (its own class), so it never imports ``ringcomm.group``.
"""
from __future__ import annotations

import dataclasses
import socket
import struct
import time
from typing import Any, Protocol, Sequence, TypeVar

import numpy as np

from .transports import Address, ConfigError, Transport, settings

from . import plans, split_form
from .dtypes import Combine
from .transports.base import LoneTransport
from .transports.errors import CommError, CommTimeoutError, GroupBrokenError
from .transports.handshake import job_digest
from .transports.sockets import resolve
from .transports.tcp import TcpTransport
from .ranks import integer_argument
from .work import Progress

HOST_BYTES = 64  # an IPv6 address in text, with room to spare


@dataclasses.dataclass
class Origin:
    """How a group was formed, so that its subgroups can be formed the same way."""

    kind: str                                   # "tcp" or "rdma"
    job_id: str
    token: bytes | None
    protocol: str = "ringcomm"
    knobs: settings.Settings | None = None
    hostfile: Sequence[Sequence[Address]] = ()  # TCP: every rank's addresses
    devices: Sequence[Sequence[Sequence[str]]] = ()  # RDMA: the device table
    verbs: str | None = None                    # RDMA: the verbs provider
    splits: int = 0                             # splits of this group so far (job ids)

    def child(self, job_id: str, **changes: Any) -> Origin:
        return dataclasses.replace(self, job_id=job_id, splits=0, **changes)


class SplitGroup(Protocol):
    """What split needs of a group, the parent and those it makes (``ringcomm.group.Group``
    is one): how it was formed, its ring and state, running a plan over it, breaking it."""

    origin: Origin | None
    timeout: float
    _transport: Transport
    _broken: BaseException | None
    _progress: Progress | None

    def rank(self) -> int: ...

    def size(self) -> int: ...

    def close(self) -> None: ...

    def _connections(self) -> int: ...

    def _fail(self, error: BaseException) -> None: ...

    def _run(self, name: str, plan: plans.Plan, work: np.ndarray, combine: Combine | None,
             dtype: np.dtype, shape: tuple[int, ...], *,
             deadline: float | None = None) -> None: ...


GroupT = TypeVar("GroupT", bound=SplitGroup)  # the parent's class, and its subgroups'
MadeT = TypeVar("MadeT", bound=SplitGroup, covariant=True)


class MakeGroup(Protocol[MadeT]):
    """How split makes a group from a transport: ``Group.split`` passes its own class."""

    def __call__(self, transport: Transport, timeout: float, *, headers: bool = False,
                 job: int = 0) -> MadeT: ...


def split(parent: GroupT, color: int, key: int = -1, *,
          make_group: MakeGroup[GroupT]) -> GroupT | None:
    """The subgroup of the ranks that pass ``color`` (``None`` for a negative color), ranked
    by ``key`` (negative: the parent rank), ties broken by parent rank.  A collective: every
    rank of ``parent`` must call it, those with a negative color included.  ``make_group``
    makes the subgroup from its transport (``Group.split`` passes ``type(self)``)."""
    color, key = _integer(color, "color", parent), _integer(key, "key", parent)
    if key < 0:
        key = parent.rank()
    origin: Origin | None = parent.origin
    if parent.size() == 1:  # nobody to ask: this rank alone, or in no group
        return None if color < 0 else _lone(parent, make_group, origin, color)
    if origin is None:
        raise ConfigError(f"rank {parent.rank()}: Group.split: this group was not made by "
                          "ringcomm.init() (or split), so ringcomm does not know how to "
                          "form rings between its ranks")
    if origin.protocol == "mlx":
        raise ConfigError(f"rank {parent.rank()}: Group.split needs protocol='ringcomm': "
                          "under protocol='mlx' the ring may hold MLX processes, whose ring "
                          "backend cannot split (it raises), so they could not follow")
    if parent._broken is not None:
        raise GroupBrokenError(f"rank {parent.rank()}: split on a broken group: "
                               f"{parent._broken}") from parent._broken
    deadline = time.monotonic() + parent.timeout  # the whole call's, every step under it
    mine = _bind(parent, origin)  # listening before the exchange: nobody can take the ports
    kept: list[socket.socket] = []  # those the new transport owns (and closes with the group)
    sub: GroupT | None = None
    try:
        table = _exchange(parent, origin, color, key, mine, deadline)
        origin.splits += 1
        try:
            sub, timed_out = _subgroup(parent, make_group, origin, color, table, mine, kept,
                                       deadline), None
        except split_form.SetupTimedOut as e:
            timed_out = e.error
        # every rank listens to the parent until all have formed theirs (or failed), so that
        # a rank that dies meanwhile is heard of at once, and one that froze is found by the
        # parent's liveness probes at the deadline (split_form)
        formed = _gather(parent, np.array([timed_out is None], np.uint8), deadline)
        if timed_out is not None:
            raise timed_out
        if not formed.all():
            late = [r for r, ok in enumerate(formed[:, 0]) if not ok]
            raise CommTimeoutError(f"the subgroup set-up of parent rank(s) "
                                   f"{', '.join(map(str, late))} reached the deadline",
                                   rank=parent.rank(), peer=late[0], op="split")
        return sub
    except BaseException:
        if sub is not None:
            sub.close()
        raise
    finally:
        for sock in mine:
            if not any(sock is k for k in kept):
                sock.close()


def _subgroup(parent: GroupT, make_group: MakeGroup[GroupT], origin: Origin, color: int,
              table: list[tuple], mine: list[socket.socket], kept: list[socket.socket],
              deadline: float) -> GroupT | None:
    """This rank's subgroup (None for a negative color), formed from the exchanged ``table``
    under the call's ``deadline`` while listening to the parent (``split_form``)."""
    if color < 0:
        return None
    members = sorted((i for i, row in enumerate(table) if row[0] == color),
                     key=lambda i: (table[i][1], i))
    job_id = f"{origin.job_id}/split{origin.splits}:color{color}"
    if len(members) == 1:
        return _lone(parent, make_group, origin, color, job_id)
    build = _tcp if origin.kind == "tcp" else _rdma
    remaining = max(deadline - time.monotonic(), 1e-3)
    addresses = [str(Address(origin.hostfile[m][0].host, table[m][4])) if origin.kind == "tcp"
                 else str(Address(table[m][2].rstrip(b"\0").decode(), table[m][3]))
                 for m in members]
    return split_form.form(
        parent, lambda: build(parent, make_group, origin, members, table, mine, kept, job_id,
                              remaining),
        deadline, lambda e: split_form.in_parent_terms(e, parent.rank(), members, color,
                                                       addresses))


def _integer(value: object, name: str, parent: SplitGroup) -> int:
    return integer_argument(value, name, f"rank {parent.rank()}: Group.split")


def _lone(parent: GroupT, make_group: MakeGroup[GroupT], origin: Origin | None, color: int,
          job_id: str | None = None) -> GroupT:
    group = make_group(LoneTransport(), parent.timeout)
    if origin is not None:
        group.origin = origin.child(job_id or f"{origin.job_id}/lone:color{color}",
                                    hostfile=(), devices=())
    return group


# -- the exchange over the parent -------------------------------------------------------------

def _record(connections: int) -> struct.Struct:
    """color, key, host (RDMA's coordinator), coordinator port, one port per connection."""
    return struct.Struct(f"!qq{HOST_BYTES}sH{connections}H")


def _bind(parent: SplitGroup, origin: Origin) -> list[socket.socket]:
    """This rank's listening sockets for the subgroup, on port 0 of its parent IPs: K for
    TCP (one per hostfile address), one coordinator listener for RDMA."""
    rank = parent.rank()
    if origin.kind == "tcp":
        hosts = [addr.host for addr in origin.hostfile[rank]]
    else:
        hosts = [parent._transport.local_host()]
    socks: list[socket.socket] = []
    try:
        for host in hosts:
            family, _, _, _, sockaddr = resolve(Address(host, 0), rank, passive=True)
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(sockaddr)
            sock.listen(16)
    except OSError as e:
        for sock in socks:
            sock.close()
        raise CommError(f"Group.split: cannot listen on {hosts[len(socks) - 1]}: "
                        f"{e.strerror or e}", rank=rank, op="split") from e
    return socks


def _exchange(parent: SplitGroup, origin: Origin, color: int, key: int,
              mine: list[socket.socket], deadline: float) -> list[tuple]:
    """Every rank's (color, key, host, coordinator port, ports), in parent rank order."""
    k = parent._connections()
    record = _record(k)
    ports = [s.getsockname()[1] for s in mine]
    if origin.kind == "tcp":
        host, coordinator, data_ports = b"", 0, ports
    else:
        host, coordinator, data_ports = mine[0].getsockname()[0].encode(), ports[0], [0] * k
    raw = np.frombuffer(record.pack(color, key, host, coordinator, *data_ports), np.uint8)
    return [record.unpack(row.tobytes()) for row in _gather(parent, raw, deadline)]


def _gather(parent: SplitGroup, raw: np.ndarray, deadline: float) -> np.ndarray:
    """Every rank's ``raw`` record, one row per parent rank, by ``deadline``: an all_gather
    whose operation header says ``split``, so that a rank in any other call (an all_gather of
    the same shape included) gets a ``MismatchError`` naming both calls, never the other's
    bytes."""
    progress = parent._progress
    if progress is not None and not progress.idle():
        progress.drain()  # behind the async work issued before, as a blocking call waits
    n, r, size = parent.size(), parent.rank(), raw.size
    rows = np.empty((n, size), np.uint8)
    rows[r] = raw
    parent._run("split", plans.all_gather(size, n, r, parent._connections()),
                rows.reshape(-1), None, raw.dtype, (1, size), deadline=deadline)
    return rows


# -- the subgroup's transport ----------------------------------------------------------------

def _tcp(parent: GroupT, make_group: MakeGroup[GroupT], origin: Origin, members: list[int],
         table: list[tuple], mine: list[socket.socket], kept: list[socket.socket],
         job_id: str, timeout: float) -> GroupT:
    k = parent._connections()
    hostfile = [[Address(origin.hostfile[m][i].host, table[m][4 + i]) for i in range(k)]
                for m in members]
    transport = TcpTransport(members.index(parent.rank()), hostfile, timeout=timeout,
                             protocol=origin.protocol, job_id=job_id, token=origin.token,
                             knobs=origin.knobs, listeners=mine)
    kept.extend(mine)  # closed with the group (a failed set-up has closed them already)
    group = make_group(transport, parent.timeout, headers=True, job=_job(job_id))
    group.origin = origin.child(job_id, hostfile=hostfile)
    return group


def _rdma(parent: GroupT, make_group: MakeGroup[GroupT], origin: Origin, members: list[int],
          table: list[tuple], mine: list[socket.socket], kept: list[socket.socket],
          job_id: str, timeout: float) -> GroupT:
    # imported here, as ringcomm.init does, so that a program on TCP never loads the RDMA
    # transport (about 35 ms of every rank's start-up); no circle: transports import nothing
    # of ringcomm
    from .transports.rdma import RdmaTransport
    devices = [[origin.devices[a][b] for b in members] for a in members]
    first = members[0]
    host = table[first][2].rstrip(b"\0").decode()
    coordinator = Address(host, table[first][3])
    rank = members.index(parent.rank())
    listener = mine[0] if rank == 0 else None  # the others close theirs (split's finally)
    transport = RdmaTransport(rank, devices, coordinator, timeout=timeout,
                              verbs_provider=origin.verbs, job_id=job_id, token=origin.token,
                              coordinator_listener=listener)
    group = make_group(transport, parent.timeout, headers=True, job=_job(job_id))
    group.origin = origin.child(job_id, devices=devices)
    return group


def _job(job_id: str) -> int:
    """The header's job field, as ``init`` derives it."""
    return int.from_bytes(job_digest(job_id)[:4], "big")
