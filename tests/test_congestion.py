"""The congestion control of the TCP data connections (transports.sockets.set_congestion)."""
from __future__ import annotations

import socket

import pytest

from tests.procs import start_ranks

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_CONGESTION"),
                                reason="this platform has no TCP_CONGESTION socket option")

REPORT = """
import socket, ringcomm
g = ringcomm.init(strict=True, timeout=30)
names = {c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\\0").decode()
         for conns in g._transport._conns for c in conns}
g.barrier()
print(",".join(sorted(names)))
"""


def system_default() -> str:
    with socket.socket() as s:
        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()


def allowed(name: str) -> bool:
    with socket.socket() as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError:
            return False
    return True


def congestion_of_every_data_connection(tmp_path, **env: str) -> list[str]:
    tmp_path.mkdir(exist_ok=True)
    ranks = start_ranks(tmp_path, 2, REPORT, connections=2, **env)
    outs = [p.communicate(timeout=60) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), [err for _, err in outs]
    return [out.strip() for out, _ in outs]


def test_reno_by_default_and_the_system_choice_on_request(tmp_path):
    if not allowed("reno"):
        pytest.skip("this system does not allow reno for this process")
    assert congestion_of_every_data_connection(tmp_path / "a") == ["reno", "reno"]
    assert congestion_of_every_data_connection(
        tmp_path / "b", RINGCOMM_TCP_CONGESTION="system") == [system_default()] * 2


def test_an_algorithm_the_system_refuses_is_no_error(tmp_path):
    assert congestion_of_every_data_connection(
        tmp_path, RINGCOMM_TCP_CONGESTION="no-such-algorithm") == [system_default()] * 2
