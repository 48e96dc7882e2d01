"""The ring's addresses under other launchers: Open MPI's mpirun, PMI MPIs, Slurm's srun, torchrun.

Those launchers give each process a rank and a world size (``settings.LAUNCHERS``) but no
hostfile.  Each rank picks a free port; rank 0 gathers every rank's port at one well-known
address and answers with the ring hostfile and a fresh job id; the ring then forms as usual
(handshake, token, job id).  The well-known address is ``RINGCOMM_RENDEZVOUS=host:port``, else
``MASTER_ADDR:MASTER_PORT`` (torchrun's names; under torchrun itself, whose agent's store
already listens on ``MASTER_PORT``, the port above it), else under Slurm the first node of
``SLURM_STEP_NODELIST`` with a port derived from the job and step ids (``slurm_port``).  Under an
MPI launcher with none of these, the addresses go through MPI itself when mpi4py imports.
Rank 0 listens only on that address (``rendezvous_serve``).

A rank listens on the address its rendezvous connection came from, as rank 0 sees it: that
address routes to rank 0's network, and is a loopback address only when every rank is on rank
0's machine.  ``RINGCOMM_IFNAME`` names the interface to use instead.

Wire (``rendezvous_frames``): rank 0 sends ``{"nonce"}``; a rank answers ``{"rank", "size",
"port", "host"?, "nonce", "mac"}``; rank 0 answers ``{"hostfile", "job_id", "mac"}`` or
``{"error", "missing"?, "claimed"?}``.  With a token (``RINGCOMM_TOKEN``, else one derived from
a launcher's per-job secret: ``settings.LAUNCHER_SECRETS``) each "mac" is HMAC-SHA256 of the
other side's nonce and the frame, so neither side trusts a table or a rank from someone without
it.  Without one, anyone who reaches the port can join: rank 0 says so in one warning line, and
refuses the rendezvous loudly when two processes claim one rank (it cannot know which is real).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from .transports import (Address, CommError, CommTimeoutError, ConfigError, RingcommError,
                         settings)
from .transports.interfaces import interface_ip, primary_ip
from .transports.log import waiting
from . import rendezvous_frames as frames
from .nodelist import expand_nodelist, first_node, node_count
from .ports import free_ports
from .rendezvous_serve import Gathering

__all__ = ["find_peers", "rendezvous_address", "slurm_port", "expand_nodelist"]

VERDICT_GRACE = 1.0            # a joined rank waits this past its deadline for rank 0's answer
FIRST_RETRY_WAIT, MAX_RETRY_WAIT = 0.02, 1.0
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 15000  # below Linux's ephemeral ports


def find_peers(rank: int, size: int, knobs: settings.Settings, deadline: float,
               token: bytes | None) -> tuple[list[list[Address]], str]:
    """The ring hostfile (one connection per neighbour) and the job id rank 0 chose.
    Every setting is checked before a socket opens."""
    where = rendezvous_address(knobs, size)
    host = interface_ip(knobs.ifname) if knobs.ifname else None
    if where is None and not (knobs.world is not None and "MPI" in knobs.world[0]):
        raise ConfigError(
            f"rank {rank} of {size} (from {knobs.world[0] if knobs.world else 'the launcher'}"
            "): no hostfile and no rendezvous address; set MASTER_ADDR and MASTER_PORT, or "
            "RINGCOMM_RENDEZVOUS=host:port (rank 0's host and a free port), or MLX_RANK and "
            "MLX_HOSTFILE")
    port = free_ports(1, "")[0]  # (on every interface, as the ring listens)
    if where is None:
        return _through_mpi(rank, size, host or primary_ip(), port, deadline)
    if rank == 0:
        return Gathering(where, size, deadline, token).serve(host, port, knobs.job_id)
    with waiting(rank, f"rank 0 and every other rank at the rendezvous {where}", deadline):
        return _join(where, rank, size, host, port, deadline, token)


def rendezvous_address(knobs: settings.Settings, size: int = 1) -> Address | None:
    """Where rank 0 gathers the ranks: RINGCOMM_RENDEZVOUS, MASTER_ADDR:MASTER_PORT (plus one
    under torchrun, whose agent holds MASTER_PORT), or Slurm's first node."""
    if knobs.rendezvous:
        host, sep, port = knobs.rendezvous.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5) \
                or not 0 < int(port) < 65536:
            raise ConfigError(f"RINGCOMM_RENDEZVOUS must be host:port; got {knobs.rendezvous!r}")
        return Address(settings.host_name(host, "RINGCOMM_RENDEZVOUS's host"), int(port))
    if knobs.master_addr:
        if knobs.master_port is None:
            raise ConfigError("MASTER_ADDR is set but MASTER_PORT is not; set both (rank 0's "
                              "host and a free port)")
        if knobs.under_torchrun and knobs.master_port == 65535:
            raise ConfigError("MASTER_PORT=65535: under torchrun, whose agent holds "
                              "MASTER_PORT, the rendezvous takes the port above it, and 65536 "
                              "is not a port; choose a MASTER_PORT below 65535")
        return Address(knobs.master_addr,
                       knobs.master_port + 1 if knobs.under_torchrun else knobs.master_port)
    if knobs.slurm_nodelist and knobs.world is not None and knobs.world[0] == "Slurm":
        count = node_count(knobs.slurm_nodelist)  # (from the syntax: nothing is expanded)
        if count > size:
            raise ConfigError(f"SLURM_STEP_NODELIST names {count} nodes, more than the "
                              f"{size} tasks of SLURM_NTASKS: not this job step's node list")
        return Address(first_node(knobs.slurm_nodelist),
                       knobs.master_port or slurm_port(knobs.slurm_step or (0, 0)))
    return None


