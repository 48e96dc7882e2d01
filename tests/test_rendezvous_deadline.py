"""Issue 29 item 3: a peer on the rendezvous port that dribbles its greeting or its answer a
byte at a time cannot keep a rank in init() past its deadline (every receive is bounded by the
call's deadline, not restarted per byte).  Real rank processes with RINGCOMM_TIMEOUT=3; the
dribbling peers are plain sockets in this process."""
from __future__ import annotations

import json
import os
import socket
import struct
import threading

import pytest

from ringcomm.ports import free_ports
from tests.rendezvous_helpers import Launched, dial, read_frame, started, torchrun_env

TIMEOUT = 3.0
VERDICT_GRACE = 1.0  # a joined rank waits this past its deadline for rank 0's verdict


def framed(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack("!I", len(body)) + body


class DribblingRankZero(threading.Thread):
    """A fake rank 0 that sends its greeting a byte every ``every`` s, or (``answer``) sends
    the greeting at once, takes the join frame, and dribbles the answer."""

    def __init__(self, port: int, answer: bool, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", port))
        self.answer, self.every, self.stop = answer, every, threading.Event()
        self.sent = 0
        self.start()

    def run(self) -> None:
        self.server.settimeout(30)
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            greeting = framed({"nonce": os.urandom(16).hex()})
            table = framed({"hostfile": [["127.0.0.1:1"], ["127.0.0.1:2"]], "job_id": "j",
                            "mac": ""})
            try:
                if self.answer:
                    conn.sendall(greeting)
                    read_frame(conn, 10)
                for byte in table if self.answer else greeting:
                    if self.stop.wait(self.every):
                        return
                    conn.sendall(bytes([byte]))
                    self.sent += 1
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.server.close()


@pytest.mark.parametrize("answer", [False, True], ids=["greeting", "answer"])
def test_a_dribbling_rank_0_cannot_stretch_a_joining_ranks_deadline(answer):
    port = free_ports(1)[0]
    fake = DribblingRankZero(port, answer)
    rank1 = started(Launched(**torchrun_env(1, 2, port, RINGCOMM_TIMEOUT=str(TIMEOUT))))[0]
    try:
        rank1.go()
        got = rank1.result(60)
    finally:
        rank1.kill()
        fake.close()
    print(f"rank 1 failed after {got.get('after', 0):.2f} s ({fake.sent} bytes dribbled): "
          f"{got.get('message')}")
    assert got.get("error") == "CommTimeoutError" and got["peer"] == 0, got
    # the answer may come a grace after the deadline: rank 0 names missing ranks at its own
    assert got["after"] < TIMEOUT + (VERDICT_GRACE if answer else 0) + 0.5, got


def test_a_dribbling_joiner_cannot_stretch_rank_0s_deadline():
    """Rank 0's side: a connection that dribbles its join frame; rank 0 ends at its deadline
    naming the rank that never joined."""
    port = free_ports(1)[0]
    rank0 = started(Launched(**torchrun_env(0, 2, port, RINGCOMM_TIMEOUT=str(TIMEOUT))))[0]
    stop = threading.Event()
    try:
        rank0.go()
        with dial("127.0.0.1", port) as dribbler:
            read_frame(dribbler)

            def dribble() -> None:
                for byte in framed({"rank": 1, "size": 2, "port": 4000, "nonce": "0" * 32,
                                    "mac": ""}):
                    if stop.wait(0.5):
                        return
                    try:
                        dribbler.sendall(bytes([byte]))
                    except OSError:
                        return
            thread = threading.Thread(target=dribble, daemon=True)
            thread.start()
            got = rank0.result(60)
            stop.set()
            thread.join(5)
    finally:
        rank0.kill()
    print(f"rank 0 failed after {got.get('after', 0):.2f} s: {got.get('message')}")
    assert got.get("error") == "CommTimeoutError" and got["peer"] == 1, got
    assert got["after"] < TIMEOUT + 0.5, got
