"""``init()``: a group from the same environment and hostfile as MLX's ring backend."""
from __future__ import annotations

import json
import os
import time
import weakref
from typing import Callable, Sequence

from .transports import Address, ConfigError, log, parse_hostfile, read_hostfile, settings
from .transports.base import LoneTransport, Transport
from .transports.devicefile import parse_devices, read_device_file
from .transports.handshake import job_digest
from .transports.tcp import TcpTransport

from . import init_args, interrupted, rendezvous
from .group import Group
from .split import Origin

BACKENDS = settings.BACKENDS
# Connection set-up protocols: "ringcomm" (handshake, optional HMAC, control connections for
# failure notices, a header on every operation) and "mlx" (MLX's bare set-up and raw bytes,
# so that ringcomm and MLX processes can share a ring).
PROTOCOLS = settings.PROTOCOLS

_default_group: Group | None = None
# what each group init() formed was formed with (by group: a test may swap _default_group)
_formed_with: weakref.WeakKeyDictionary[Group, init_args.Formed] = weakref.WeakKeyDictionary()


def init(strict: bool = False, backend: str = "any", *, rank: int | None = None,
         hostfile: str | os.PathLike | Sequence | None = None,
         timeout: float | None = None, protocol: str | None = None,
         token: str | None = None, job_id: str | None = None,
         devices: str | os.PathLike | Sequence | None = None,
         coordinator: str | None = None, verbs: str | None = None) -> Group:
    """Join the ring described by ``MLX_RANK`` and ``MLX_HOSTFILE`` (or the explicit arguments).

    With nothing configured this returns a group of size 1, as MLX does, or raises
    ``ConfigError`` when ``strict``.  ``hostfile`` is a path or the parsed JSON list.
    ``timeout`` (default ``RINGCOMM_TIMEOUT`` or 300 s) bounds set-up and every later call.
    ``protocol`` (default ``RINGCOMM_PROTOCOL`` or "ringcomm") picks the wire protocol;
    "mlx" is MLX's own, so MLX processes can take ranks in the same ring.  ``token``
    (default ``RINGCOMM_TOKEN``) is a shared secret every rank must prove it knows, and
    ``job_id`` (default ``RINGCOMM_JOB_ID``, else the hostfile's contents) tells this job's
    connections from another's; both are for the "ringcomm" protocol.

    ``backend="rdma"`` (alias "jaccl") runs over RDMA verbs instead, configured as MLX's
    JACCL backend is: ``MLX_IBV_DEVICES`` (or ``devices=``, a path or the parsed JSON),
    ``MLX_JACCL_COORDINATOR`` (or ``coordinator=``, rank 0's "ip:port") and ``MLX_RANK``.
    ``verbs`` (default ``RINGCOMM_VERBS`` or "pyverbs") picks the verbs provider;
    "emulated" is an emulation of verbs for machines without RDMA (it proves the protocol,
    not the hardware).
    Under other launchers (Open MPI's mpirun, PMI MPIs, Slurm's srun, torchrun), with no
    MLX_RANK/MLX_HOSTFILE, the rank and size come from their variables and the ranks find each
    other through a rendezvous at ``MASTER_ADDR:MASTER_PORT`` (or ``RINGCOMM_RENDEZVOUS``, or
    Slurm's first node, or MPI itself): see ``ringcomm.rendezvous``.
    ``backend="any"`` takes ``RINGCOMM_BACKEND`` when set (``ringcomm-launch --backend``
    sets it), else TCP.  The group becomes the default for calls made with ``group=None``.

    Called again while the default group is open, ``init()`` returns that group when every
    argument given agrees with it (one left out agrees with anything), and raises
    ``ConfigError`` naming each difference when one does not.  Once the default group is
    closed, or broken by a failure (it is then closed first, releasing its ports), ``init()``
    forms a new one.  A default group of one rank is returned only to a call that resolves
    to the same inputs; any other call forms a new group.  Calls on several threads at once
    (ranks of one process, as tests run them) each form their own group; the last to finish
    becomes the default.  See ``is_initialized()``.
    """
    global _default_group
    interrupted.install()  # under ringcomm-launch: a Ctrl-C is one line, not a traceback
    knobs = settings.load()
    log.apply(knobs.log_level)
    if timeout is not None:
        timeout = settings.timeout_seconds(timeout)

    def inputs() -> tuple:  # (only where compared, and once formed: a list is parsed)
        return (strict, knobs.backend if backend == "any" else backend,
                knobs.rank if rank is None else rank,
                init_args.entries(knobs.hostfile if hostfile is None else hostfile, "hostfile"),
                init_args.entries(knobs.ibv_devices if devices is None else devices, "devices"),
                knobs, timeout, protocol, token, job_id, coordinator, verbs)
    existing = _open_default(inputs, lambda: init_args.given(
        backend, rank, hostfile, devices, timeout=timeout, protocol=protocol, token=token,
        job_id=job_id, coordinator=coordinator, verbs=verbs))
    if existing is not None:
        return existing
    scope = log.setup_timeout.set(timeout if timeout is not None else knobs.timeout)
    try:
        group, values = _form(knobs, strict, backend, rank, hostfile, timeout, protocol,
                              token, job_id, devices, coordinator, verbs)
    finally:
        log.setup_timeout.reset(scope)
    _default_group = group
    _formed_with[group] = init_args.Formed(inputs(), values)
    log.logger.debug("rank %d of %d: init done (%s)", group.rank(), group.size(),
                     ", ".join(f"{k}={init_args.shown(k, v)}" for k, v in values.items()
                               if k != "token"))
    return group


