"""EMULATED verbs, the wire: how emulated queue pairs of different processes reach each other.

An emulation, not RDMA (see ``transports.emulated_verbs``, whose ``QP`` this mixin completes).
Every queue pair listens on a Unix socket named after its GID and QP number; moving to RTR
connects the pair (the lower of the two connects, the other accepts).  Frames on that socket
(``_FRAME``: kind psn length imm remote_addr rkey, then the payload) carry what the wire would:
sends, RDMA writes, cumulative ACKs, RNR NAKs and NAKs, with go-back-N after a refusal.  There
is no helper thread: bytes land in registered memory and are acknowledged when the process posts
or polls, and ``_hand_over`` returns only once posted frames are in the kernel's buffer.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import tempfile
import time

from .emulated_base import WC, PyverbsRDMAError, e, view

_SOCKET_DIR = os.path.join(tempfile.gettempdir(), f"ringcomm-emulated-verbs-{os.getuid()}")
_FRAME = struct.Struct("!BIIIQI")  # kind psn length imm remote_addr rkey
_DATA_SEND, _DATA_SEND_IMM, _DATA_WRITE, _ACK, _RNR_NAK, _NAK, _HELLO = range(1, 8)
_RNR_DELAY = 0.0005               # min_rnr_timer stand-in: wait before resending after RNR
_READ_BUDGET = 8 << 20             # bytes one poll may take from one queue pair
_STALL_SECONDS = 30.0             # a peer that reads nothing this long counts as gone

open_qps: list["QPWire"] = []  # this process's queue pairs, all progressed while one waits


class QPWire:
    """The inter-process half of an emulated queue pair: connecting, framing, progress."""

    def _listen(self) -> None:
        """Listen on the Unix socket named after this queue pair's GID and number."""
        self._path = _socket_path(self._gid, self.qp_num)
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
            sock.connect(_socket_path(*self._peer))
        except OSError as err:
            sock.close()
            raise PyverbsRDMAError(f"Failed to modify QP to RTR: no queue pair "
                                   f"{self._peer[1]} at GID {self._peer[0]} (emulated: its "
                                   f"owner is not running?)", err.errno or errno.EHOSTUNREACH)
        self._adopt(sock)
        self._out.append(memoryview(_FRAME.pack(_HELLO, self.qp_num, self._peer[1], 0, 0, 0)
                                    + bytes.fromhex(self._gid.replace(":", ""))))

    def _adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._listener.close()
        self._remove_path()

    def _transmit(self, entry: list) -> None:
        psn, wr, _ = entry
        kind = {e.IBV_WR_SEND: _DATA_SEND, e.IBV_WR_SEND_WITH_IMM: _DATA_SEND_IMM,
                e.IBV_WR_RDMA_WRITE: _DATA_WRITE}[wr.opcode]
        length = sum(s.length for s in wr.sg)
        self._out.append(memoryview(_FRAME.pack(kind, psn, length, wr.imm_data,
                                                wr._remote_addr, wr._rkey)))
        self._out.extend(view(s.addr, s.length) for s in wr.sg if s.length)
        entry[2] += 1

    # -- progress -------------------------------------------------------------------------

    def _progress(self) -> None:
        if self._closed:
            return
        if self._fail_at is not None and time.monotonic() >= self._fail_at:
            self._fail_at = None  # the retries of an unanswered request ran out
            self._fail_sends(e.IBV_WC_RETRY_EXC_ERR)
        if self._waiting_for_peer():
            self._accept()
        if self._sock is None:
            return
        if self._resend_at is not None and time.monotonic() >= self._resend_at:
            self._resend_at = None
            for entry in self._sq:
                self._transmit(entry)
        self._flush_out()
        self._read()
        self._hand_over()

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
        """Return only once every queued frame is in the kernel's socket buffer.

        A NIC keeps sending while its owner computes or sleeps; this emulation has no thread,
        so a frame left queued here would wait for the owner's next verbs call, which may
        never come (a rank that finished its part of a collective).  While the peer has not
        read enough, every queue pair of this process is progressed, so ranks that all wait
        on their right neighbours cannot block one another.
        """
        if self._waiting_for_peer():
            self._accept()
        self._flush_out()
        deadline = time.monotonic() + _STALL_SECONDS
        while self._out and self._sock is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._lose_peer()  # as a NIC whose retries ran out
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
        kind, psn, length = fields[0], fields[1], fields[2]
        if kind == _ACK:
            while self._sq and _psn_le(self._sq[0][0], psn):
                self._complete(self._sq.popleft()[1], e.IBV_WC_SUCCESS)
            return
        if kind == _RNR_NAK:
            self._on_rnr(psn)
            return
        if kind == _NAK:
            status = fields[3]
            if status == e.IBV_WC_RETRY_EXC_ERR:  # the responder is in ERR: no answer comes
                if self._fail_at is None and self._retry_seconds is not None:
                    self._fail_at = time.monotonic() + self._retry_seconds
                return
            if self._sq and self._sq[0][0] == psn:
                self._complete(self._sq.popleft()[1], status)
            self._error()
            return
        # a request: check order, then where its bytes go
        target = None
        if self.qp_state not in (e.IBV_QPS_RTR, e.IBV_QPS_RTS):
            # A QP in ERR drops requests unanswered.  The requester would retry until its
            # ACK timeouts run out: tell it so, and it fails when they would have.
            self._send_control(_NAK, psn, e.IBV_WC_RETRY_EXC_ERR)
            fields = (-1, *fields[1:])
        elif psn != self._expected_psn:
            pass  # a frame after a refused one (go-back-N): dropped below
        elif kind == _DATA_WRITE:
            mr = next((m for m in self.pd.mrs.values() if m.rkey == fields[5]), None)
            if mr is None or not mr.covers(fields[4], length) or \
                    not mr.access & e.IBV_ACCESS_REMOTE_WRITE:
                # a responder error (IB class C): NAK, and this QP enters ERR too
                self._send_control(_NAK, psn, e.IBV_WC_REM_ACCESS_ERR)
                self._error()
                fields = (-1, *fields[1:])
            else:
                target = view(fields[4], length) if length else None
        elif not self._rq:
            self._send_control(_RNR_NAK, psn)
            fields = (-1, *fields[1:])
        else:
            wr = self._rq[0]
            room = sum(s.length for s in wr.sg)
            if length > room:
                self._rq.popleft()
                self.rcq._push(WC(wr.wr_id, e.IBV_WC_LOC_LEN_ERR, e.IBV_WC_RECV, 0,
                                  self.qp_num))
                self._send_control(_NAK, psn, e.IBV_WC_REM_INV_REQ_ERR)
                self._error()
                fields = (-1, *fields[1:])
            elif length:
                target = view(wr.sg[0].addr, length)  # one SGE per receive (max_recv_sge=1)
        if psn != self._expected_psn:
            fields = (-1, *fields[1:])
        self._in = (fields, target, 0)
        if length == 0:
            self._in = None
            self._land(fields)

    def _land(self, fields: tuple) -> None:
        """A request's bytes are all in place: complete it and acknowledge."""
        kind, psn = fields[0], fields[1]
        if kind == -1:
            return
        if self.qp_state not in (e.IBV_QPS_RTR, e.IBV_QPS_RTS):  # entered ERR mid-frame
            self._send_control(_NAK, psn, e.IBV_WC_RETRY_EXC_ERR)
            return
        self._expected_psn = (psn + 1) & 0xFFFFFF
        if kind in (_DATA_SEND, _DATA_SEND_IMM):
            wr = self._rq.popleft()
            imm = kind == _DATA_SEND_IMM
            self.rcq._push(WC(wr.wr_id, e.IBV_WC_SUCCESS, e.IBV_WC_RECV, fields[2],
                              self.qp_num, fields[3] if imm else 0,
                              e.IBV_WC_WITH_IMM if imm else 0))
        self._send_control(_ACK, psn)

    def _on_rnr(self, psn: int) -> None:
        if not self._sq or self._sq[0][0] != psn:
            return
        entry = self._sq[0]
        if self._rnr_retry != 7 and entry[2] > self._rnr_retry:
            self._complete(self._sq.popleft()[1], e.IBV_WC_RNR_RETRY_EXC_ERR)
            self._error()
            return
        self._resend_at = time.monotonic() + _RNR_DELAY

    def _send_control(self, kind: int, psn: int, status: int = 0) -> None:
        self._out.append(memoryview(_FRAME.pack(kind, psn, 0, status, 0, 0)))
        self._flush_out()

    # -- failure --------------------------------------------------------------------------

    def _lose_peer(self) -> None:
        """The peer's process is gone: what it never acknowledged fails after 'retries'."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._peer_gone = True
        self._out.clear()
        self._fail_sends(e.IBV_WC_RETRY_EXC_ERR)

    def _fail_sends(self, status: int) -> None:
        if self._sq:
            self._complete(self._sq.popleft()[1], status)
            self._error()

    def _remove_path(self) -> None:
        try:
            os.unlink(self._path)
        except OSError:
            pass


def _socket_path(gid: str, qpn: int) -> str:
    """``<pid><device>-<qpn>`` in hex: the GID's last 8 bytes are its process id and device."""
    return os.path.join(_SOCKET_DIR, f"{gid.replace(':', '')[16:]}-{qpn:06x}")


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


def _psn_le(a: int, b: int) -> bool:
    """a <= b in 24-bit sequence-number arithmetic."""
    return ((b - a) & 0xFFFFFF) < 0x800000
