"""The ring's addresses under other launchers: Open MPI's mpirun, PMI MPIs, Slurm's srun, torchrun.

Those launchers give each process a rank and a world size (``settings.LAUNCHERS``) but no
hostfile.  Each rank picks a free port; rank 0 gathers every rank's port at one well-known
address and answers with the ring hostfile and a fresh job id; the ring then forms as usual
(handshake, token, job id).  The well-known address is ``RINGCOMM_RENDEZVOUS=host:port``, else
``MASTER_ADDR:MASTER_PORT`` (torchrun's names; under torchrun itself, whose agent's store
already listens on ``MASTER_PORT``, the port above it), else under Slurm the first node of
``SLURM_STEP_NODELIST`` with a port derived from the job and step ids (``slurm_port``).  Under an
MPI launcher with none of these, the addresses go through MPI itself when mpi4py imports.

A rank listens on the address its rendezvous connection came from, as rank 0 sees it: that
address routes to rank 0's network, and is a loopback address only when every rank is on rank
0's machine.  ``RINGCOMM_IFNAME`` names the interface to use instead.

Wire: frames of ``length:u32`` + UTF-8 JSON (at most ``MAX_FRAME`` bytes).  Rank 0 sends
``{"nonce"}``; a rank answers ``{"rank", "size", "port", "host"?, "nonce", "mac"}``; rank 0
answers ``{"hostfile", "job_id", "mac"}`` or ``{"error"}``.  With ``RINGCOMM_TOKEN`` each "mac"
is HMAC-SHA256 of the other side's nonce and the frame (never the token itself), so neither side
trusts a table or a rank from someone without the token.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import selectors
import socket
import struct
import threading
import time
import uuid

from .transports import (Address, CommError, CommTimeoutError, ConfigError, parse_hostfile,
                         settings)
from .transports.sockets import recv_exactly, resolve
from .transports.interfaces import interface_ip, primary_ip
from .ports import free_ports

MAX_FRAME = 64 << 10
HANDSHAKE_SECONDS = 5.0        # a connection must register within this, or is dropped
VERDICT_GRACE = 1.0            # a joined rank waits this past its deadline for rank 0's answer
FIRST_RETRY_WAIT, MAX_RETRY_WAIT = 0.02, 1.0
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 15000  # below Linux's ephemeral ports
_LENGTH = struct.Struct("!I")


def find_peers(rank: int, size: int, knobs: settings.Settings, deadline: float,
               token: bytes | None) -> tuple[list[list[Address]], str]:
    """The ring hostfile (one connection per neighbour) and the job id rank 0 chose."""
    port = free_ports(1, "")[0]  # (on every interface, as the ring listens)
    host = interface_ip(knobs.ifname) if knobs.ifname else None
    where = rendezvous_address(knobs)
    if where is None:
        if knobs.world is not None and "MPI" in knobs.world[0]:
            return _through_mpi(rank, size, host or primary_ip(), port, deadline)
        raise ConfigError(
            f"rank {rank} of {size} (from {knobs.world[0] if knobs.world else 'the launcher'}"
            "): no hostfile and no rendezvous address; set MASTER_ADDR and MASTER_PORT, or "
            "RINGCOMM_RENDEZVOUS=host:port (rank 0's host and a free port), or MLX_RANK and "
            "MLX_HOSTFILE")
    if rank == 0:
        return _serve(where, size, host, port, deadline, token, knobs.job_id)
    return _join(where, rank, size, host, port, deadline, token)


def rendezvous_address(knobs: settings.Settings) -> Address | None:
    """Where rank 0 gathers the ranks: RINGCOMM_RENDEZVOUS, MASTER_ADDR:MASTER_PORT (plus one
    under torchrun, whose agent holds MASTER_PORT), or Slurm's first node."""
    if knobs.rendezvous:
        host, sep, port = knobs.rendezvous.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"RINGCOMM_RENDEZVOUS must be host:port; got {knobs.rendezvous!r}")
        return Address(host.strip("[]"), int(port))
    if knobs.master_addr:
        if knobs.master_port is None:
            raise ConfigError("MASTER_ADDR is set but MASTER_PORT is not; set both (rank 0's "
                              "host and a free port)")
        # under torchrun, its agent's store already listens on MASTER_PORT
        return Address(knobs.master_addr,
                       knobs.master_port + 1 if knobs.under_torchrun else knobs.master_port)
    if knobs.slurm_nodelist and knobs.world is not None and knobs.world[0] == "Slurm":
        nodes = expand_nodelist(knobs.slurm_nodelist)
        return Address(nodes[0], knobs.master_port or slurm_port(knobs.slurm_step or (0, 0)))
    return None


def slurm_port(step: tuple[int, int]) -> int:
    """A port every task of one Slurm job step computes alike, different for other steps."""
    job, step_id = step
    return SLURM_PORT_BASE + (job * 16 + step_id) % SLURM_PORT_SPAN


