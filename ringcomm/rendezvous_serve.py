"""Rank 0's side of the rendezvous (``ringcomm.rendezvous``): listen only where the ranks are
told to reach it, greet each connection with a nonce, and collect one checked join frame per
rank, never blocking on one connection, until every rank has joined.

Whatever a connection sends is checked (``rendezvous_frames``) and at worst refused: rank 0
goes on serving the real ranks.  Two claims of one rank fail the rendezvous at once on rank 0
and on every rank that joined, naming both claimants' addresses: rank 0 cannot tell the real
one, and no later event could.  Without a token rank 0 warns once that anyone who reaches the
port can join, and listens ``DUPLICATE_GRACE`` past the last rank for a second claim.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import time
import uuid

from .transports import Address, CommError, CommTimeoutError, ConfigError
from .transports.log import logger as log, ranks_text, waiting
from . import rendezvous_frames as frames
from .launch_limits import raise_open_file_limit

HANDSHAKE_SECONDS = 5.0        # a connection must register within this, or is dropped
# Without a token rank 0 listens this long after the last rank joined, for a second claim of a
# rank (an outsider that joined first, then the real rank): a real rank that starts later than
# this finds the rendezvous closed and fails at its deadline (only a token closes that gap)
DUPLICATE_GRACE = 0.5
SPARE_FILES = 64               # rank 0's files beside the rendezvous' sockets


def listen_address(where: Address) -> list[tuple[int, tuple]]:
    """(family, socket address) to try binding, in order, for the rendezvous at ``where``:
    the addresses its host resolves to here, so that rank 0 listens only where the ranks are
    told to reach it (127.0.0.1 stays on loopback).  Only a name this machine maps to loopback
    but that is not "localhost" (Debian maps its own name to 127.0.1.1, while other hosts map it
    to a real address) listens on every interface: the others may reach it by any of them."""
    try:
        infos = socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"rank 0: cannot resolve the rendezvous host {where.host!r} of "
                          f"{where}: {getattr(e, 'strerror', None) or e}") from None
    candidates = [(family, addr) for family, _, _, _, addr in infos]
    try:
        ipaddress.ip_address(where.host)
        literal = True
    except ValueError:
        literal = False
    if not literal and where.host.lower() != "localhost" and all(
            ipaddress.ip_address(addr[0].split("%")[0]).is_loopback for _, addr in candidates):
        family = candidates[0][0]
        return [(family, ("::" if family == socket.AF_INET6 else "", where.port))]
    return candidates


class Gathering:
    """Rank 0's side: accept connections without blocking on any one of them, greet each
    with a nonce, and collect one checked join frame per rank until every rank has joined."""

    def __init__(self, where: Address, size: int, deadline: float, token: bytes | None) -> None:
        self.where, self.size, self.deadline, self.token = where, size, deadline, token
        self.joined: dict[int, tuple[socket.socket, dict]] = {}
        self.pending: dict[socket.socket, tuple[str, bytearray, float]] = {}  # nonce, buf, since
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None

    def serve(self, host: str | None, port: int,
              job_id: str | None) -> tuple[list[list[Address]], str]:
        try:
            self._listen()
            if self.token is None:
                log.warning("the rendezvous at %s has no token: anyone who can reach "
                            "that port can take a rank; set RINGCOMM_TOKEN to one secret on "
                            "every rank to keep outsiders out", self.where)
            with waiting(0, lambda: f"{ranks_text(self._absent())} to join the rendezvous at "
                         f"{self.where}", self.deadline):
                self._gather()
            hostfile = [[Address(host or self._seen_as(), port)]]
            for r in range(1, self.size):
                sock, hello = self.joined[r]
                hostfile.append([Address(hello.get("host") or self._seen_from(r), hello["port"])])
            job = job_id or uuid.uuid4().hex
            table = [[str(a) for a in entry] for entry in hostfile]
            for r, (sock, hello) in self.joined.items():
                reply = {"hostfile": table, "job_id": job}
                reply["mac"] = frames.mac(self.token, b"table", hello["nonce"], reply)
                try:
                    frames.send(sock, reply, self.deadline, time.monotonic())
                except OSError as e:
                    raise CommError(f"could not send the ring's addresses to rank {r}: "
                                    f"{e.strerror or e}", rank=0, peer=r,
                                    address=_peer(sock), op="init") from e
            return hostfile, job
        finally:
            for sock in [*self.pending, *(s for s, _ in self.joined.values())]:
                sock.close()
            self.sel.close()
            if self.listener is not None:
                self.listener.close()

    def _listen(self) -> None:
        _check_file_limit(self.size)
        last: OSError | None = None
        for family, addr in listen_address(self.where):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
            except OSError as e:
                sock.close()
                if e.errno == errno.EADDRNOTAVAIL:
                    last = e
                    continue
                raise CommError(f"cannot listen on the rendezvous address {self.where}: "
                                f"{e.strerror or e} (is another job using it?)", rank=0,
                                address=str(self.where), op="init") from e
            sock.listen(min(max(self.size, 64), socket.SOMAXCONN))
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ)
            self.listener = sock
            return
        raise ConfigError(f"rank 0 cannot listen on the rendezvous address {self.where}: "
                          f"{last.strerror if last else 'no address'}: it is not an address of "
                          "this machine; rank 0 must run on the host the other ranks are told to "
                          "reach (MASTER_ADDR or RINGCOMM_RENDEZVOUS)")

    def _gather(self) -> None:
        """Until every rank has joined (without a token, and a short grace after it)."""
        grace_end = None
        while True:
            now = time.monotonic()
            if len(self.joined) == self.size - 1:
                if self.token is not None:
                    return
                grace_end = grace_end or min(now + DUPLICATE_GRACE, self.deadline)
                if now >= grace_end:
                    return
            elif now >= self.deadline:
                self._missing()
            for sock, (_, _, since) in list(self.pending.items()):
                if now - since > HANDSHAKE_SECONDS:
                    self._drop(sock)
            wait = (grace_end or self.deadline) - now
            for key, _ in self.sel.select(min(max(wait, 0), 0.5)):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._on_readable(key.fileobj)

    def _absent(self) -> list[int]:
        return sorted(set(range(1, self.size)) - set(self.joined))

    def _missing(self) -> None:
        missing = self._absent()
        why = (f"ranks {missing} did not reach the rendezvous at {self.where} within the "
               "timeout; are they running, with the same MASTER_ADDR/MASTER_PORT?")
        self._tell_everyone({"error": why, "missing": missing[0]})
        raise CommTimeoutError(why, rank=0, peer=missing[0], op="init")

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:  # (EMFILE under a storm of connections: they are dropped in 5 s)
            return
        nonce = os.urandom(16).hex()
        now = time.monotonic()
        try:
            frames.send(sock, {"nonce": nonce}, min(now + 1.0, self.deadline), now)
        except OSError:
            sock.close()
            return
        sock.setblocking(False)
        self.pending[sock] = (nonce, bytearray(), now)
        self.sel.register(sock, selectors.EVENT_READ)

    def _on_readable(self, sock: socket.socket) -> None:
        nonce, buf, _ = self.pending[sock]
        try:
            data = sock.recv(frames.MAX_FRAME)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf += data
        try:
            frame = frames.complete_frame(buf)
        except frames.BadFrame:
            data = b""
        if not data:
            self._drop(sock)
            return
        if frame is frames.INCOMPLETE:
            return
        self.sel.unregister(sock)
        del self.pending[sock]
        why = frames.check_hello(frame, nonce, self.size, self.token)
        if why is not None:
            _try_send(sock, {"error": f"rank 0 refused this rank: {why}"},
                      time.monotonic() + 0.2)
            sock.close()
            return
        if frame["rank"] in self.joined:
            self._claimed_twice(frame["rank"], sock)
        self.joined[frame["rank"]] = (sock, frame)

    def _claimed_twice(self, r: int, second: socket.socket) -> None:
        """Two processes claim rank ``r``: rank 0 cannot tell the real one, so nobody joins."""
        first = self.joined[r][0]
        both = f"{_peer(first)} and {_peer(second)}"
        why = (f"rank {r} is claimed by two processes, from {both}: " +
               ("two processes of this job (both proved the token) were started with one rank"
                if self.token is not None else
                "two processes were started with one rank, or someone else who reached the "
                "rendezvous port took it (RINGCOMM_TOKEN keeps outsiders out)"))
        self._tell_everyone({"error": why, "claimed": r}, also=second)
        second.close()
        raise CommError(why, rank=0, peer=r, address=both, op="init")

    def _tell_everyone(self, message: dict, also: socket.socket | None = None) -> None:
        """``message`` to every joined rank and every connection that may be one."""
        socks = [s for s, _ in self.joined.values()] + list(self.pending)
        for sock in socks + ([also] if also is not None else []):
            _try_send(sock, message, time.monotonic() + 0.2)

    def _drop(self, sock: socket.socket) -> None:
        self.sel.unregister(sock)
        del self.pending[sock]
        sock.close()

    def _seen_from(self, r: int) -> str:
        """Rank ``r``'s address as its rendezvous connection came from."""
        try:
            return self.joined[r][0].getpeername()[0]
        except OSError:
            raise CommError(f"rank {r} closed its rendezvous connection before the ring's "
                            "addresses were sent", rank=0, peer=r, op="init") from None

    def _seen_as(self) -> str:
        """Rank 0's own address, as the first joined rank reached it."""
        return self.joined[min(self.joined)][0].getsockname()[0]


def _check_file_limit(size: int) -> None:
    """Rank 0 holds a socket per rank until all have joined: raise the soft limit on open
    files (up to the hard one) where it is too low for that, and refuse at once a world it
    cannot hold, rather than spin on EMFILE until the deadline."""
    need = size + SPARE_FILES
    short = raise_open_file_limit(need)
    if short is None:
        return
    soft, hard = short
    raise ConfigError(f"rank 0 of {size} needs about {need} open files for the rendezvous, "
                      f"and its limit is {soft} (hard limit {hard}); raise it (ulimit -n)")


def _peer(sock: socket.socket) -> str:
    try:
        return str(Address(*sock.getpeername()[:2]))
    except OSError:
        return "(a closed connection)"


def _try_send(sock: socket.socket, message: dict, deadline: float) -> bool:
    try:
        frames.send(sock, message, deadline, time.monotonic())
        return True
    except OSError:
        return False
