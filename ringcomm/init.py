"""``init()``: a group from the same environment and hostfile as MLX's ring backend."""
from __future__ import annotations

import json
import os
from typing import Sequence

from transports import ConfigError, parse_hostfile, read_hostfile
from transports.base import LoneTransport
from transports.handshake import job_digest
from transports.tcp import TcpTransport

from .group import Group

DEFAULT_TIMEOUT = 300.0
BACKENDS = {"any": "tcp", "tcp": "tcp", "ring": "tcp", "rdma": "rdma", "jaccl": "rdma"}
# Connection set-up protocols: "ringcomm" (handshake, optional HMAC, control connections for
# failure notices, a header on every operation) and "mlx" (MLX's bare set-up and raw bytes,
# so that ringcomm and MLX processes can share a ring).
PROTOCOLS = ("ringcomm", "mlx")

_default_group: Group | None = None


def init(strict: bool = False, backend: str = "any", *, rank: int | None = None,
         hostfile: str | os.PathLike | Sequence | None = None,
         timeout: float | None = None, protocol: str | None = None,
         token: str | None = None, job_id: str | None = None) -> Group:
    """Join the ring described by ``MLX_RANK`` and ``MLX_HOSTFILE`` (or the explicit arguments).

    With nothing configured this returns a group of size 1, as MLX does, or raises
    ``ConfigError`` when ``strict``.  ``hostfile`` is a path or the parsed JSON list.
    ``timeout`` (default ``RINGCOMM_TIMEOUT`` or 300 s) bounds set-up and every later call.
    ``protocol`` (default ``RINGCOMM_PROTOCOL`` or "ringcomm") picks the wire protocol;
    "mlx" is MLX's own, so MLX processes can take ranks in the same ring.  ``token``
    (default ``RINGCOMM_TOKEN``) is a shared secret every rank must prove it knows, and
    ``job_id`` (default ``RINGCOMM_JOB_ID``, else the hostfile's contents) tells this job's
    connections from another's; both are for the "ringcomm" protocol.
    The group becomes the default for calls made with ``group=None``.
    """
    global _default_group
    kind = BACKENDS.get(backend)
    if kind is None:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "rdma":
        raise ConfigError("the RDMA transport is not part of this ringcomm build yet; "
                          "use backend='tcp' (or 'ring')")
    timeout = _timeout(timeout)
    protocol = _protocol(protocol)
    token = os.environ.get("RINGCOMM_TOKEN") if token is None else token
    if token is not None and protocol == "mlx":
        raise ConfigError("RINGCOMM_TOKEN (or token=) needs protocol='ringcomm': MLX's "
                          "protocol has no way to check it")
    rank_text = os.environ.get("MLX_RANK") if rank is None else rank
    hostfile = os.environ.get("MLX_HOSTFILE") if hostfile is None else hostfile
    if rank_text is None and hostfile is None:
        if strict:
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
        job_id = os.environ.get("RINGCOMM_JOB_ID") if job_id is None else job_id
        if job_id is None:
            job_id = json.dumps([[str(a) for a in r] for r in addresses])
        transport = TcpTransport(_rank(rank_text, len(addresses)), addresses, timeout=timeout,
                                 protocol=protocol, job_id=job_id,
                                 token=token.encode() if token is not None else None)
        group = Group(transport, timeout, headers=protocol == "ringcomm",
                      job=int.from_bytes(job_digest(job_id)[:4], "big"))
    _default_group = group
    return group


def default_group() -> Group:
    """The group of the last ``init()``; calls ``init()`` first if there was none (as MLX does)."""
    return _default_group if _default_group is not None else init()


def _rank(value: object, size: int) -> int:
    try:
        rank = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"MLX_RANK must be an integer rank; got {value!r}") from None
    if not 0 <= rank < size:
        raise ConfigError(f"rank {rank} is out of range: the hostfile describes {size} ranks "
                          f"(0 to {size - 1})")
    return rank


def _protocol(value: str | None) -> str:
    value = os.environ.get("RINGCOMM_PROTOCOL", "ringcomm") if value is None else value
    if value not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {value!r} (from the protocol argument or "
                          f"RINGCOMM_PROTOCOL); choose one of: {', '.join(PROTOCOLS)}")
    return value


def _timeout(value: float | None) -> float:
    if value is None:
        text = os.environ.get("RINGCOMM_TIMEOUT")
        if text is None:
            return DEFAULT_TIMEOUT
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"RINGCOMM_TIMEOUT must be a number of seconds; got {text!r}") \
                from None
    if not value > 0:
        raise ConfigError(f"timeout must be a positive number of seconds; got {value!r}")
    return float(value)
