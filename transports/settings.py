"""Every environment setting ringcomm reads, parsed and checked in one place.

``load()`` turns the environment into a frozen ``Settings``; init, the transports, the
launcher and the benchmark take their knobs from it, never from ``os.environ``.  A value that
cannot be used raises ``ConfigError`` naming the variable and what to write instead, before any
socket opens.  ``KNOWN`` lists every variable, and docs/settings.md's knob table lists exactly
these (a test checks); ``LAUNCHER_SECRETS`` are launchers' per-job secrets, read only to derive
a token.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import math
import os
import re
import uuid
from typing import Mapping

from . import log, setting_names
from .errors import ConfigError

DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 10 * 365 * 86400.0  # ten years: longer is a typo, and overflows poll()
MAX_SPIN_US = 1_000_000.0         # a wait spins at most a second before it sleeps
MAX_THREADS = 256                 # threads moving one operation (a plan has 2K streams)
# The most ranks a launcher's size variable may name.  Rank 0's rendezvous holds a socket and a
# table entry per rank and sends every rank the whole table (~30 bytes a rank), and a ring's
# every collective takes 2 (size - 1) steps: past 65536 ranks the table alone is 2 MiB per rank,
# 128 GiB in all, and one all_sum of a few bytes takes seconds.  Nothing larger was designed for.
MAX_WORLD_SIZE = 1 << 16
PROTOCOLS = ("ringcomm", "mlx")
BACKENDS = {"any": "tcp", "tcp": "tcp", "ring": "tcp", "rdma": "rdma", "jaccl": "rdma"}
VERBS_PROVIDERS = ("pyverbs", "emulated", "ctypes", "auto")  # auto: transports.verbs.load

# variable -> what it sets (the order of docs/settings.md's knob table)
KNOWN = {
    "RINGCOMM_TIMEOUT": "deadline of init and of every call, seconds",
    "RINGCOMM_PROTOCOL": "ringcomm or mlx",
    "RINGCOMM_TOKEN": "shared secret proven by every connection",
    "RINGCOMM_JOB_ID": "tells this job's connections from another's",
    "RINGCOMM_BACKEND": "the transport init(backend='any') picks",
    "RINGCOMM_TCP_CONGESTION": "congestion control of TCP data connections",
    "RINGCOMM_TCP_WARMUP": "warm-up exchange at set-up (1) or none (0)",
    "RINGCOMM_SPIN_US": "bounded busy-poll of a TCP wait, microseconds",
    "RINGCOMM_THREADS": "threads that move one large operation (auto: cores / local ranks)",
    "RINGCOMM_VERBS": "verbs provider: auto (pyverbs if it imports, else ctypes if it lists a "
                      "device), pyverbs, "
                      "ctypes or emulated",
    "RINGCOMM_EMULATED_DEVICES": "device names of the verbs emulation",
    "RINGCOMM_EMULATED_LOSS": "faults the verbs emulation injects (tests only)",
    "RINGCOMM_GID_INDEX": "RDMA: the GID table entry to use (default: the IPv4-mapped one)",
    "RINGCOMM_RDMA_QP": "RDMA queue-pair type: uc (default: what Thunderbolt allows) or rc",
    "MLX_RANK": "this process's rank",
    "MLX_HOSTFILE": "the ring hostfile (TCP)",
    "MLX_IBV_DEVICES": "the RDMA device file (alias JACCL_IBV_DEVICES)",
    "MLX_JACCL_COORDINATOR": "rank 0's host:port for RDMA set-up (alias JACCL_COORDINATOR)",
    # other launchers (ringcomm.rendezvous), read when MLX_RANK and MLX_HOSTFILE are absent
    "OMPI_COMM_WORLD_RANK": "rank under Open MPI's mpirun", "OMPI_COMM_WORLD_SIZE": "its size",
    "PMI_RANK": "rank under a PMI-based MPI (MPICH, Intel MPI)", "PMI_SIZE": "its size",
    "RANK": "rank under torchrun", "WORLD_SIZE": "its size",
    "SLURM_PROCID": "rank under Slurm's srun", "SLURM_NTASKS": "its size",
    "MASTER_ADDR": "the rendezvous host (torchrun's name)",
    "MASTER_PORT": "the rendezvous port (torchrun's name)",
    "RINGCOMM_RENDEZVOUS": "the rendezvous host:port when MASTER_ADDR is not set",
    "SLURM_STEP_NODELIST": "Slurm's nodes: the first one is the rendezvous host",
    "SLURM_JOB_ID": "with SLURM_STEP_ID, picks the rendezvous port under Slurm",
    "SLURM_STEP_ID": "see SLURM_JOB_ID",
    "RINGCOMM_IFNAME": "the network interface whose address a rank listens on",
    "RINGCOMM_LOG": "level of the ringcomm logger: debug, info, warning, error or off",
    "TORCHELASTIC_RUN_ID": "set by torchrun, whose own store holds MASTER_PORT",
}
# Per-job random values that a launcher gives every rank it starts and that an outsider on
# another host cannot read (a process's environment is readable only by its user and root):
# without RINGCOMM_TOKEN, the rendezvous' token (and the ring's) derives from the first one
# present that looks random (``_launcher_token``).  Not KNOWN settings: nobody sets them by hand.
#   TORCHELASTIC_RUN_ID: torchrun's --rdzv-id, a fresh uuid4 under --standalone (else "none" or
#     the user's own id: used only when it is a version-4 UUID);
#   OMPI_MCA_orte_precondition_transports: 16 bytes of /dev/urandom mpirun (Open MPI up to 4.x)
#     hands every process for PSM's job key (a direct srun launch derives it from the job id
#     instead: refused, as are keys with a word below 2^16);
#   PMI_SHARED_SECRET: 64 random bits srun's cray_shasta plugin (and Flux's cray-pals) sets
#     for Cray PMI.
# Not used, as guessable or not shared by every rank: SLURM_JOB_ID/SLURM_STEP_ID (sequential),
# OMPI_MCA_ess_base_jobid and PMIX_NAMESPACE (a hash of host and pid, or the Slurm job id),
# OMPI_MCA_orte_hnp_uri and PMIX_SERVER_URI* (a job id and a TCP address anyone can see; the
# PMIx server differs per node), PMI_KVSNAME (MPICH's "kvs_<pid>_0").
LAUNCHER_SECRETS = ("TORCHELASTIC_RUN_ID", "OMPI_MCA_orte_precondition_transports",
                    "PMI_SHARED_SECRET")
TOKEN_DOMAIN = b"ringcomm rendezvous token from the launcher v1"

# (launcher, rank variable, size variable), first match wins: torchrun and MPI run inside
# Slurm allocations, where SLURM_PROCID counts srun's tasks, not their ranks
LAUNCHERS = (("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
             ("a PMI-based MPI", "PMI_RANK", "PMI_SIZE"),
             ("torchrun", "RANK", "WORLD_SIZE"),
             ("Slurm", "SLURM_PROCID", "SLURM_NTASKS"))
ALIASES = {"JACCL_IBV_DEVICES": "MLX_IBV_DEVICES", "JACCL_COORDINATOR": "MLX_JACCL_COORDINATOR"}


MAX_GID_INDEX = 255               # a port's GID table has at most 256 entries (RoCE: 16-128)


@dataclasses.dataclass(frozen=True)
class EmulatedLoss:
    """What the verbs emulation does to each message a queue pair sends (fault injection for
    tests: real devices lose, and Thunderbolt's UC reports nothing): each rate is a
    probability per message, drawn from a generator seeded with ``seed`` and the sender's
    process id."""

    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Settings:
    """The environment's settings; ``None`` where a variable is unset and has no default."""

    timeout: float = DEFAULT_TIMEOUT
    protocol: str = "ringcomm"
    token: str | None = None
    job_id: str | None = None
    backend: str = "any"
    tcp_congestion: str = "reno"     # "system": keep the operating system's choice
    tcp_warmup: bool = True
    spin_seconds: float = 50e-6
    threads: int | None = None       # None: auto (ringcomm.lanes.auto_threads)
    verbs: str = "auto"
    emulated_devices: tuple[str, ...] | None = None
    emulated_loss: EmulatedLoss | None = None  # faults the verbs emulation injects (tests)
    gid_index: int | None = None      # None: the IPv4-mapped entry, as JACCL finds it
    rdma_qp: str = "uc"               # "rc" where UC misbehaves under loss (Soft-RoCE)
    rank: str | None = None
    hostfile: str | None = None
    ibv_devices: str | None = None
    coordinator: str | None = None
    world: tuple[str, int, int] | None = None  # (launcher, rank, size) of another launcher
    master_addr: str | None = None
    master_port: int | None = None
    rendezvous: str | None = None
    slurm_nodelist: str | None = None
    slurm_step: tuple[int, int] | None = None  # (job id, step id)
    ifname: str | None = None
    log_level: int | None = None     # RINGCOMM_LOG; None: as the program set the logger
    under_torchrun: bool = False  # torchrun's agent holds MASTER_PORT: rendezvous one above
    # (token, the variable it derives from) where a launcher hands every rank a per-job secret
    launcher_token: tuple[bytes, str] | None = dataclasses.field(default=None, repr=False)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``env`` (default ``os.environ``), parsed once per distinct environment."""
    env = os.environ if env is None else env
    key = tuple(env.get(name) for name in (*KNOWN, *ALIASES, *LAUNCHER_SECRETS))
    cached = _cache.get(key)
    if cached is None:
        _cache.clear()
        setting_names.warn_unknown(env, KNOWN)  # (a misspelled name: once per process)
        cached = _cache[key] = _parse(env)
    return cached


_cache: dict[tuple, Settings] = {}


def _parse(env: Mapping[str, str]) -> Settings:
    def get(name: str) -> str | None:
        for alias, target in ALIASES.items():  # JACCL's names win, as in MLX
            if target == name and env.get(alias):
                return env[alias]
        return env.get(name)

    devices = get("RINGCOMM_EMULATED_DEVICES")
    return Settings(
        timeout=timeout_seconds(get("RINGCOMM_TIMEOUT"), "RINGCOMM_TIMEOUT"),
        protocol=choice(get("RINGCOMM_PROTOCOL"), "RINGCOMM_PROTOCOL", PROTOCOLS, "ringcomm",
                        "protocol"),
        token=get("RINGCOMM_TOKEN"),
        job_id=get("RINGCOMM_JOB_ID"),
        backend=choice(get("RINGCOMM_BACKEND"), "RINGCOMM_BACKEND", tuple(BACKENDS), "any",
                       "backend"),
        tcp_congestion=_congestion(get("RINGCOMM_TCP_CONGESTION")),
        tcp_warmup=choice(get("RINGCOMM_TCP_WARMUP"), "RINGCOMM_TCP_WARMUP", ("0", "1"),
                          "1", "warm-up setting") == "1",
        spin_seconds=_spin(get("RINGCOMM_SPIN_US")),
        threads=_threads(get("RINGCOMM_THREADS")),
        verbs=choice(get("RINGCOMM_VERBS"), "RINGCOMM_VERBS", VERBS_PROVIDERS, "auto",
                     "verbs provider"),
        emulated_devices=None if not devices else
        tuple(n.strip() for n in devices.split(",") if n.strip()),
        emulated_loss=_emulated_loss(get("RINGCOMM_EMULATED_LOSS")),
        gid_index=_gid_index(get("RINGCOMM_GID_INDEX")),
        rdma_qp=choice(get("RINGCOMM_RDMA_QP"), "RINGCOMM_RDMA_QP", ("uc", "rc"), "uc",
                       "queue-pair type"),
        rank=get("MLX_RANK"), hostfile=get("MLX_HOSTFILE"),
        ibv_devices=get("MLX_IBV_DEVICES"), coordinator=get("MLX_JACCL_COORDINATOR"),
        world=_world(env), master_addr=host_name(get("MASTER_ADDR"), "MASTER_ADDR"),
        master_port=_port(get("MASTER_PORT"), "MASTER_PORT"),
        rendezvous=get("RINGCOMM_RENDEZVOUS") or None,
        slurm_nodelist=get("SLURM_STEP_NODELIST") or None,
        slurm_step=_slurm_step(env), ifname=get("RINGCOMM_IFNAME") or None,
        log_level=log.level_named(get("RINGCOMM_LOG")),
        under_torchrun=bool(get("TORCHELASTIC_RUN_ID")), launcher_token=_launcher_token(env))


def choice(text: str | None, name: str, allowed: tuple[str, ...], default: str,
           what: str = "value") -> str:
    """``text`` when it is one of ``allowed`` (unset or empty: ``default``), else ConfigError."""
    value = default if text is None or not text.strip() else text.strip()
    if value not in allowed:
        raise ConfigError(f"unknown {what} {text!r} (from {name}); choose one of: "
                          f"{', '.join(allowed)}")
    return value


def timeout_seconds(value: object, name: str = "timeout") -> float:
    """A deadline in seconds: a finite positive number, at most ``MAX_TIMEOUT``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds; got {value!r}") from None
    if not (0 < seconds <= MAX_TIMEOUT) or math.isnan(seconds):
        raise ConfigError(f"{name} must be a positive number of seconds up to {MAX_TIMEOUT:.0f} "
                          f"(ten years); got {value!r}")
    return seconds


def _spin(text: str | None) -> float:
    if text is None or not text.strip():
        return 50e-6
    try:
        micros = float(text)
    except ValueError:
        raise ConfigError(f"RINGCOMM_SPIN_US must be a number of microseconds (0 turns the "
                          f"spin off); got {text!r}") from None
    if not 0 <= micros <= MAX_SPIN_US:
        raise ConfigError(f"RINGCOMM_SPIN_US must be between 0 and {MAX_SPIN_US:.0f} "
                          f"microseconds; got {text!r}")
    return micros * 1e-6


def _emulated_loss(text: str | None) -> EmulatedLoss | None:
    """``RATE`` (drops only) or ``drop=R,duplicate=R,corrupt=R,seed=N`` in any order."""
    if text is None or not text.strip():
        return None
    fields: dict[str, float | int] = {}
    usage = ("RINGCOMM_EMULATED_LOSS must be a drop rate (0.02) or comma-separated "
             "drop=R,duplicate=R,corrupt=R,seed=N with rates from 0 to 0.5")
    try:
        for part in text.split(","):
            name, _, value = part.strip().rpartition("=")
            name = name.strip() or "drop"
            if name not in ("drop", "duplicate", "corrupt", "seed") or name in fields:
                raise ValueError(name)
            fields[name] = int(value) if name == "seed" else float(value)
    except ValueError:
        raise ConfigError(f"{usage}; got {text!r}") from None
    if not all(0 <= v <= 0.5 for k, v in fields.items() if k != "seed"):  # NaN fails too
        raise ConfigError(f"{usage}; got {text!r}")
    return EmulatedLoss(**fields)


def _gid_index(text: str | None) -> int | None:
    if text is None or not text.strip():
        return None
    if not _digits(text) or not 0 <= int(text) <= MAX_GID_INDEX:
        raise ConfigError(f"RINGCOMM_GID_INDEX must be a GID table index from 0 to "
                          f"{MAX_GID_INDEX} (`ibv_devinfo -v` lists them); got {text!r}")
    return int(text)


def _threads(text: str | None) -> int | None:
    if text is None or not text.strip() or text.strip() == "auto":
        return None
    if not _digits(text) or not 1 <= int(text) <= MAX_THREADS:
        raise ConfigError(f"RINGCOMM_THREADS must be 'auto' or a whole number from 1 (the "
                          f"calling thread alone) to {MAX_THREADS}; got {text!r}")
    return int(text)


def _congestion(text: str | None) -> str:
    """A congestion-control name Linux offers, or "system"; elsewhere any name is kept."""
    name = "reno" if text is None or not text.strip() else text.strip()
    if name == "system":
        return name
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            available = f.read().split()
    except OSError:  # not Linux, or no /proc: the choice is left to the system anyway
        return name
    if name not in available:
        raise ConfigError(f"RINGCOMM_TCP_CONGESTION={text!r} is not a congestion control this "
                          f"system offers ({', '.join(available)}); or write 'system'")
    return name


def _world(env: Mapping[str, str]) -> tuple[str, int, int] | None:
    """(launcher, rank, size) from the first launcher whose variables are both set."""
    for launcher, rank_name, size_name in LAUNCHERS:
        rank, size = env.get(rank_name), env.get(size_name)
        if rank is None or size is None:
            continue
        if not (_digits(rank, 20) and _digits(size, 20)):
            raise ConfigError(f"{rank_name}={rank!r} and {size_name}={size!r} (set by "
                              f"{launcher}) must be integers")
        r, n = int(rank), int(size)
        if not 0 < n <= MAX_WORLD_SIZE:
            raise ConfigError(f"{size_name}={size.strip()} (set by {launcher}) is not a number "
                              f"of ranks from 1 to {MAX_WORLD_SIZE}, the most ringcomm forms a "
                              "ring of")
        if not 0 <= r < n:
            raise ConfigError(f"{rank_name}={r} is not a rank of {size_name}={n} (set by "
                              f"{launcher})")
        return launcher, r, n
    return None


def _digits(text: str, most: int = 12) -> bool:
    """ASCII decimal digits (``isdigit`` alone takes "²", which ``int`` refuses), not too many."""
    text = text.strip()
    return text.isascii() and text.isdigit() and len(text) <= most


def _port(text: str | None, name: str) -> int | None:
    if text is None or not text.strip():
        return None
    if not _digits(text) or not 0 < int(text) < 65536:
        raise ConfigError(f"{name} must be a port from 1 to 65535; got {text!r}")
    return int(text)


def _slurm_step(env: Mapping[str, str]) -> tuple[int, int] | None:
    job, step = env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID", "0")
    if not job:
        return None
    if not _digits(job, 20):
        raise ConfigError(f"SLURM_JOB_ID must be an integer; got {job!r}")
    return int(job), int(step) if _digits(step, 20) else 0


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]{0,252})")


