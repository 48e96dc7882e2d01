"""EMULATED verbs, the wire: how emulated queue pairs of different processes reach each other.

An emulation, not RDMA (see ``transports.emulated_verbs``, whose ``QP`` this mixin completes).
Every queue pair listens on a Unix socket named after its owner's process id (which both of its
GIDs hold) and its QP number; moving to RTR connects the pair (the lower of the two connects,
the other accepts).  Frames on that socket (``_FRAME``: kind number length imm, then the
payload) carry what an unreliable-connected wire would: sends, nothing acknowledged.  The
faults of ``RINGCOMM_EMULATED_LOSS`` are applied here, to what is put on the socket.  There is
no helper thread: bytes land in registered memory when the process posts or polls, and
``_hand_over`` returns only once posted frames are in the kernel's buffer.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import random
import select
import socket
import struct
import tempfile
import time

from . import settings
from .emulated_base import FRAME_UNIT, WC, PyverbsRDMAError, e, view

_SOCKET_DIR = os.path.join(tempfile.gettempdir(), f"ringcomm-emulated-verbs-{os.getuid()}")
_FRAME = struct.Struct("!BIII")  # kind number length imm
_DATA_SEND, _DATA_SEND_IMM, _HELLO = 1, 2, 7
_READ_BUDGET = 8 << 20             # bytes one poll may take from one queue pair
_HAND_OVER_SECONDS = 0.2          # how long a post waits for a peer that reads nothing
_MAX_QUEUED = 32 << 20             # bytes queued for such a peer; past this, sends are lost

open_qps: list["QPWire"] = []  # this process's queue pairs, all progressed while one waits


class QPWire:
    """The inter-process half of an emulated queue pair: connecting, framing, progress."""

    def _listen(self) -> None:
        """Listen on the Unix socket named after this queue pair's GID and number."""
        self._path = socket_path(self._gid, self.qp_num)
        os.makedirs(_SOCKET_DIR, mode=0o700, exist_ok=True)
        if not _swept:
            _sweep()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.setblocking(False)
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        self._listener.bind(self._path)
        self._listener.listen(1)

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(socket_path(*self._peer))
        except OSError as err:
            sock.close()
            raise PyverbsRDMAError(f"Failed to modify QP to RTR: no queue pair "
                                   f"{self._peer[1]} at GID {self._peer[0]} (emulated: its "
                                   f"owner is not running?)", err.errno or errno.EHOSTUNREACH)
        self._adopt(sock)
        self._out.append(memoryview(_FRAME.pack(_HELLO, self.qp_num, self._peer[1], 0)
                                    + bytes.fromhex(self._gid.replace(":", ""))))

    def _adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._listener.close()
        self._remove_path()

    def _fault_source(self) -> random.Random | None:
        loss = settings.load().emulated_loss
        return None if loss is None else random.Random(f"{loss.seed}-{os.getpid()}")

    def _transmit(self, wr) -> None:
        """Put the send on the wire, unless the fault injection drops, repeats or damages it."""
        if self._sock is None:
            return  # no peer (gone, or not connected yet): lost, as on UC
        kind = _DATA_SEND_IMM if wr.opcode == e.IBV_WR_SEND_WITH_IMM else _DATA_SEND
        length = sum(s.length for s in wr.sg)
        parts = [memoryview(_FRAME.pack(kind, 0, length, wr.imm_data))]
        parts.extend(view(s.addr, s.length) for s in wr.sg if s.length)
        if sum(len(part) for part in self._out) > _MAX_QUEUED:
            self.faults["overflowed"] += 1  # a peer that reads nothing: the wire drops it
            return
        copies = 1
        if self._faults is not None:
            loss, draw = settings.load().emulated_loss, self._faults.random()
            if draw < loss.drop:
                self.faults["dropped"] += 1
                return
            if draw < loss.drop + loss.duplicate:
                self.faults["duplicated"] += 1
                copies = 2
            elif draw < loss.drop + loss.duplicate + loss.corrupt and length:
                self.faults["corrupted"] += 1
                data = bytearray(b"".join(parts[1:]))
                data[self._faults.randrange(length)] ^= 1 << self._faults.randrange(8)
                parts[1:] = [memoryview(data)]
        for _ in range(copies):
            self._out.extend(parts)

    # -- progress -------------------------------------------------------------------------

    def _progress(self) -> None:
        if self._closed:
            return
        if self._waiting_for_peer():
            self._accept()
        if self._sock is None:
            return
        self._flush_out()
        self._read()
        self._flush_out()

    def _waiting_for_peer(self) -> bool:
        """In RTR or later, with the peer's connection not yet accepted."""
        return self._sock is None and self._peer is not None and not self._peer_gone

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        self._adopt(sock)

    def _flush_out(self) -> None:
        while self._out and self._sock is not None:
            view = self._out[0]
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                return
            except OSError:
                self._lose_peer()
                return
            if sent == len(view):
                self._out.popleft()
            else:
                self._out[0] = view[sent:]

    def _hand_over(self) -> None:
        """Return once every queued frame is in the kernel's socket buffer, or after
        ``_HAND_OVER_SECONDS`` when the peer reads nothing (a stopped process).

        A NIC keeps sending while its owner computes or sleeps; this emulation has no thread,
        so a frame left queued here waits for the owner's next verbs call (the RDMA
        transport's keeper thread polls while its rank is away).  While the peer has not read
        enough, every queue pair of this process is progressed, so ranks that all wait on
        their right neighbours cannot block one another.
        """
        if self._waiting_for_peer():
            self._accept()
        self._flush_out()
        if self._stalled and self._out:
            return  # it read nothing the last time: do not wait on it again
        self._stalled = False
        deadline = time.monotonic() + _HAND_OVER_SECONDS
        while self._out and self._sock is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._stalled = True  # what is queued goes when it reads
                return
            readers = [qp._sock or qp._listener for qp in open_qps if qp._sock is not None
                       or qp._waiting_for_peer()]
            select.select(readers, [self._sock], [], min(left, 0.1))
            for qp in list(open_qps):
                if qp._waiting_for_peer():
                    qp._accept()
                qp._read()
                qp._flush_out()

    def _read(self) -> None:
        budget = _READ_BUDGET
        while self._sock is not None and budget > 0:
            try:
                if self._in is None:
                    data = self._sock.recv(_FRAME.size + 16 - len(self._head)
                                           if self._head[:1] == bytes([_HELLO])
                                           else _FRAME.size - len(self._head))
                    if not data:
                        self._lose_peer()
                        return
                    self._head += data
                    if self._head[:1] == bytes([_HELLO]):
                        if len(self._head) == _FRAME.size + 16:
                            self._head.clear()  # the connector's greeting: nothing to do
                        continue
                    if len(self._head) == _FRAME.size:
                        self._on_frame(_FRAME.unpack(self._head))
                        self._head.clear()
                    continue
                fields, target, pos = self._in
                length = fields[2]
                if target is None:  # discarding a refused frame
                    data = self._sock.recv(min(length - pos, 1 << 16))
                    got = len(data)
                else:
                    got = self._sock.recv_into(target[pos:])
                if not got:
                    self._lose_peer()
                    return
                budget -= got
                pos += got
                self._in = (fields, target, pos)
                if pos == length:
                    self._in = None
                    self._land(fields)
            except BlockingIOError:
                return
            except OSError:
                self._lose_peer()
                return

    def _on_frame(self, fields: tuple) -> None:
        """A send arrives: into the oldest posted receive, or dropped (UC says nothing)."""
        length, target = fields[2], None
        if self.qp_state not in (e.IBV_QPS_RTR, e.IBV_QPS_RTS) or not self._rq:
            fields = (-1, *fields[1:])  # no receive: the message is lost
        else:
            wr = self._rq.popleft()
            room = sum(s.length for s in wr.sg)
            if length > room or \
                    -(-max(length, 1) // FRAME_UNIT) != -(-max(room, 1) // FRAME_UNIT):
                # longer than the receive; or (Thunderbolt) spanning another number of
                # 4 KiB units than the receive
                self.rcq._push(WC(wr.wr_id, e.IBV_WC_LOC_LEN_ERR, e.IBV_WC_RECV, 0,
                                  self.qp_num))
                self._error()
                fields = (-1, *fields[1:])
            else:
                fields = (*fields, wr)
                if length:
                    target = view(wr.sg[0].addr, length)  # one SGE per receive
        self._in = (fields, target, 0)
        if length == 0:
            self._in = None
            self._land(fields)

    def _land(self, fields: tuple) -> None:
        """A send's bytes are all in place: complete its receive."""
        kind = fields[0]
        if kind == -1 or self.qp_state not in (e.IBV_QPS_RTR, e.IBV_QPS_RTS):
            return
        wr, imm = fields[4], kind == _DATA_SEND_IMM
        self.rcq._push(WC(wr.wr_id, e.IBV_WC_SUCCESS, e.IBV_WC_RECV, fields[2], self.qp_num,
                          fields[3] if imm else 0, e.IBV_WC_WITH_IMM if imm else 0))

    # -- failure --------------------------------------------------------------------------

    def _lose_peer(self) -> None:
        """The peer's process is gone: what was queued for it is lost, and so is what follows."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._peer_gone = True
        self._out.clear()

    def _remove_path(self) -> None:
        try:
            os.unlink(self._path)
        except OSError:
            pass


def ipv4_mapped(pid: int) -> str:
    """The IPv4-mapped GID ``::ffff:127.a.b.c`` that holds process id ``pid`` (24 bits)."""
    raw = bytes(10) + b"\xff\xff\x7f" + (pid & 0xFFFFFF).to_bytes(3, "big")
    return str(ipaddress.IPv6Address(raw).exploded)


def socket_path(gid: str, qpn: int) -> str:
    """``<pid>-<qpn>`` in hex: both GIDs of an emulated device hold their process's id (the
    link-local one in bytes 8-11, the IPv4-mapped one in its last three), and QP numbers are
    unique within a process."""
    raw = bytes.fromhex(gid.replace(":", ""))
    mapped = raw[:12] == bytes(10) + b"\xff\xff"
    pid = int.from_bytes(raw[13:], "big") if mapped else int.from_bytes(raw[8:12], "big")
    return os.path.join(_SOCKET_DIR, f"{pid:08x}-{qpn:06x}")


_swept = False


def _sweep() -> None:
    """Remove the sockets of processes that are gone, once per process.  A queue pair removes
    its own when it connects or closes, but a killed process (SIGKILL) cannot, and nothing
    else would: the folder grew by one file per queue pair of every killed rank.  A process
    that is still there (``kill(pid, 0)`` finds it, or it is another user's) keeps its own, so
    processes of one user sharing the folder must share a pid namespace, as the network
    namespaces of ``tests/test_multihost.py`` do."""
    global _swept
    _swept = True
    for name in os.listdir(_SOCKET_DIR):
        try:
            pid = int(name[:8], 16)
        except ValueError:
            continue  # not a queue pair's
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(_SOCKET_DIR, name))
            except OSError:
                pass  # another process swept it first
        except OSError:
            pass  # it exists (another user's): not ours to judge
