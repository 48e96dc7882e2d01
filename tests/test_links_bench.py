"""``python -m ringcomm.bench.links`` for real: namespaces, tc tbf links, ranks started with
``ip netns exec``; the rate must show in busbw, and nothing may be left behind (also after
Ctrl-C).  Skipped, with the reason, where namespaces or ip/tc are not available."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringcomm.bench.links import payload_ceiling
from ringcomm.netns import Iproute, NetnsHosts, NetnsUnavailable

REPO = Path(__file__).resolve().parent.parent
RATE_GBIT = 0.5
pytestmark = pytest.mark.timeout(120)


def _iproute_or_skip() -> Iproute:
    if os.geteuid() != 0:
        pytest.skip("the links benchmark needs root (network namespaces, tc)")
    try:
        return Iproute.find()
    except NetnsUnavailable as e:
        pytest.skip(str(e))


def _bench(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "ringcomm.bench.links", *args], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def _left(iproute: Iproute, pid: int) -> list[str]:
    return [ns for ns in iproute.namespaces() if ns.startswith(f"rclk{pid}x")]


def test_busbw_follows_the_shaped_rate_and_nothing_is_left(tmp_path):
    iproute = _iproute_or_skip()
    out = tmp_path / "links.jsonl"
    started = time.monotonic()
    bench = _bench("--ranks", "2", "--rates", str(RATE_GBIT), "-b", "4M", "-e", "4M",
                   "--op", "all_sum,all_gather", "-w", "1", "--iters", "5",
                   "--output", str(out))
    try:
        stdout, stderr = bench.communicate(timeout=90)
    finally:
        bench.kill()  # (a no-op once it has exited; else its exit hook removes the namespaces)
    took = time.monotonic() - started
    if bench.returncode == 3:
        pytest.skip(f"namespaces unavailable: {stderr.strip()}")
    assert bench.returncode == 0, stdout + stderr
    assert _left(iproute, bench.pid) == []
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["op"], r["ranks"], r["bytes"]) for r in rows] == [
        ("ringcomm", "all_sum", 2, 4 << 20), ("ringcomm", "all_gather", 2, 4 << 20)]
    for r in rows:
        assert r["rate_gbit"] == RATE_GBIT and r["mtu"] == 9000
        assert r["share"] == pytest.approx(r["busbw_gbps"] * 8 / RATE_GBIT, rel=1e-3)
        # shaped: near the rate; an unshaped veth pair moves several Gbit/s (10x and more)
        assert 0.5 < r["share"] < 1.1, r
    lines = [line.split() for line in stdout.splitlines() if not line.startswith("#")]
    assert [(c[0], c[1], c[2], c[3]) for c in lines] == [
        ("0.5", "2", "all_sum", str(4 << 20)), ("0.5", "2", "all_gather", str(4 << 20))]
    for cells, r in zip(lines, rows):  # the table's share, to its 0.1%, is the record's (4 places)
        assert abs(float(cells[5].rstrip("%")) / 100 - r["share"]) <= 0.0006, (cells, r)
    assert f"{payload_ceiling(9000):.1%}" in stdout
    print(f"\nlinks bench, 2 ranks at {RATE_GBIT} Gbit/s: shares "
          f"{[r['share'] for r in rows]}, {took:.1f} s")


def test_ctrl_c_removes_the_namespaces_and_the_ranks():
    iproute = _iproute_or_skip()
    bench = _bench("--ranks", "2", "--rates", "0.1", "-b", "64M", "-e", "64M",
                   "--op", "all_sum", "-w", "1", "--iters", "50")
    try:
        deadline = time.monotonic() + 30
        said = []
        while "ringcomm on 2 ranks" not in (line := bench.stderr.readline()):
            said.append(line)
            if not line and bench.wait(timeout=10) == 3:
                pytest.skip(f"namespaces unavailable: {''.join(said).strip()}")
            assert line and time.monotonic() < deadline, f"the pass did not start: {said}"
        ranks = []
        while time.monotonic() < deadline and len(ranks) < 2:
            ranks = [p for ns in _left(iproute, bench.pid) for p in iproute.pids(ns)]
            time.sleep(0.1)
        assert len(ranks) == 2, ranks
        bench.send_signal(signal.SIGINT)
        _, stderr = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:  # a test that failed above: stop it as Ctrl-C would
            bench.send_signal(signal.SIGINT)
            bench.wait(timeout=30)
    assert bench.returncode == 130, stderr
    assert "interrupted" in stderr
    assert _left(iproute, bench.pid) == []
    for pid in ranks:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_an_unpacked_iproute_lends_its_libraries_to_ip_alone(tmp_path):
    """--iproute DIR: ip and tc run with DIR's libraries; commands in a host get the caller's
    LD_LIBRARY_PATH back (none, or its own), not ip's."""
    system = _iproute_or_skip()
    (tmp_path / "bin").mkdir()
    (tmp_path / "sbin").mkdir()
    (tmp_path / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    log = tmp_path / "ip-saw"
    (tmp_path / "bin/ip").write_text(  # the system's ip, noting the libraries it was given
        f'#!/bin/sh\necho "${{LD_LIBRARY_PATH-unset}}" >> {log}\nexec {system.ip} "$@"\n')
    (tmp_path / "bin/ip").chmod(0o755)
    (tmp_path / "sbin/tc").symlink_to(system.tc)
    (tmp_path / "usr/lib/x86_64-linux-gnu/libunused.so.1").write_bytes(b"")
    carried = Iproute.find(tmp_path)
    assert carried.libs == str(tmp_path.resolve() / "usr/lib/x86_64-linux-gnu")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    hosts = NetnsHosts(1, rate_mbit=100, prefix="rclkt", mtu=9000, iproute=carried)
    try:
        hosts.start()
    except NetnsUnavailable as e:
        pytest.skip(str(e))
    with hosts:
        shell = 'echo "[${LD_LIBRARY_PATH-unset}]"; ip -o link show eth0; ip -o addr'
        p = hosts.popen("h0", ["sh", "-c", shell],
                        env=env, stdout=subprocess.PIPE, text=True)
        got, _ = p.communicate(timeout=10)
        assert got.splitlines()[0] == "[unset]"
        assert hosts.ips["h0"] in got and " mtu 9000 " in got.splitlines()[1]
        p = hosts.popen("h0", ["sh", "-c", 'echo "[$LD_LIBRARY_PATH]"'],
                        env=dict(env, LD_LIBRARY_PATH="/callers/own"), stdout=subprocess.PIPE,
                        text=True)
        assert p.communicate(timeout=10)[0].strip() == "[/callers/own]"
        saw = log.read_text().splitlines()
        assert saw and all(line.split(":")[0] == carried.libs for line in saw), saw
        qdisc = carried.run([carried.tc, "-n", hosts.namespaces["h0"], "qdisc", "show"])
        assert "tbf" in qdisc and "100Mbit" in qdisc
    assert hosts.namespaces["h0"] not in system.namespaces()


@pytest.mark.parametrize("extra", [["-n", "4"], ["-n4"], ["--plo", "x.png"], ["--out", "x.json"],
                                   ["--trans", "rdma"], ["--connections-per-ip", "2", "-n", "2"]])
def test_sweep_options_that_do_not_apply_are_refused_even_abbreviated(extra, capsys):
    from ringcomm.bench.links import parse
    with pytest.raises(SystemExit) as exit_:
        parse(["--ranks", "2", *extra], "links")
    assert exit_.value.code == 2
    assert "not with the links benchmark" in capsys.readouterr().err
