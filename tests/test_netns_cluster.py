"""Tests of the network-namespace test cluster itself (tests/netns.py), with real processes:
sshd and ssh in every namespace, TCP over the bridge, a link taken down, the tbf rate limit,
Open MPI's mpirun across the hosts, and a teardown that leaves nothing behind."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests import netns
from tests.netns import NetnsCluster, cluster_fixture

pytestmark = pytest.mark.timeout(180)

RATE_MBIT = 40
cluster3 = cluster_fixture(3)
cluster_rate = cluster_fixture(2, rate_mbit=RATE_MBIT)

# Runs in one host: serve TCP on the host's IP, echo one message per connection; or receive
# one connection's bytes and report the rate.
SERVER = textwrap.dedent("""
    import json, socket, sys, time
    mode, ip = sys.argv[1], sys.argv[2]
    s = socket.create_server((ip, 0))
    print(s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        if mode == "echo":
            c.sendall(c.recv(100))
            c.close()
            continue
        n, first = 0, None
        while chunk := c.recv(1 << 20):
            first = first or time.monotonic()
            n += len(chunk)
        last = time.monotonic()
        print(json.dumps({"bytes": n, "seconds": last - first}), flush=True)
        break
""")

# Runs in another host: connect (with a time-out), then echo or send bytes; report as JSON.
CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    mode, ip, port, arg = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    t0 = time.monotonic()
    try:
        c = socket.create_connection((ip, port), timeout=arg if mode == "echo" else 10)
        if mode == "echo":
            c.sendall(b"ping")
            reply = c.recv(100).decode()
        else:
            c.sendall(bytes(int(arg)))
            reply = ""
        c.close()
        out = {"ok": True, "reply": reply}
    except OSError as e:
        out = {"ok": False, "error": type(e).__name__, "errno": e.errno, "msg": str(e)}
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)
""")


