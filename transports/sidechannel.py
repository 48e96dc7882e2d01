"""The TCP side channel of the RDMA transport: a star through rank 0, the coordinator.

Set-up: rank 0 listens on the coordinator address (``MLX_JACCL_COORDINATOR``); every other
rank connects and runs the ringcomm handshake (``transports.handshake``: job, rank, size,
optional HMAC proof of ``RINGCOMM_TOKEN``).  Then ``all_gather`` rounds exchange what the
queue pairs need (numbers, GIDs, keys).  Afterwards the channel stays open and carries
failure notices: a rank that fails tells rank 0, which tells everyone; a rank whose
connection closes without a goodbye has died, and rank 0 reports that too.

Frames after the handshake: ``type:u8 length:u32`` then ``length`` bytes (big-endian).
"""
from __future__ import annotations

import selectors
import socket
import struct
import time

from . import handshake, log, notices
from .errors import CommError, CommTimeoutError, PeerLostError
from .handshake import (HELLO, MAC_SIZE, OK, Hello, mac, mismatch, new_hello,
                        parse_hello, reject, verify)
from .hostfile import Address
from .sockets import recv_exactly, resolve

GATHER, TABLE, ABORT, BYE = 1, 2, 3, 4
FRAME = struct.Struct("!BI")
HANDSHAKE_SECONDS = 5.0
FIRST_RETRY_WAIT, MAX_RETRY_WAIT = 0.02, 1.0