def expand_nodelist(text: str) -> list[str]:
    """Slurm's bracket syntax: ``"gpu[01-03,7],login1"`` -> gpu01, gpu02, gpu03, gpu7, login1."""
    names: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", text):
        names.extend(_expand_one(item))
    if not names:
        raise ConfigError(f"SLURM_STEP_NODELIST={text!r} names no node")
    return names


def _expand_one(item: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[:match.start()], item[match.end():]
    out = []
    for part in match.group(1).split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ConfigError(f"SLURM_STEP_NODELIST: cannot expand {item!r}")
        for n in range(int(lo), int(hi or lo) + 1):
            out.extend(head + str(n).zfill(len(lo)) + rest for rest in _expand_one(tail))
    return out


# -- rank 0 -------------------------------------------------------------------------------------

def _serve(where: Address, size: int, host: str | None, port: int, deadline: float,
           token: bytes | None, job_id: str | None) -> tuple[list[list[Address]], str]:
    family = resolve(where, 0, what="the rendezvous host")[0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    joined: dict[int, tuple[socket.socket, dict]] = {}
    pending: dict[socket.socket, tuple[bytes, bytearray, float]] = {}  # nonce, buffer, since
    sel = selectors.DefaultSelector()
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("", where.port))
        except OSError as e:
            raise CommError(f"cannot listen on the rendezvous port {where.port}: "
                            f"{e.strerror or e} (is another job using it?)", rank=0,
                            op="init") from e
        listener.listen(64)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ)
        while len(joined) < size - 1:
            now = time.monotonic()
            if now >= deadline:
                missing = sorted(set(range(1, size)) - set(joined))
                why = (f"ranks {missing} did not reach the rendezvous at {where} within the "
                       "timeout; are they running, with the same MASTER_ADDR/MASTER_PORT?")
                for sock, _ in joined.values():
                    _try_send(sock, {"error": why, "missing": missing[0]})
                raise CommTimeoutError(why, rank=0, peer=missing[0], op="init")
            for sock, (_, _, since) in list(pending.items()):
                if now - since > HANDSHAKE_SECONDS:
                    _drop(sel, pending, sock)
            for key, _ in sel.select(min(deadline - now, 0.5)):
                if key.fileobj is listener:
                    _accept(listener, sel, pending)
                else:
                    _on_readable(key.fileobj, sel, pending, joined, size, token)
        hostfile = [[Address(host or _seen_as(joined), port)]]
        for r in range(1, size):
            sock, hello = joined[r]
            hostfile.append([Address(hello.get("host") or sock.getpeername()[0], hello["port"])])
        job = job_id or uuid.uuid4().hex
        table = [[str(a) for a in entry] for entry in hostfile]
        for r, (sock, hello) in joined.items():
            reply = {"hostfile": table, "job_id": job}
            reply["mac"] = _mac(token, b"table", hello["nonce"], reply)
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            try:
                _send(sock, reply)
            except OSError as e:
                raise CommError(f"could not send the ring's addresses to rank {r}: "
                                f"{e.strerror or e}", rank=0, peer=r, op="init") from e
        return hostfile, job
    finally:
        for sock in [*pending, *(s for s, _ in joined.values())]:
            sock.close()
        sel.close()
        listener.close()


def _seen_as(joined: dict) -> str:
    """Rank 0's own address, as the first joined rank reached it."""
    return joined[min(joined)][0].getsockname()[0]


def _accept(listener: socket.socket, sel: selectors.BaseSelector, pending: dict) -> None:
    try:
        sock, _ = listener.accept()
    except (BlockingIOError, OSError):
        return
    nonce = os.urandom(16)
    sock.settimeout(1.0)
    if not _try_send(sock, {"nonce": nonce.hex()}):
        sock.close()
        return
    sock.setblocking(False)
    pending[sock] = (nonce, bytearray(), time.monotonic())
    sel.register(sock, selectors.EVENT_READ)


def _on_readable(sock: socket.socket, sel: selectors.BaseSelector, pending: dict,
                 joined: dict, size: int, token: bytes | None) -> None:
    nonce, buf, _ = pending[sock]
    try:
        data = sock.recv(MAX_FRAME)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    buf += data
    frame = _complete_frame(buf)
    if not data or frame is False:
        _drop(sel, pending, sock)
        return
    if frame is None:
        return
    sel.unregister(sock)
    del pending[sock]
    sock.setblocking(True)
    why = _check_hello(frame, nonce, size, joined, token)
    if why is not None:
        _try_send(sock, {"error": f"rank 0 refused this rank: {why}"})
        sock.close()
        return
    joined[frame["rank"]] = (sock, frame)


