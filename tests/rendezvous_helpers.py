"""Helpers for the rendezvous tests (issue 29 items 1-4): rank processes started the way
torchrun, mpirun or srun start them (their variables, no hostfile), held before ``init()``
until the test says go, and plain sockets that speak (or abuse) the rendezvous' frames."""
from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys
import time


from tests.procs import ReportingRank, env

RANK = r"""
import json, sys, time
import numpy as np, ringcomm
print("ready", flush=True)
sys.stdin.readline()  # the test says when this rank starts
start = time.monotonic()
try:
    g = ringcomm.init(strict=True)
    joined = time.monotonic() - start
    y = ringcomm.all_sum(np.full(4, float(g.rank() + 1)))
    g.close()
    print(json.dumps({"sum": float(y[0]), "size": g.size(), "joined": joined}), flush=True)
except ringcomm.RingcommError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e),
                      "peer": getattr(e, "peer", None), "after": time.monotonic() - start}),
          flush=True)
"""


class Launched(ReportingRank):
    """One rank process of ``RANK`` with a launcher's variables ``extra``."""

    def __init__(self, **extra: str) -> None:
        self.name = f"rank {extra}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RANK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env(**extra))

    def ready(self, timeout: float = 120) -> Launched:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        assert line.strip() == "ready", f"{self.name} did not start: {line!r}"
        return self

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None


def started(*ranks: Launched) -> list[Launched]:
    for r in ranks:
        r.ready()
    return list(ranks)


def torchrun_env(rank: int, size: int, port: int, **extra: str) -> dict[str, str]:
    return dict(RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), **extra)


def dial(host: str, port: int, timeout: float = 20) -> socket.socket:
    """A connection to ``host:port`` once something listens there."""
    end = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host, port), timeout=5)
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)


def send_frame(sock: socket.socket, frame: object) -> None:
    """``frame`` (JSON, or bytes sent as they are) behind its length."""
    body = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
    sock.sendall(struct.pack("!I", len(body)) + body)


def read_frame(sock: socket.socket, timeout: float = 10) -> object:
    """The next frame's JSON, or None if the peer closed first."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack("!I", buf[:4])[0]:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
    except ConnectionResetError:
        return None
    return json.loads(buf[4:4 + struct.unpack("!I", buf[:4])[0]])