def host_name(text: str | None, name: str) -> str | None:
    """A host name or IP address (brackets around IPv6 allowed), else ConfigError."""
    if text is None or not text.strip():
        return None
    host = text.strip()
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return bare
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(bare):
        raise ConfigError(f"{name}={text!r} is not a host name or IP address (ASCII letters, "
                          "digits, '.', '-', '_'; at most 253 characters)")
    return bare


def _launcher_token(env: Mapping[str, str]) -> tuple[bytes, str] | None:
    """The token every rank derives alike from its launcher's per-job secret, and the variable
    it came from (``LAUNCHER_SECRETS``); None where no launcher gave one that looks random."""
    for name, looks_random in zip(LAUNCHER_SECRETS, (_is_uuid4, _is_ompi_key, _is_u64_secret)):
        value = env.get(name)
        if value is not None and looks_random(value.strip()):
            digest = hmac.new(TOKEN_DOMAIN, f"{name}={value.strip()}".encode(), hashlib.sha256)
            return digest.hexdigest().encode(), name
    return None


def _is_uuid4(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 4
    except ValueError:
        return False


def _is_ompi_key(text: str) -> bool:
    """mpirun's "%016lx-%016lx" of 16 random bytes: none of its four 32-bit words below 2^16
    (the keys Open MPI derives from a job id or step id, and zero words, all have one)."""
    if not re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{16}", text):
        return False
    words = text[:16] + text[17:]
    return all(int(words[i:i + 8], 16) >= 1 << 16 for i in range(0, 32, 8))


def _is_u64_secret(text: str) -> bool:
    """Cray PMI's secret: a decimal 64-bit random number (at least 2^32: not one set by hand)."""
    return _digits(text, 20) and 1 << 32 <= int(text) < 1 << 64