def slurm_port(step: tuple[int, int]) -> int:
    """A port every task of one Slurm job step computes alike, different for other steps."""
    job, step_id = step
    return SLURM_PORT_BASE + (job * 16 + step_id) % SLURM_PORT_SPAN


# -- every other rank ---------------------------------------------------------------------------

def _join(where: Address, rank: int, size: int, host: str | None, port: int, deadline: float,
          token: bytes | None) -> tuple[list[list[Address]], str]:
    wait = FIRST_RETRY_WAIT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommTimeoutError(f"could not reach the rendezvous at {where} (rank 0) within "
                                   "the timeout; is rank 0 running, with the same MASTER_ADDR/"
                                   "MASTER_PORT?", rank=rank, peer=0, address=str(where),
                                   op="init")
        try:
            sock = socket.create_connection(tuple(where), timeout=remaining)
        except (OSError, UnicodeError):
            time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
            wait = min(wait * 2, MAX_RETRY_WAIT)
            continue
        try:
            return _register(sock, where, rank, size, host, port, deadline, token)
        except RingcommError:
            raise
        except (OSError, ValueError, RecursionError) as e:  # not our rank 0 (yet)
            if time.monotonic() >= deadline:
                raise CommError(f"the rendezvous at {where} failed: {e}", rank=rank, peer=0,
                                address=str(where), op="init") from None
            time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
        finally:
            sock.close()


def _register(sock: socket.socket, where: Address, rank: int, size: int, host: str | None,
              port: int, deadline: float, token: bytes | None) -> tuple[list[list[Address]], str]:
    """One attempt: greeting, join frame, rank 0's verdict, each receive bounded by the
    deadline (the verdict by a grace past it: rank 0 names the missing ranks at its own)."""
    try:
        nonce = frames.greeting_nonce(frames.recv(sock, deadline))
        mine = os.urandom(16).hex()
        hello = {"rank": rank, "size": size, "port": port, "nonce": mine}
        if host:
            hello["host"] = host
        hello["mac"] = frames.mac(token, b"join", nonce, hello)
        frames.send(sock, hello, deadline, time.monotonic())
        reply = frames.recv(sock, deadline + VERDICT_GRACE, frames.reply_limit(size))
    except TimeoutError:  # (socket.timeout too) a silent or dribbling peer, at the deadline
        raise CommTimeoutError(f"the rendezvous at {where} did not answer within the timeout",
                               rank=rank, peer=0, address=str(where), op="init") from None
    if not isinstance(reply, dict):
        raise frames.BadFrame("a reply that is not the rendezvous'")
    if "error" in reply:
        words, blamed, kind = frames.reply_refusal(reply, size)
        cls = CommTimeoutError if kind == "missing" else CommError
        raise cls(words, rank=rank, peer=blamed if blamed not in (None, rank) else 0,
                  address=str(where), op="init")
    found = frames.reply_table(reply, size, mine, token)
    if found is None:
        raise CommError(f"the rendezvous at {where} did not prove the token (RINGCOMM_TOKEN, "
                        "or the one derived from the launcher: a different one, or none?)",
                        rank=rank, peer=0, address=str(where), op="init")
    return found


# -- through MPI --------------------------------------------------------------------------------

def _through_mpi(rank: int, size: int, host: str, port: int,
                 deadline: float) -> tuple[list[list[Address]], str]:
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError(f"rank {rank} of {size} under MPI: no rendezvous address, and mpi4py "
                          "is not importable to exchange addresses through MPI; set "
                          "MASTER_ADDR and MASTER_PORT (or RINGCOMM_RENDEZVOUS=host:port), or "
                          "pip install mpi4py") from None
    result: list = []
    done = threading.Event()

    def exchange() -> None:  # MPI calls have no timeout: run them where a deadline can end us
        comm = MPI.COMM_WORLD
        result.append(comm.allgather((host, port)))
        result.append(comm.bcast(uuid.uuid4().hex if rank == 0 else None, root=0))
        done.set()
    threading.Thread(target=exchange, daemon=True).start()
    if not done.wait(max(deadline - time.monotonic(), 0)):
        raise CommTimeoutError("the address exchange through MPI did not finish within the "
                               "timeout", rank=rank, op="init")
    return [[Address(h, p)] for h, p in result[0]], result[1]