def _check_hello(hello: object, nonce: bytes, size: int, joined: dict,
                 token: bytes | None) -> str | None:
    """Why ``hello`` cannot join (None: it can)."""
    if not isinstance(hello, dict) or not all(isinstance(hello.get(k), int)
                                              for k in ("rank", "size", "port")):
        return "not a ringcomm rendezvous message"
    if not isinstance(hello.get("nonce"), str) or not isinstance(hello.get("mac", ""), str):
        return "not a ringcomm rendezvous message"
    mac = hello.pop("mac", "")
    if not hmac.compare_digest(mac, _mac(token, b"join", nonce.hex(), hello)):
        return ("its RINGCOMM_TOKEN differs from rank 0's (or one side has none)")
    if hello["size"] != size:
        return f"it is in a world of {hello['size']} ranks, rank 0's has {size}"
    if not 0 < hello["rank"] < size:
        return f"rank {hello['rank']} is not a rank of {size} other than 0"
    if hello["rank"] in joined:
        return f"rank {hello['rank']} has already joined (two processes with one rank?)"
    if not 0 < hello["port"] < 65536:
        return f"port {hello['port']} is not a port"
    return None


def _drop(sel: selectors.BaseSelector, pending: dict, sock: socket.socket) -> None:
    sel.unregister(sock)
    del pending[sock]
    sock.close()


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
        except OSError:
            time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
            wait = min(wait * 2, MAX_RETRY_WAIT)
            continue
        try:
            return _register(sock, where, rank, size, host, port, deadline, token)
        except (ConnectionError, ValueError, RecursionError) as e:  # not our rank 0 (yet)
            if time.monotonic() >= deadline:
                raise CommError(f"the rendezvous at {where} failed: {e}", rank=rank, peer=0,
                                address=str(where), op="init") from None
            time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
        finally:
            sock.close()


def _register(sock: socket.socket, where: Address, rank: int, size: int, host: str | None,
              port: int, deadline: float, token: bytes | None) -> tuple[list[list[Address]], str]:
    def timeout() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CommTimeoutError(f"the rendezvous at {where} did not answer within the "
                                   "timeout", rank=rank, peer=0, address=str(where), op="init")
        return left
    try:
        sock.settimeout(timeout())
        greeting = _recv(sock)
        nonce = greeting.get("nonce") if isinstance(greeting, dict) else None
        if not isinstance(nonce, str):
            raise ValueError("not a ringcomm rendezvous")
        mine = os.urandom(16).hex()
        hello = {"rank": rank, "size": size, "port": port, "nonce": mine}
        if host:
            hello["host"] = host
        hello["mac"] = _mac(token, b"join", nonce, hello)
        _send(sock, hello)
        # rank 0 answers once every rank has joined, or at its deadline names the ranks that
        # did not: wait a little past ours for that verdict (ranks start at different times)
        sock.settimeout(timeout() + VERDICT_GRACE)
        reply = _recv(sock)
    except CommTimeoutError:
        raise
    except socket.timeout:  # (a TimeoutError, as CommTimeoutError is: hence the clause above)
        raise CommTimeoutError(f"the rendezvous at {where} did not answer within the timeout",
                               rank=rank, peer=0, address=str(where), op="init") from None
    if not isinstance(reply, dict):
        raise ValueError("not a ringcomm rendezvous")
    if "error" in reply:
        missing = reply.get("missing")
        cls = CommTimeoutError if isinstance(missing, int) else CommError
        raise cls(str(reply["error"]), rank=rank, peer=missing if isinstance(missing, int) else 0,
                  address=str(where), op="init")
    mac = reply.pop("mac", "")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(token, b"table", mine,
                                                                      reply)):
        raise CommError(f"the rendezvous at {where} did not prove RINGCOMM_TOKEN (a different "
                        "token, or none?)", rank=rank, peer=0, address=str(where), op="init")
    table = _table(reply.get("hostfile"), size)
    return table, str(reply.get("job_id", ""))


def _table(entries: object, size: int) -> list[list[Address]]:
    table = parse_hostfile(entries, source="the rendezvous' hostfile")
    if len(table) != size:
        raise ConfigError(f"the rendezvous' hostfile has {len(table)} ranks, not {size}")
    return table


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


# -- frames -------------------------------------------------------------------------------------

def _mac(token: bytes | None, role: bytes, nonce: str, message: dict) -> str:
    if token is None:
        return ""
    body = json.dumps(message, sort_keys=True).encode()
    return hmac.new(token, role + nonce.encode() + body, hashlib.sha256).hexdigest()


def _send(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message).encode()
    sock.sendall(_LENGTH.pack(len(body)) + body)


def _try_send(sock: socket.socket, message: dict) -> bool:
    try:
        _send(sock, message)
        return True
    except OSError:
        return False


def _recv(sock: socket.socket) -> object:
    (length,) = _LENGTH.unpack(recv_exactly(sock, _LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError("a rendezvous frame longer than 64 KiB")
    return json.loads(recv_exactly(sock, length).decode())


def _complete_frame(buf: bytearray) -> object:
    """The decoded frame once ``buf`` holds all of it, None before, False if it cannot be one."""
    if len(buf) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buf)
    if length > MAX_FRAME or len(buf) > _LENGTH.size + length:
        return False
    if len(buf) < _LENGTH.size + length:
        return None
    try:
        return json.loads(bytes(buf[_LENGTH.size:]).decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