def is_initialized() -> bool:
    """Whether ``init()`` formed the default group and it is open: neither closed nor broken
    by a failure.  While it is, ``init()`` returns it (given agreeing arguments)."""
    return _default_group is not None and _default_group._broken is None


def _open_default(inputs: Callable[[], tuple], asked: Callable[[], dict]) -> Group | None:
    """The open default group, when this call (``inputs()``; ``asked()``, its arguments) agrees
    with it; ConfigError when it does not; None when a new group is to be formed (a closed or
    broken default group is closed)."""
    group = _default_group
    formed = _formed_with.get(group) if group is not None else None
    if group is None or formed is None:
        return None
    if group._broken is not None:
        group.close()  # (broken by a failure: its ports are released for the new group)
        return None
    if group.size() == 1:  # nothing held: reused only for the very same call
        return group if inputs() == formed.inputs else None
    differ = init_args.differences(formed, asked())
    if differ:
        raise ConfigError(f"ringcomm.init(): already initialized, with different arguments: "
                          f"{'; '.join(differ)}; close the default group first "
                          "(ringcomm.default_group().close()) to form another, or form "
                          "subgroups with Group.split")
    return group


def _form(knobs: settings.Settings, strict: bool, backend: str, rank: object, hostfile: object,
          timeout: float | None, protocol: str | None, token: str | None, job_id: str | None,
          devices: object, coordinator: str | None,
          verbs: str | None) -> tuple[Group, dict[str, object]]:
    """A new group, and what it was formed with (``init_args.Formed.values``)."""
    if backend == "any":  # what ringcomm-launch --backend asked for, else TCP
        backend = knobs.backend
    kind = BACKENDS.get(backend)
    if kind is None:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    timeout = knobs.timeout if timeout is None else settings.timeout_seconds(timeout)
    protocol = knobs.protocol if protocol is None else settings.choice(
        protocol, "the protocol argument", PROTOCOLS, "ringcomm", "protocol")
    token = knobs.token if token is None else token
    if token is not None and protocol == "mlx":
        raise ConfigError("RINGCOMM_TOKEN (or token=) needs protocol='ringcomm': MLX's "
                          "protocol has no way to check it")
    rank_text = knobs.rank if rank is None else rank
    if kind == "rdma":
        if protocol == "mlx":
            raise ConfigError("the RDMA transport speaks only ringcomm's protocol (MLX's "
                              "JACCL wire format is not implemented); unset "
                              "RINGCOMM_PROTOCOL=mlx or use backend='tcp'")
        transport, origin = _rdma(knobs, rank_text, devices, coordinator, timeout, verbs, token,
                          job_id, strict)
        group = (Group(transport, timeout) if transport.size == 1 else
                 Group(transport, timeout, headers=True,
                       job=int.from_bytes(job_digest(transport.job_id)[:4], "big")))
        group.origin = origin
        return group, _values(kind, group, timeout, protocol, token, job_id, origin,
                              coordinator, verbs, knobs)
    hostfile = knobs.hostfile if hostfile is None else hostfile
    deadline = time.monotonic() + timeout
    if rank_text is None and hostfile is None and knobs.world is not None \
            and knobs.world[2] > 1:  # mpirun, srun or torchrun: find the others (rendezvous)
        _, rank_text, size = knobs.world
        secret = _rendezvous_secret(token, knobs)
        hostfile, found_job = rendezvous.find_peers(rank_text, size, knobs, deadline, secret)
        job_id = job_id or knobs.job_id or found_job
        if token is None and secret is not None and protocol == "ringcomm":
            token = secret.decode()  # the launcher's secret guards the ring's handshake too
    if rank_text is None and hostfile is None:
        if strict and knobs.world is None:
            raise ConfigError("ringcomm.init(strict=True): no ring is configured; set MLX_RANK "
                              "and MLX_HOSTFILE (ringcomm-launch does), or pass rank= and "
                              "hostfile=")
        group = Group(LoneTransport(), timeout)
    else:
        if rank_text is None or hostfile is None:
            missing = "MLX_RANK (or rank=)" if rank_text is None else "MLX_HOSTFILE (or hostfile=)"
            raise ConfigError(f"ringcomm.init: {missing} is not set, but the other half of the "
                              "ring configuration is; set both")
        addresses = (parse_hostfile(hostfile, source="hostfile argument")
                     if isinstance(hostfile, (list, tuple)) else read_hostfile(hostfile))
        job_id = knobs.job_id if job_id is None else job_id
        if job_id is None:
            job_id = json.dumps([[str(a) for a in r] for r in addresses])
        transport = TcpTransport(_rank(rank_text, len(addresses)), addresses,
                                 timeout=max(deadline - time.monotonic(), 1e-3),
                                 protocol=protocol, job_id=job_id,
                                 token=token.encode() if token is not None else None,
                                 knobs=knobs)
        group = Group(transport, timeout, headers=protocol == "ringcomm",
                      job=int.from_bytes(job_digest(job_id)[:4], "big"))
        group.origin = Origin("tcp", job_id, token.encode() if token is not None else None,
                              protocol, knobs, hostfile=addresses)
    return group, _values(kind, group, timeout, protocol, token, job_id, group.origin,
                          coordinator, verbs, knobs)


