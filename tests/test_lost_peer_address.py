"""A lost peer is named with its own hostfile address (issue 29, item 11).

Three real rank processes.  Rank 2 waits in ``recv(src=1)`` from its left neighbour, rank 1
is SIGKILLed, so rank 2 sees the loss first-hand, on a connection it accepted; rank 0 then
receives from rank 1 too and hears of it (a notice from rank 2, or its own connection).
Every survivor's error must name rank 1 with rank 1's address from the hostfile, not the
address the connection arrived on (the survivor's own).  With each rank on its own loopback
address (127.0.0.1, .2, .3) the host part is checked as well as the port.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ringcomm.ports import free_ports
from ringcomm.transports import Address
from ringcomm.transports.hostfile import write_hostfile
from tests.procs import env
from tests.test_rdma import emulated_ranks

RANK = textwrap.dedent("""
    import json, sys, time
    import numpy as np, ringcomm
    g = ringcomm.init(strict=True)
    print("ready", flush=True)
    sys.stdin.readline()               # rank 1 never gets further: it is killed here
    try:
        g.recv((1 << 16,), np.float32, src=1)
        print(json.dumps({"type": None}), flush=True)
    except ringcomm.RingcommError as e:
        print(json.dumps({"type": type(e).__name__, "peer": e.peer, "address": e.address,
                          "message": str(e), "at": time.time()}), flush=True)
""")


def hostfile_on(hosts: list[str], connections: int) -> list[list[Address]]:
    """One rank per host (a host may repeat), each on ``connections`` ports of its own."""
    ports = {host: iter(free_ports(connections * hosts.count(host), host)) for host in hosts}
    return [[Address(host, next(ports[host])) for _ in range(connections)] for host in hosts]


def kill_rank_1(tmp_path: Path, hostfile: list[list[Address]],
                protocol: str) -> tuple[dict[int, dict], float]:
    """Rank 2 in recv(src=1), rank 1 killed, then rank 0 in recv(src=1): each survivor's
    error, and the seconds from the kill to rank 2's error."""
    path = tmp_path / "hostfile.json"
    write_hostfile(path, hostfile)
    procs = [subprocess.Popen([sys.executable, "-c", RANK], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env(MLX_RANK=str(r), MLX_HOSTFILE=str(path),
                                      RINGCOMM_TIMEOUT="20", RINGCOMM_PROTOCOL=protocol))
             for r in range(3)]
    try:
        for r, p in enumerate(procs):
            assert p.stdout.readline().strip() == "ready", (r, p.stderr.read())
        procs[2].stdin.write("go\n")
        procs[2].stdin.flush()
        time.sleep(0.3)                 # rank 2 is blocked in its receive from rank 1
        killed = time.time()
        procs[1].send_signal(signal.SIGKILL)
        results = {2: json.loads(procs[2].stdout.readline())}
        procs[0].stdin.write("go\n")
        procs[0].stdin.flush()
        results[0] = json.loads(procs[0].stdout.readline())
        return results, results[2]["at"] - killed
    finally:
        for p in procs:
            p.kill()
            p.communicate()


@pytest.mark.parametrize("hosts, connections, protocol", [
    (["127.0.0.1", "127.0.0.2", "127.0.0.3"], 1, "ringcomm"),
    (["127.0.0.1", "127.0.0.2", "127.0.0.3"], 1, "mlx"),
    (["127.0.0.1"] * 3, 2, "ringcomm"),
])
def test_a_killed_rank_is_named_with_its_own_hostfile_address(tmp_path, hosts, connections,
                                                              protocol):
    hostfile = hostfile_on(hosts, connections)
    results, seconds = kill_rank_1(tmp_path, hostfile, protocol)
    dead = {str(a) for a in hostfile[1]}
    for r, res in sorted(results.items()):
        print(f"  rank {r}: {res}")
        assert res["type"] == "PeerLostError" and res["peer"] == 1, (r, res)
        assert res["address"] in dead, (r, res, dead)
        assert f"[peer rank 1 ({res['address']})]" in res["message"], (r, res)
        for addr in hostfile[r]:  # never the survivor's own address
            assert str(addr) not in res["message"], (r, res)
    print(f"  rank 2's error {seconds * 1000:.0f} ms after the kill")
    assert seconds < 2, seconds


# -- RDMA (the verbs emulation): no hostfile, so a peer is named by where it listens ----------

RDMA_DEATH = """
report(own=str(t._direct_addresses[r]))   # where this rank listens, as the others know it
x = np.ones(4 << 20, np.float32)          # 16 MiB: dozens of waits per all_sum
ringcomm.all_sum(x)
if r == 1:
    on_wait(40, lambda: (report(injected=time.time()), os._exit(1)))  # dies mid-collective
try:
    for _ in range(20):
        ringcomm.all_sum(x)
    report(finished=True)
except Exception as e:
    report(peer=getattr(e, "peer", None), address=getattr(e, "address", None), **failure(e))
"""


@pytest.mark.timeout(60)
def test_a_dead_rdma_rank_is_named_with_its_address_not_a_device(tmp_path):
    with emulated_ranks(tmp_path, 3, RDMA_DEATH) as procs:
        got = []
        for rank, p in enumerate(procs):
            out, err = p.communicate(timeout=30)
            rows = [json.loads(line[7:]) for line in out.splitlines()
                    if line.startswith("RESULT ")]
            assert rows, (rank, out, err[-3000:])
            got.append({k: v for row in rows for k, v in row.items()})
    dead = got[1]["own"]
    for rank in (0, 2):
        res = got[rank]
        print(f"  rank {rank}: {res['type']} {res['at'] - got[1]['injected']:.3f} s after the "
              f"death: {res['message']}")
        assert res["type"] == "PeerLostError" and res["peer"] == 1, (rank, res)
        assert res["address"] == dead, (rank, res, dead)
        assert f"[peer rank 1 ({dead})]" in res["message"], (rank, res)
