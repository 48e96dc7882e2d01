"""How the TCP data connections are tuned: congestion control (transports.sockets) and the
warm-up exchange of the ringcomm protocol (transports.tcp)."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

from ringcomm.launch import localhost_hostfile
from tests.procs import env, start_ranks
from ringcomm.transports.hostfile import write_hostfile

needs_congestion = pytest.mark.skipif(not hasattr(socket, "TCP_CONGESTION"),
                                      reason="this platform has no TCP_CONGESTION option")

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


@needs_congestion
def test_reno_by_default_and_the_system_choice_on_request(tmp_path):
    if not allowed("reno"):
        pytest.skip("this system does not allow reno for this process")
    assert congestion_of_every_data_connection(tmp_path / "a") == ["reno", "reno"]
    assert congestion_of_every_data_connection(
        tmp_path / "b", RINGCOMM_TCP_CONGESTION="system") == [system_default()] * 2


@needs_congestion
def test_an_algorithm_the_system_does_not_offer_is_a_config_error(tmp_path):
    ranks = start_ranks(tmp_path, 2, REPORT, RINGCOMM_TCP_CONGESTION="no-such-algorithm")
    outs = [p.communicate(timeout=60) for p in ranks]
    assert all(p.returncode != 0 for p in ranks), outs
    assert all("ConfigError" in err and "RINGCOMM_TCP_CONGESTION='no-such-algorithm'" in err
               for _, err in outs), outs


JOIN = """
import os, ringcomm
g = ringcomm.init(strict=True, timeout=float(os.environ.get("TIMEOUT", "20")))
g.barrier()
print("joined")
"""


def test_ranks_that_disagree_on_the_warm_up_fail_at_init_saying_so(tmp_path):
    hostfile = tmp_path / "hostfile.json"
    write_hostfile(hostfile, localhost_hostfile(2, 1))
    ranks = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(JOIN)],
                              env=env(MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile),
                                      RINGCOMM_TCP_WARMUP=warm, TIMEOUT="5"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, warm in enumerate(["1", "0"])]
    outs = [p.communicate(timeout=60) for p in ranks]
    assert all(p.returncode != 0 for p in ranks), outs
    assert any("RINGCOMM_TCP_WARMUP" in err for _, err in outs), outs


@pytest.mark.parametrize("warm", ["0", "1"])
def test_rings_join_with_and_without_the_warm_up(tmp_path, warm):
    ranks = start_ranks(tmp_path, 3, JOIN, connections=2, RINGCOMM_TCP_WARMUP=warm)
    outs = [p.communicate(timeout=60) for p in ranks]
    assert [out.strip() for out, _ in outs] == ["joined"] * 3, outs