def _values(kind: str, group: Group, timeout: float, protocol: str, token: str | None,
            job_id: str | None, origin: Origin | None, coordinator: str | None,
            verbs: str | None, knobs: settings.Settings) -> dict[str, object]:
    """What ``group`` was formed with, named as ``init``'s arguments."""
    values: dict[str, object] = {
        "backend": kind, "rank": group.rank(), "timeout": timeout, "protocol": protocol,
        "token": token, "job_id": origin.job_id if origin is not None else job_id}
    if origin is not None and origin.hostfile:
        values["hostfile"] = init_args.addresses(origin.hostfile)
    if kind == "rdma":
        values["devices"] = init_args.table(origin.devices) if origin is not None else None
        values["coordinator"] = knobs.coordinator if coordinator is None else coordinator
        values["verbs"] = verbs or knobs.verbs
    return values


def _rdma(knobs: settings.Settings, rank_text: object, devices: object,
          coordinator: str | None, timeout: float, verbs: str | None, token: str | None,
          job_id: str | None, strict: bool) -> tuple[Transport, Origin | None]:
    """The RDMA transport from the JACCL-style configuration (or a lone rank without one),
    and what its subgroups are formed from (``ringcomm.split``)."""
    from .transports.rdma import RdmaTransport  # imports nothing of pyverbs until used
    devices = knobs.ibv_devices if devices is None else devices
    coordinator = knobs.coordinator if coordinator is None else coordinator
    if devices is None and rank_text is None and coordinator is None:
        if strict:
            raise ConfigError("ringcomm.init(strict=True, backend='rdma'): no RDMA ring is "
                              "configured; set MLX_IBV_DEVICES, MLX_JACCL_COORDINATOR and "
                              "MLX_RANK (ringcomm-launch --backend rdma does)")
        return LoneTransport(), None
    missing = [name for name, value in (("MLX_IBV_DEVICES (or devices=)", devices),
                                        ("MLX_JACCL_COORDINATOR (or coordinator=)",
                                         coordinator),
                                        ("MLX_RANK (or rank=)", rank_text)) if value is None]
    if missing:
        raise ConfigError(f"ringcomm.init(backend='rdma'): {' and '.join(missing)} not set, "
                          "but the rest of the RDMA configuration is; set all three")
    table = (parse_devices(devices, source="devices argument")
             if isinstance(devices, (list, tuple)) else read_device_file(devices))
    rank = _rank(rank_text, len(table))
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ConfigError(f"MLX_JACCL_COORDINATOR must be rank 0's host:port; got "
                          f"{coordinator!r}")
    job_id = knobs.job_id if job_id is None else job_id
    if job_id is None:
        job_id = json.dumps([table, str(coordinator)])
    transport = RdmaTransport(rank, table, Address(host.strip("[]"), int(port)),
                              timeout=timeout, verbs_provider=verbs, job_id=job_id,
                              token=token.encode() if token is not None else None)
    return transport, Origin("rdma", job_id, token.encode() if token is not None else None,
                             devices=table, verbs=verbs)


def _rendezvous_secret(token: str | None, knobs: settings.Settings) -> bytes | None:
    """The rendezvous' token: ``token`` (RINGCOMM_TOKEN), else one derived from a per-job
    secret the launcher gave every rank (``settings.LAUNCHER_SECRETS``), else None."""
    if token is not None:
        return token.encode()
    return knobs.launcher_token[0] if knobs.launcher_token is not None else None


def default_group() -> Group:
    """The group of the last ``init()``; calls ``init()`` first if there was none (as MLX does)."""
    return _default_group if _default_group is not None else init()


def _rank(value: object, size: int) -> int:
    try:
        rank = value if isinstance(value, int) and not isinstance(value, bool) \
            else int(str(value).strip())  # a bool is not a rank: rank=True is not rank 1
    except ValueError:
        raise ConfigError(f"MLX_RANK must be an integer rank; got {value!r}") from None
    if not 0 <= rank < size:
        raise ConfigError(f"rank {rank} is out of range: the hostfile describes {size} ranks "
                          f"(0 to {size - 1})")
    return rank