def start_server(cluster: NetnsCluster, host: str, mode: str) -> tuple[subprocess.Popen, int]:
    proc = cluster.popen(host, [cluster.python, "-c", SERVER, mode, cluster.ips[host]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"server in {host} did not start: {proc.stderr.read()}")
    return proc, int(line)


def client(cluster: NetnsCluster, host: str, mode: str, ip: str, port: int,
           arg: float) -> dict:
    p = cluster.run(host, [cluster.python, "-c", CLIENT, mode, ip, str(port), str(arg)],
                    check=True)
    return json.loads(p.stdout)


def transfer_mbit(cluster: NetnsCluster, src: str, dst: str, nbytes: int) -> float:
    server, port = start_server(cluster, dst, "sink")
    try:
        sent = client(cluster, src, "send", cluster.ips[dst], port, nbytes)
        assert sent["ok"], sent
        report = json.loads(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
    assert report["bytes"] == nbytes
    return report["bytes"] * 8 / report["seconds"] / 1e6


def test_ssh_to_every_host_shows_its_own_ip(cluster3):
    assert cluster3.hosts == ["h0", "h1", "h2"]
    assert len(set(cluster3.ips.values())) == 3
    for host in cluster3.hosts:
        p = cluster3.ssh(host, "hostname; hostname -I; ip -o -4 addr show", check=True)
        name, ips, addrs = p.stdout.split("\n", 2)
        assert name == host
        assert ips.split() == [cluster3.ips[host]]
        assert f"inet {cluster3.ips[host]}/24" in addrs and "inet 127.0.0.1/8" in addrs
        for other in set(cluster3.hosts) - {host}:
            assert cluster3.ips[other] not in p.stdout
    # from another host than h0, by IP as well as by name (the per-host /etc/hosts)
    p = cluster3.ssh(cluster3.ips["h0"], "hostname -I", frm="h2", check=True)
    assert p.stdout.split() == [cluster3.ips["h0"]]
    p = cluster3.run("h1", "getent hosts h2 && ssh h0 hostname", check=True)
    assert p.stdout.split() == [cluster3.ips["h2"], "h2", "h0"]


def test_remote_command_sees_the_checkout_and_its_venv(cluster3):
    code = ("import json, os, sys, ringcomm; print(json.dumps({'exe': sys.executable, "
            "'ringcomm': ringcomm.__file__, 'cwd': os.getcwd(), 'home': os.environ['HOME'], "
            "'path': os.environ['PATH']}))")
    p = cluster3.ssh("h1", cluster3.remote_python_command("-c", code), check=True)
    seen = json.loads(p.stdout)
    assert seen["exe"] == sys.executable
    assert Path(seen["ringcomm"]).resolve().is_relative_to(Path(cluster3.repo))
    assert seen["cwd"] == cluster3.repo and seen["home"] == os.path.expanduser("~")
    assert "/usr/bin" in seen["path"].split(":")
    # nothing of the local environment crosses ssh (bin_dir is on PATH locally, not there)
    assert str(cluster3.bin_dir) in cluster3.run("h0", "echo $PATH").stdout
    assert str(cluster3.bin_dir) not in seen["path"]


def test_tcp_across_the_bridge_and_a_link_taken_down(cluster3):
    server, port = start_server(cluster3, "h2", "echo")
    ip2 = cluster3.ips["h2"]
    try:
        ok = client(cluster3, "h0", "echo", ip2, port, 5)
        assert ok["ok"] and ok["reply"] == "ping", ok
        cluster3.link_down("h2")
        try:
            lost = client(cluster3, "h0", "echo", ip2, port, 1.0)
            assert not lost["ok"], lost
            assert lost["seconds"] < 2.0, lost                 # the 1 s connect time-out
            # and from h2 itself: no route at all, at once
            cut = client(cluster3, "h2", "echo", cluster3.ips["h0"], 22, 5)
            assert not cut["ok"] and cut["seconds"] < 0.5, cut
        finally:
            cluster3.link_up("h2")
        deadline = time.monotonic() + 5
        while not (back := client(cluster3, "h0", "echo", ip2, port, 1.0))["ok"]:
            assert time.monotonic() < deadline, back
        assert back["reply"] == "ping"
    finally:
        server.kill()
        server.wait()
    print(f"\nlink down: connect from h0 failed after {lost['seconds']:.2f} s "
          f"({lost['error']}: {lost['msg']}); from h2: {cut['error']} {cut['msg']}")


def test_rate_limit(cluster_rate, cluster3):
    nbytes = int(RATE_MBIT * 1e6 / 8 * 1.5)                   # 1.5 s at the rate
    limited = transfer_mbit(cluster_rate, "h0", "h1", nbytes)
    back = transfer_mbit(cluster_rate, "h1", "h0", nbytes)
    free = transfer_mbit(cluster3, "h0", "h1", 4 * nbytes)
    print(f"\ntbf {RATE_MBIT} Mbit/s: h0->h1 {limited:.1f}, h1->h0 {back:.1f}; "
          f"without tbf: {free:.0f} Mbit/s")
    for rate in (limited, back):
        assert 0.5 * RATE_MBIT < rate < 1.5 * RATE_MBIT
    assert free > 3 * RATE_MBIT


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun (apt-get install "
                    "openmpi-bin)")
@pytest.mark.parametrize("by_name", [False, True], ids=["ips", "names"])
def test_mpirun_one_rank_per_host(cluster3, by_name):
    # one os.write per line: under PYTHONUNBUFFERED=1 (the rank on h0 inherits it), print()
    # of several arguments writes each separately and mpirun interleaves the ranks' pieces
    code = ("import os, socket, subprocess, ringcomm; e = os.environ; ip = subprocess.run("
            "['hostname', '-I'], capture_output=True, text=True).stdout.strip(); "
            "os.write(1, f\"RANK {e['OMPI_COMM_WORLD_RANK']} {e['OMPI_COMM_WORLD_SIZE']} "
            "{socket.gethostname()} {ip} {e.get('CHECK')} {ringcomm.__file__}\\n\".encode())")
    argv = cluster3.mpirun_argv(by_name=by_name, extra=["-x", "CHECK=exported"])
    t0 = time.monotonic()
    p = cluster3.run("h0", [*argv, cluster3.python, "-c", code], timeout=60, check=True)
    seconds = time.monotonic() - t0
    rows = sorted(line.split()[1:] for line in p.stdout.splitlines() if line.startswith("RANK"))
    assert [r[:2] for r in rows] == [["0", "3"], ["1", "3"], ["2", "3"]], p.stdout + p.stderr
    hosts = [r[2] for r in rows]
    assert sorted(hosts) == ["h0", "h1", "h2"]
    for _, _, host, ip, check, _ in rows:
        assert ip == cluster3.ips[host] and check == "exported"
    print(f"\nmpirun ({'names' if by_name else 'IPs'}) took {seconds:.2f} s: "
          + "; ".join(" ".join(r[:4]) for r in rows))


# A real MPI program without mpi4py or a compiler: Open MPI's libmpi through ctypes.
MPI_ALLREDUCE = textwrap.dedent("""
    import ctypes, os, socket
    lib = ctypes.CDLL("libmpi.so.40", mode=ctypes.RTLD_GLOBAL)
    h = lambda name: ctypes.c_void_p(ctypes.addressof(ctypes.c_char.in_dll(lib, name)))
    assert lib.MPI_Init(None, None) == 0
    world, rank = h("ompi_mpi_comm_world"), ctypes.c_int()
    lib.MPI_Comm_rank(world, ctypes.byref(rank))
    send, total = ctypes.c_long(1 << rank.value), ctypes.c_long()
    assert lib.MPI_Allreduce(ctypes.byref(send), ctypes.byref(total), 1, h("ompi_mpi_long"),
                             h("ompi_mpi_op_sum"), world) == 0
    line = f"MPI {rank.value} {socket.gethostname()} {total.value}\\n"
    os.write(1, line.encode())      # one write: print() of several args may interleave
    assert lib.MPI_Finalize() == 0
""")


def test_mpi_allreduce_across_hosts(cluster3):
    """The MCA settings of mpirun_argv carry MPI's own traffic (btl tcp) over the bridge."""
    try:
        import ctypes
        ctypes.CDLL("libmpi.so.40")
    except OSError as e:
        pytest.skip(f"no Open MPI library: {e}")
    if shutil.which("mpirun") is None:
        pytest.skip("no mpirun (apt-get install openmpi-bin)")
    p = cluster3.run("h0", [*cluster3.mpirun_argv(), cluster3.python, "-c", MPI_ALLREDUCE],
                     timeout=60, check=True)
    rows = sorted(line.split()[1:] for line in p.stdout.splitlines() if line.startswith("MPI"))
    assert rows == [["0", "h0", "7"], ["1", "h1", "7"], ["2", "h2", "7"]], p.stdout + p.stderr


def _leftovers(cluster: NetnsCluster) -> list[str]:
    names = netns.iproute().namespaces()
    left = [ns for ns in [*cluster.namespaces.values(), cluster.bridge_ns] if ns in names]
    left += [str(d) for d in (netns.ETC_NETNS / ns for ns in cluster.namespaces.values())
             if d.exists()]
    if cluster.tmp is not None and cluster.tmp.exists():
        left.append(str(cluster.tmp))
    left += [f"sshd {p.pid}" for p in cluster._sshd.values() if netns.pid_alive(p.pid)
             and p.poll() is None]
    return left


def test_two_clusters_at_once_and_a_clean_teardown():
    a = netns.start_or_skip(2)
    try:
        b = netns.start_or_skip(2)
    except BaseException:
        a.close()
        raise
    with a, b:
        assert a.ips == b.ips and set(a.namespaces.values()).isdisjoint(b.namespaces.values())
        stray = a.popen("h1", ["sleep", "600"])          # teardown must kill this too
        for c in (a, b):
            assert c.ssh("h1", "hostname -I", check=True).stdout.split() == [c.ips["h1"]]
        print(f"\n2-host clusters: set-up {a.setup_s:.2f} s and {b.setup_s:.2f} s")
    assert stray.wait(timeout=5) is not None
    assert _leftovers(a) == [] and _leftovers(b) == []
    print(f"teardown {a.teardown_s:.3f} s and {b.teardown_s:.3f} s")


def test_setup_failing_halfway_leaves_nothing():
    class Broken(NetnsCluster):
        def _start_sshd(self, host):
            if host == "h1":
                raise RuntimeError("sshd refused to start (on purpose)")
            super()._start_sshd(host)

    c = Broken(3)
    with pytest.raises(RuntimeError, match="on purpose"):
        try:
            c.start()
        except netns.NetnsUnavailable as e:
            pytest.skip(str(e))
    assert c._made and c._sshd                          # it got half-way
    assert _leftovers(c) == []


def test_stale_namespaces_of_a_dead_run_are_removed():
    if reason := netns.unavailable_reason():
        pytest.skip(reason)
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = f"rcst{dead.pid}x0"
    ns = f"{tag}-h0"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    (netns.ETC_NETNS / ns).mkdir(parents=True)
    (netns.ETC_NETNS / ns / "hosts").write_text("")
    tmp = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    orphan = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    try:
        with NetnsCluster(1, prefix="rcst", check_ssh=False) as c:
            assert ns not in netns.iproute().namespaces()
            assert orphan.wait(timeout=5) is not None
            assert not (netns.ETC_NETNS / ns).exists() and not tmp.exists()
            assert c.run("h0", "hostname -I", check=True).stdout.split() == [c.ips["h0"]]
    finally:
        if orphan.poll() is None:
            orphan.kill()
        netns.cleanup_stale("rcst")


def test_skips_with_the_reason(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in netns.unavailable_reason()
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        netns.start_or_skip(2)
    monkeypatch.undo()
    monkeypatch.setitem(netns.TOOLS, "sshd", "/nonexistent/sshd")
    if os.geteuid() == 0:
        assert "missing sshd" in netns.unavailable_reason()