class SideChannel:
    """Rank ``rank``'s connection(s) to the coordinator: all of them on rank 0, one elsewhere."""

    def __init__(self, rank: int, size: int, coordinator: Address, *, job: bytes,
                 token: bytes | None, deadline: float,
                 listener: socket.socket | None = None) -> None:
        self.rank, self.size, self.coordinator = rank, size, coordinator
        self._listener = listener  # rank 0: bound on the coordinator address already
        self._job, self._token = job, token
        self._peers: dict[int, socket.socket] = {}  # rank -> socket (rank 0: all others)
        self._gone: set[int] = set()                # ranks that said goodbye
        self._sel = selectors.DefaultSelector()
        try:
            if rank == 0:
                with log.waiting(0, lambda: f"{log.ranks_text(self._absent())} to reach the "
                                 f"coordinator at {coordinator}", deadline):
                    self._accept_all(deadline)
            else:
                with log.waiting(rank, f"rank 0 (the coordinator) at {coordinator}", deadline):
                    self._peers[0] = self._connect(deadline)
        except BaseException:
            self.close(goodbye=False)
            raise
        for peer, sock in self._peers.items():
            self._sel.register(sock, selectors.EVENT_READ, peer)

    # -- set-up ----------------------------------------------------------------------------

    def _absent(self) -> list[int]:
        return sorted(set(range(1, self.size)) - set(self._peers))

    def _accept_all(self, deadline: float) -> None:
        family, _, _, _, sockaddr = resolve(self.coordinator, self.rank, what="the coordinator host")
        listener = self._listener or socket.socket(family, socket.SOCK_STREAM)
        try:
            if self._listener is None:  # else the caller bound it before it published the port
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    listener.bind(sockaddr)
                except OSError as e:
                    raise CommError(f"cannot listen on the coordinator address "
                                    f"{self.coordinator}: {e.strerror or e}", rank=0,
                                    op="init") from e
            listener.listen(16)
            while len(self._peers) < self.size - 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted(set(range(1, self.size)) - set(self._peers))
                    raise CommTimeoutError(
                        f"ranks {missing} did not reach the coordinator {self.coordinator} "
                        "within the timeout; are they running with the same "
                        "MLX_JACCL_COORDINATOR?", rank=0, peer=missing[0], op="init")
                listener.settimeout(remaining)
                try:
                    sock, _ = listener.accept()
                except socket.timeout:
                    continue
                peer = self._verify(sock, deadline)
                if peer is None:
                    sock.close()
                else:
                    self._peers[peer] = sock
        finally:
            listener.close()

    def _verify(self, sock: socket.socket, deadline: float) -> int | None:
        """The coordinator's half of the handshake: the connecting rank, or None to drop it."""
        until = min(deadline, time.monotonic() + HANDSHAKE_SECONDS)  # for the whole of it
        sock.settimeout(max(until - time.monotonic(), 1e-3))
        try:
            theirs = parse_hello(recv_exactly(sock, HELLO.size, until))
            want = Hello(self._job, theirs.rank, self.size, 0, self._token is not None, b"")
            why = mismatch(theirs, want)
            if why is None and not 0 < theirs.rank < self.size:
                why = f"rank {theirs.rank} is out of range for {self.size} ranks"
            if why is None and theirs.rank in self._peers:
                why = f"rank {theirs.rank} is already connected"
            if why is not None:
                sock.sendall(reject(f"coordinator refused: {why}"))
                return None
            mine = new_hello(self._job, 0, self.size, 0, self._token)
            sock.sendall(mine.pack() + mac(self._token, b"acceptor", theirs, mine))
            if not verify(self._token, b"connector", theirs, mine,
                          recv_exactly(sock, MAC_SIZE, until)):
                sock.sendall(reject("coordinator refused: wrong RINGCOMM_TOKEN"))
                return None
            sock.sendall(OK)
        except (OSError, ValueError, struct.error):
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return theirs.rank

    def _connect(self, deadline: float) -> socket.socket:
        family, socktype, proto, _, sockaddr = resolve(self.coordinator, self.rank, what="the coordinator host")
        wait, error = FIRST_RETRY_WAIT, None
        while time.monotonic() < deadline:
            sock = socket.socket(family, socktype, proto)
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            try:
                sock.connect(sockaddr)
            except OSError as e:
                sock.close()
                error = e
                time.sleep(max(min(wait, deadline - time.monotonic()), 0))
                wait = min(wait * 2, MAX_RETRY_WAIT)
                continue
            try:
                self._handshake(sock, deadline)
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise CommTimeoutError(f"could not reach the coordinator (rank 0) at {self.coordinator}"
                               + (f" (last error: {error.strerror or error})" if error else "")
                               + "; is rank 0 running?", rank=self.rank, peer=0,
                               address=str(self.coordinator), op="init")

    def _handshake(self, sock: socket.socket, deadline: float) -> None:
        def refused(why: str) -> CommError:
            return CommError(f"the coordinator {self.coordinator} refused this rank: {why}",
                             rank=self.rank, peer=0, address=str(self.coordinator), op="init")
        mine = new_hello(self._job, self.rank, self.size, 0, self._token)
        try:
            handshake.connect(sock, mine, Hello(self._job, 0, self.size, 0,
                                                self._token is not None, b""),
                              self._token, refused)
        except socket.timeout:
            raise CommTimeoutError("handshake with the coordinator timed out", rank=self.rank,
                                   peer=0, address=str(self.coordinator), op="init") from None
        except ConnectionError as e:  # no answer at all: not a protocol it cannot read
            raise PeerLostError(f"the coordinator {self.coordinator} closed the connection "
                                f"before it answered ({e}): it failed, or gave up at its "
                                "deadline", rank=self.rank, peer=0,
                                address=str(self.coordinator), op="init") from None
        except (ValueError, struct.error) as e:
            raise refused(f"it does not speak this protocol ({e})") from None

    def all_gather(self, blob: bytes, deadline: float) -> list[bytes]:
        """Every rank's ``blob``, in rank order, on every rank (through rank 0)."""
        try:
            if self.rank != 0:
                self._send(0, GATHER, blob, deadline)
                return _unpack_table(self._expect(0, TABLE, deadline))
            blobs = [blob] + [self._expect(r, GATHER, deadline) for r in range(1, self.size)]
            table = b"".join(struct.pack("!I", len(b)) + b for b in blobs)
            for r in range(1, self.size):
                self._send(r, TABLE, table, deadline)
            return blobs
        except socket.timeout:
            raise CommTimeoutError("the set-up exchange through the coordinator timed out",
                                   rank=self.rank, op="init") from None

    def _send(self, peer: int, kind: int, payload: bytes, deadline: float) -> None:
        sock = self._peers[peer]
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            sock.sendall(FRAME.pack(kind, len(payload)) + payload)
        except OSError as e:
            raise PeerLostError(f"side channel to rank {peer} broke: {e.strerror or e}",
                                rank=self.rank, peer=peer, op="init") from e

    def _expect(self, peer: int, kind: int, deadline: float) -> bytes:
        sock = self._peers[peer]
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            got, length = FRAME.unpack(recv_exactly(sock, FRAME.size, deadline))
            payload = recv_exactly(sock, length, deadline)  # by the deadline, not per byte
        except ConnectionError as e:
            raise PeerLostError(f"rank {peer} left during set-up ({e})", rank=self.rank,
                                peer=peer, op="init") from None
        if got == ABORT:
            self._raise_notice(payload, peer)
        if got != kind:
            raise CommError(f"unexpected side-channel message {got} from rank {peer}",
                            rank=self.rank, peer=peer, op="init")
        return payload

    # -- failures after set-up ---------------------------------------------------------------

    def local_host(self) -> str:
        """The IP this rank's side channel runs on: where a subgroup's coordinator listens
        (``ringcomm.split``), reachable as this channel is."""
        return next(iter(self._peers.values())).getsockname()[0]

    def watch(self, seconds: float) -> None:
        """Sleep up to ``seconds`` on the side channel; raise the failure it reports, if any."""
        if not self._sel.get_map():
            time.sleep(max(seconds, 0))
            return
        for key, _ in self._sel.select(max(seconds, 0)):
            self._on_readable(key.data)

    def _on_readable(self, peer: int) -> None:
        sock = self._peers[peer]
        sock.settimeout(1.0)
        try:
            kind, length = FRAME.unpack(recv_exactly(sock, FRAME.size))
            payload = recv_exactly(sock, length)
        except (OSError, struct.error):
            kind, payload = None, b""
        if kind == BYE:
            self._forget(peer)
            self._gone.add(peer)
            return
        if kind == ABORT:
            error = self._notice_error(payload, peer)
            if self.rank == 0:  # forward it unchanged, or name the rank that sent garbage
                self._relay(payload if error.origin is not None else
                            notices.encode(error, 0), skip=peer)
            raise error
        # the connection closed without a goodbye: that rank's process is gone
        self._forget(peer)
        error = PeerLostError(f"rank {peer} is gone: its side-channel connection closed "
                              "without a goodbye (the process died or was killed)",
                              rank=self.rank, peer=peer)
        if self.rank == 0:
            self._relay(notices.encode(error, 0), skip=peer)
        raise error

    def _notice_error(self, payload: bytes, sender: int) -> CommError:
        """The error a notice from ``sender`` reports (MismatchError if it is not one)."""
        head, rest = payload[:notices.ABORT.size], payload[notices.ABORT.size:]
        try:
            notice = notices.decode(head, lambda n: rest[:n])
        except (ValueError, struct.error) as e:
            notice = notices.Notice(notices.GARBAGE, notices.NO_RANK, notices.NO_RANK,
                                    str(e) or "a notice too short to read")
        return notices.to_error(notice, rank=self.rank, size=self.size, sender=sender,
                                address=lambda r: None)

    def _raise_notice(self, payload: bytes, sender: int) -> None:
        raise self._notice_error(payload, sender)

    def _relay(self, notice: bytes, skip: int | None = None) -> None:
        frame = FRAME.pack(ABORT, len(notice)) + notice
        for peer, sock in self._peers.items():
            if peer != skip:
                try:
                    sock.setblocking(False)
                    sock.send(frame)  # best effort: never block a failing rank
                except OSError:
                    pass

    def notify(self, error: BaseException) -> None:
        """Tell the others (through rank 0) that this rank stops, and why."""
        self._relay(notices.encode(error, self.rank))

    def _forget(self, peer: int) -> None:
        sock = self._peers.pop(peer)
        self._sel.unregister(sock)
        sock.close()

    def close(self, goodbye: bool = True) -> None:
        for sock in self._peers.values():
            if goodbye:
                try:
                    sock.setblocking(False)
                    sock.send(FRAME.pack(BYE, 0))
                except OSError:
                    pass
            sock.close()
        self._peers.clear()
        self._sel.close()


def _unpack_table(table: bytes) -> list[bytes]:
    blobs, pos = [], 0
    while pos < len(table):
        (length,) = struct.unpack_from("!I", table, pos)
        blobs.append(table[pos + 4:pos + 4 + length])
        pos += 4 + length
    return blobs
