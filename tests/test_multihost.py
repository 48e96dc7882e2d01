"""Jobs across machines, on the network-namespace cluster of tests/netns.py: real sshd, ssh,
mpirun and ranks on three "hosts" h0, h1, h2 (10.77.0.10-12).  The launcher runs in h0 and
reaches every host, h0 included, over ssh, as on a real cluster.  Covers the ssh launcher
(every collective, ranks per host, connections per IP, hostfile formats), stopping every rank
on every host (a failing rank, a killed one, SIGINT, SIGTERM, SIGHUP), start-up errors (an
unreachable host, a refused key, an IP the host does not own, a missing Python, script or
directory), a link taken down mid-collective, and init() under mpirun, torchrun's and Slurm's
variables."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests import netns
from tests.netns import NetnsCluster, cluster_fixture

pytestmark = pytest.mark.timeout(120)
cluster3 = cluster_fixture(3)
IPS = ["10.77.0.10", "10.77.0.11", "10.77.0.12"]

COLLECTIVES = """
import json, os, socket
import numpy as np, ringcomm
g = ringcomm.init(strict=True)
r, n = g.rank(), g.size()
xs = [(np.arange(12, dtype=np.int64).reshape(6, 2) * (k + 3)) % 11 - 5 for k in range(n)]
ok = {
    "all_sum": np.array_equal(ringcomm.all_sum(xs[r]), np.sum(xs, axis=0)),
    "all_max": np.array_equal(ringcomm.all_max(xs[r]), np.max(xs, axis=0)),
    "all_min": np.array_equal(ringcomm.all_min(xs[r]), np.min(xs, axis=0)),
    "all_gather": np.array_equal(ringcomm.all_gather(xs[r]), np.concatenate(xs)),
}
big = [np.arange(n * 2 * 3, dtype=np.int64).reshape(n * 2, 3) * (k + 1) for k in range(n)]
ok["sum_scatter"] = np.array_equal(ringcomm.sum_scatter(big[r]),
                                   np.sum(big, axis=0)[2 * r:2 * r + 2])
right, left = (r + 1) % n, (r - 1) % n
if r % 2 == 0:
    ringcomm.send(xs[r], right); got = ringcomm.recv_like(xs[r], left)
else:
    got = ringcomm.recv_like(xs[r], left); ringcomm.send(xs[r], right)
ok["send_recv"] = np.array_equal(got, xs[left])
ringcomm.barrier()
ok["barrier"] = True
print(json.dumps({"rank": r, "size": n, "host": socket.gethostname(), "ok": ok,
                  "hostfile": json.load(open(os.environ["MLX_HOSTFILE"])), "cwd": os.getcwd(),
                  "token": bool(os.environ.get("RINGCOMM_TOKEN")),
                  "job": os.environ.get("RINGCOMM_JOB_ID"), "greeting": os.environ.get("GREETING"),
                  "timeout": os.environ.get("RINGCOMM_TIMEOUT")}))
"""

# Ready after a barrier, then: rank FAIL exits 3, the others wait (in sleep, not in a call);
# a rank listed in STUBBORN ignores SIGTERM.  One print per line.
WAITER = """
import os, signal, sys, time
import ringcomm
g = ringcomm.init(strict=True)
ringcomm.barrier()
if str(g.rank()) in os.environ.get("STUBBORN", "").split(","):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"ready {g.rank()} {os.getpid()} {os.environ.get('RINGCOMM_TOKEN', '')}", flush=True)
if str(g.rank()) == os.environ.get("FAIL"):
    time.sleep(0.5)
    sys.exit(3)
time.sleep(90)
"""

# Collectives in a loop until one fails; the error, its type and when (CLOCK_MONOTONIC is one
# clock for every namespace).
LOOP = """
import os, time
import numpy as np, ringcomm
g = ringcomm.init(strict=True)
x = np.ones(1 << 18, np.float32)
ringcomm.barrier()
print(f"ready {g.rank()} {os.getpid()}", flush=True)
try:
    while True:
        ringcomm.all_sum(x)
except ringcomm.RingcommError as e:
    msg = str(e).replace(chr(10), " ")
    print(f"ERR {g.rank()} {time.monotonic():.3f} {type(e).__name__} {msg}", flush=True)
    raise SystemExit(1)
"""


def write(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def launcher(c: NetnsCluster, *args: str) -> list[str]:
    return [c.python, "-m", "ringcomm.launch", *args]


def run(c: NetnsCluster, *args: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess:
    return c.run("h0", launcher(c, *args), timeout=timeout, env=c.env(**env))


def start(c: NetnsCluster, *args: str, **env: str) -> subprocess.Popen:
    return c.popen("h0", launcher(c, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True, env=c.env(**env))


def records(stdout: str) -> dict[int, dict]:
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"\[(\d+)\] (\{.*\})$", line)
        if m:
            out[int(m.group(1))] = json.loads(m.group(2))
    return out


def wait_ready(proc: subprocess.Popen, ranks: int, timeout: float = 60) -> dict[int, list[str]]:
    """Read the launcher's stdout until every rank printed its ready line."""
    ready, deadline = {}, time.monotonic() + timeout
    while len(ready) < ranks:
        assert time.monotonic() < deadline, f"ranks not ready: {ready}"
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"launcher ended early ({proc.wait()}): {proc.stderr.read()}")
        m = re.match(r"\[(\d+)\] ready \d+ (.*)$", line.strip())
        if m:
            ready[int(m.group(1))] = m.group(2).split()
    return ready


def leftovers(c: NetnsCluster, marker: str) -> dict[str, list[str]]:
    """Processes in each host's network namespace whose command line has ``marker`` or is a
    ringcomm agent."""
    found = {}
    for host, ns in c.namespaces.items():
        for pid in netns.iproute().pids(ns):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd or "ringcomm-agent" in cmd:
                found.setdefault(host, []).append(f"{pid}: {cmd[:120]}")
    return found


def assert_nothing_left(c: NetnsCluster, marker: str, within: float = 0.0) -> None:
    deadline = time.monotonic() + within
    while (left := leftovers(c, marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"still running: {left}"


# -- jobs that work --------------------------------------------------------------------------

def test_a_remote_rank_s_progress_bar_comes_as_it_is_drawn(cluster3, tmp_path):
    """Issue 31 item 5 over ssh: a partial line (\r progress) reaches the launcher before the
    rank ends, with its prefix redrawn; rank 1 on h1 waits until the launcher stops it."""
    import select
    script = write(tmp_path, "progress.py", """
        import os, sys, time
        if os.environ["MLX_RANK"] == "1":
            sys.stderr.write("\\rstep 1/2"); sys.stderr.flush()
            sys.stderr.write("\\rstep 2/2"); sys.stderr.flush()
        time.sleep(60)
        """)
    proc = start(cluster3, "--hosts", "h0,h1", script)
    got, deadline = b"", time.monotonic() + 30
    try:
        while b"2/2" not in got and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], deadline - time.monotonic())[0]:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                got += chunk
        assert proc.poll() is None and got == b"\r[1] step 1/2\r[1] step 2/2", got
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert_nothing_left(cluster3, script, within=10)


def test_three_hosts_run_every_collective(cluster3, tmp_path):
    script = write(tmp_path, "collectives.py", COLLECTIVES)
    p = run(cluster3, "--hosts", "h0,h1,h2", "--env", "GREETING=hi", "--cwd", str(tmp_path),
            script, RINGCOMM_TIMEOUT="30")
    assert p.returncode == 0, p.stdout + p.stderr
    got = records(p.stdout)
    assert sorted(got) == [0, 1, 2], p.stdout + p.stderr
    for r, rec in got.items():
        assert rec["host"] == f"h{r}" and rec["size"] == 3
        assert all(rec["ok"].values()), rec["ok"]
        assert rec["hostfile"] == got[0]["hostfile"]
        assert [a.rsplit(":", 1)[0] for a, in rec["hostfile"]] == IPS   # the hosts' own IPs
        assert rec["cwd"] == str(tmp_path) and rec["greeting"] == "hi"
        assert rec["token"] and rec["timeout"] == "30"    # a fresh token; settings forwarded
    assert len({rec["job"] for rec in got.values()}) == 1


def test_two_ranks_per_host_with_two_connections_per_ip(cluster3, tmp_path):
    script = write(tmp_path, "collectives.py", COLLECTIVES)
    p = run(cluster3, "--hosts", ",".join(IPS), "-n", "2", "--connections-per-ip", "2", script)
    assert p.returncode == 0, p.stdout + p.stderr
    got = records(p.stdout)
    assert sorted(got) == list(range(6)), p.stdout + p.stderr
    for r, rec in got.items():
        assert rec["host"] == f"h{r // 2}" and rec["size"] == 6
        assert all(rec["ok"].values()), rec["ok"]
    ring = got[0]["hostfile"]
    assert [len(addrs) for addrs in ring] == [2] * 6
    assert [{a.rsplit(":", 1)[0] for a in addrs} for addrs in ring] == [{IPS[r // 2]}
                                                                         for r in range(6)]
    assert len({a for addrs in ring for a in addrs}) == 12          # every port distinct


def test_hostfile_object_with_backend_envs_and_an_ssh_alias(cluster3, tmp_path):
    # mlx.launch's object format; h2 gives no "ips": its ssh alias resolves through ssh -G
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({
        "backend": "ring", "envs": ["GREETING=from-hostfile"],
        "hosts": [{"ssh": "h0", "ips": [IPS[0]]}, {"ssh": "h1", "ips": [IPS[1]], "rdma": []},
                  {"ssh": "h2"}]}))
    script = write(tmp_path, "collectives.py", COLLECTIVES)
    p = run(cluster3, "--hostfile", str(hostfile), "-p", "23450", script)
    assert p.returncode == 0, p.stdout + p.stderr
    got = records(p.stdout)
    assert [got[r]["host"] for r in range(3)] == ["h0", "h1", "h2"]
    assert all(rec["greeting"] == "from-hostfile" and all(rec["ok"].values())
               for rec in got.values())
    assert got[0]["hostfile"] == [[f"{IPS[r]}:{23450 + r}"] for r in range(3)]   # -p


def test_rdma_hostfile_over_ssh_on_the_verbs_emulation(cluster3, tmp_path):
    # JACCL's hostfile: a device per peer, null for itself; the coordinator is rank 0's IP.
    # The emulation's queue pairs are Unix sockets in the shared /tmp (not the bridge): this
    # proves the launcher's RDMA set-up over ssh, not RDMA between machines.
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"backend": "jaccl", "hosts": [
        {"ssh": f"h{i}", "ips": [IPS[i]], "rdma": [None if j == i else "emulated0"
                                                   for j in range(3)]} for i in range(3)]}))
    script = write(tmp_path, "rdma.py", """
        import json, os, socket
        import numpy as np, ringcomm
        g = ringcomm.init(strict=True)
        total = ringcomm.all_sum(np.full(1000, g.rank() + 1, np.int64))
        print(json.dumps({"rank": g.rank(), "host": socket.gethostname(),
                          "ok": {"all_sum": bool(np.all(total == 6))},
                          "coordinator": os.environ["MLX_JACCL_COORDINATOR"],
                          "devices": json.load(open(os.environ["MLX_IBV_DEVICES"]))}))
        """)
    p = run(cluster3, "--hostfile", str(hostfile), "--verbs", "emulated", script)
    assert p.returncode == 0, p.stdout + p.stderr
    got = records(p.stdout)
    assert [got[r]["host"] for r in range(3)] == ["h0", "h1", "h2"]
    assert all(rec["ok"]["all_sum"] for rec in got.values())
    assert got[1]["coordinator"] == got[0]["coordinator"]
    assert got[0]["coordinator"].startswith(IPS[0] + ":")
    assert got[0]["devices"][0] == [None, "emulated0", "emulated0"]


# -- stopping every rank on every host -------------------------------------------------------

def test_a_failing_rank_stops_every_rank_on_every_host(cluster3, tmp_path):
    script = write(tmp_path, "failing.py", WAITER)
    proc = start(cluster3, "--hosts", "h0,h1,h2", "--env", "FAIL=1", script)
    ready = wait_ready(proc, 3)
    failed = time.monotonic() + 0.5         # rank 1 exits half a second after its ready line
    out, err = proc.communicate(timeout=60)
    done = time.monotonic()
    assert proc.returncode == 3, err
    assert "rank 1 failed first (exit code 3) on host h1 (10.77.0.11)" in err, err
    assert_nothing_left(cluster3, script)
    assert all(len(token) == 32 for _, token in ready.values())
    print(f"\nrank 1 exited 3: launcher exit {done - failed:.2f} s later")


def test_a_killed_remote_rank_stops_the_job_fast(cluster3, tmp_path):
    script = write(tmp_path, "loop.py", LOOP)
    proc = start(cluster3, "--hosts", "h0,h1,h2", script)
    ready = wait_ready(proc, 3)
    time.sleep(0.5)
    killed = time.monotonic()
    os.kill(int(ready[1][0]), signal.SIGKILL)     # the rank's python on h1
    out, err = proc.communicate(timeout=60)
    seconds = time.monotonic() - killed
    assert proc.returncode != 0
    assert "failed first" in err and "rank 1 on host h1 (10.77.0.11): 137 (SIGKILL)" in err, err
    for r in (0, 2):     # each survivor's typed error names the dead rank
        line = next((line for line in out.splitlines() if line.startswith(f"[{r}] ERR")), out + err)
        assert "PeerLostError" in line and "rank 1" in line, line
    assert_nothing_left(cluster3, script)
    assert seconds < 10, seconds
    print(f"\nSIGKILL of rank 1 on h1 -> launcher exit {seconds:.2f} s")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                       (signal.SIGHUP, 129)], ids=["INT", "TERM", "HUP"])
def test_a_signal_to_the_launcher_stops_every_rank_on_every_host(cluster3, tmp_path, sig, code):
    # rank 2 ignores SIGTERM: after the grace period it is killed on its host
    script = write(tmp_path, "waiter.py", WAITER)
    proc = start(cluster3, "--hosts", "h0,h1,h2", "--env", "STUBBORN=2", script)
    ready = wait_ready(proc, 3)
    commands = cluster3.run("h1", ["ps", "-eo", "args"]).stdout   # every process here
    tokens = {token for _, token in ready.values()}
    assert len(tokens) == 1 and len(tokens.pop()) == 32    # one fresh token for the job...
    assert not any(token in commands for _, token in ready.values())   # ...on no command line
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    seconds = time.monotonic() - sent
    assert proc.returncode == code, err
    assert f"got {sig.name}" in err, err
    if sig == signal.SIGINT:      # forwarded, not just killed: every rank saw the interrupt,
        # and says so in one line (no traceback, nobody blamed)
        assert all(f"[{r}] interrupted (Ctrl-C at ringcomm-launch)" in err for r in range(3)), err
        assert "Traceback" not in err and "failed first" not in err, err
    if sig == signal.SIGTERM:     # rank 2 ignored it: SIGKILL after the 5 s grace period
        assert "rank 2 on host h2 (10.77.0.12): 137 (SIGKILL)" in err and seconds >= 5, err
    assert_nothing_left(cluster3, script)
    print(f"\n{sig.name} -> launcher exit {code} after {seconds:.2f} s")


def test_a_launcher_killed_outright_leaves_no_rank_on_any_host(cluster3, tmp_path):
    # SIGKILL cannot be caught: the end of each ssh session's stdin stops the ranks there
    script = write(tmp_path, "waiter.py", WAITER)
    proc = start(cluster3, "--hosts", "h0,h1,h2", script)
    wait_ready(proc, 3)
    killed = time.monotonic()
    proc.kill()
    proc.communicate(timeout=30)
    assert_nothing_left(cluster3, script, within=15)
    print(f"\nlauncher SIGKILLed: every rank gone after {time.monotonic() - killed:.2f} s")


# -- start-up errors -------------------------------------------------------------------------

def test_an_unreachable_host_fails_within_the_connect_timeout(cluster3, tmp_path):
    script = write(tmp_path, "collectives.py", COLLECTIVES)
    t0 = time.monotonic()
    p = run(cluster3, "--hosts", "h0,10.77.0.99", "--connect-timeout", "3", script)
    seconds = time.monotonic() - t0
    assert p.returncode == 2, p.stderr
    assert "host 10.77.0.99: cannot reach it over ssh" in p.stderr, p.stderr
    assert "no rank was started" in p.stderr and p.stdout == ""
    assert seconds < 3 + 8, seconds          # the connect time-out, plus starting Python here
    assert_nothing_left(cluster3, script)
    print(f"\nunreachable host: exit 2 after {seconds:.2f} s: {p.stderr.strip()}")


def test_an_ip_its_host_does_not_own_fails_at_once(cluster3, tmp_path):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([{"ssh": "h0", "ips": [IPS[0]]},
                                    {"ssh": "h1", "ips": [IPS[2]]}]))   # h2's IP on h1
    script = write(tmp_path, "collectives.py", COLLECTIVES)
    t0 = time.monotonic()
    p = run(cluster3, "--hostfile", str(hostfile), script)
    seconds = time.monotonic() - t0
    assert p.returncode == 2, p.stderr
    assert (f"host h1 ({IPS[2]}): does not own the IP {IPS[2]} (its addresses: "
            in p.stderr and IPS[1] in p.stderr), p.stderr
    assert p.stdout == "" and "host h0" not in p.stderr
    print(f"\nunowned IP: exit 2 after {seconds:.2f} s: {p.stderr.strip()}")


def test_start_up_errors_name_the_host_and_the_fix(cluster3, tmp_path):
    script = write(tmp_path, "collectives.py", COLLECTIVES)
    p = run(cluster3, "--hosts", "h1", "--python", "/opt/nowhere/python3", script)
    assert p.returncode == 2 and ("host h1 (10.77.0.11): cannot run the Python "
                                  "/opt/nowhere/python3 there") in p.stderr, p.stderr
    assert "give --python" in p.stderr
    p = run(cluster3, "--hosts", "h1,h2", "--cwd", "/opt/nowhere", script)
    assert p.returncode == 2 and "cannot change to the directory /opt/nowhere" in p.stderr
    assert "host h1" in p.stderr and "host h2" in p.stderr, p.stderr   # every host's problem
    p = run(cluster3, "--hosts", "h2", "--cwd", "/", "missing_job.py")
    assert p.returncode == 2 and "host h2 (10.77.0.12): no script missing_job.py in /" \
        in p.stderr, p.stderr
    # a key the hosts refuse: ssh without the cluster's wrapper, through --ssh-arg -F
    bad = tmp_path / "ssh_config"
    keygen = shutil.which("ssh-keygen")
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")],
                   check=True)
    bad.write_text(cluster3.ssh_config.read_text().replace(str(cluster3.key),
                                                           str(tmp_path / "key")))
    plain = dict(cluster3.env(), PATH=os.environ["PATH"])
    for config, ok in ((bad, False), (cluster3.ssh_config, True)):
        p = cluster3.run("h0", launcher(cluster3, "--hosts", "h1,h2", "--ssh-arg",
                                        f"-F {config}", script), env=plain, timeout=60)
        if ok:
            assert p.returncode == 0, p.stderr
            assert all(all(rec["ok"].values()) for rec in records(p.stdout).values()), p.stdout
        else:
            assert p.returncode == 2 and "host h1 (10.77.0.11): ssh refused the login" \
                in p.stderr and "ssh-copy-id h1" in p.stderr, p.stderr
    assert_nothing_left(cluster3, script)


# -- the network fails -----------------------------------------------------------------------

def test_a_link_taken_down_mid_collective_gives_typed_errors_naming_the_peer(cluster3, tmp_path):
    timeout = 5
    script = write(tmp_path, "loop.py", LOOP)
    proc = start(cluster3, "--hosts", "h0,h1,h2", script, RINGCOMM_TIMEOUT=str(timeout))
    try:
        wait_ready(proc, 3)
        time.sleep(0.5)
        down = time.monotonic()
        cluster3.link_down("h2")
        out, err = proc.communicate(timeout=90)
        ended = time.monotonic() - down
    finally:
        cluster3.link_up("h2")
    errors = {}
    for line in out.splitlines():
        m = re.match(r"\[(\d)\] ERR \d (\S+) (\w+) (.*)$", line)
        if m:
            errors[int(m.group(1))] = (float(m.group(2)) - down, m.group(3), m.group(4))
    assert {0, 1} <= set(errors), out + err
    for r in (0, 1):
        seconds, kind, msg = errors[r]
        assert kind in ("CommTimeoutError", "PeerLostError"), errors[r]
        assert "rank 2" in msg and IPS[2] in msg, errors[r]
        assert seconds < timeout + 3, errors[r]
    assert proc.returncode != 0
    # cut off from every peer, the rank on h2 ends at its own deadline, and its agent with it
    assert_nothing_left(cluster3, script, within=timeout + 10)
    print("\nlink down: " + "; ".join(f"rank {r}: {k} after {s:.2f} s" for r, (s, k, _)
                                      in sorted(errors.items())) + f"; launcher after {ended:.1f} s")
    print("\n".join(f"rank {r}: {m}" for r, (_, _, m) in sorted(errors.items())))
    print("\n".join(line for line in err.splitlines() if line.startswith("ringcomm-launch")))


# -- other launchers -------------------------------------------------------------------------

# The line goes out in one write: unbuffered (PYTHONUNBUFFERED), print writes the text and its
# newline apart, and mpirun forwards the ranks' writes as they come ("...TrueRANK 1 ...").
INIT_ONLY = """
import os, socket, sys
import numpy as np, ringcomm
g = ringcomm.init(strict=True)
total = ringcomm.all_sum(np.full(1000, g.rank() + 1, np.int64))
ok = bool(np.all(total == g.size() * (g.size() + 1) // 2))
sys.stdout.write(f"RANK {g.rank()} {g.size()} {socket.gethostname()} {ok}\\n")
sys.stdout.flush()
"""


def rows(text: str) -> list[list[str]]:
    return sorted(line.split()[1:] for line in text.splitlines() if line.startswith("RANK"))


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun (apt-get install "
                    "openmpi-bin)")
def test_mpirun_over_ssh_with_plain_init(cluster3, tmp_path):
    script = write(tmp_path, "init_only.py", INIT_ONLY)
    port = random.randrange(20000, 30000)
    argv = cluster3.mpirun_argv(extra=["-x", "PYTHONUNBUFFERED=1", "-x", "RINGCOMM_TIMEOUT=30",
                                       "-x", f"RINGCOMM_RENDEZVOUS={IPS[0]}:{port}"])
    p = cluster3.run("h0", [*argv, cluster3.python, script], timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    assert rows(p.stdout) == [[str(r), "3", f"h{r}", "True"] for r in range(3)], p.stdout


def test_torchrun_and_slurm_variables_set_by_hand(cluster3, tmp_path):
    script = write(tmp_path, "init_only.py", INIT_ONLY)
    port = random.randrange(20000, 30000)
    job = random.randrange(1, 10**6)
    for name, per_rank in (
            ("torchrun", lambda r: dict(RANK=str(r), WORLD_SIZE="3", MASTER_ADDR=IPS[0],
                                        MASTER_PORT=str(port))),
            ("slurm", lambda r: dict(SLURM_PROCID=str(r), SLURM_NTASKS="3",
                                     SLURM_STEP_NODELIST="h[0-2]", SLURM_JOB_ID=str(job),
                                     SLURM_STEP_ID="0"))):
        procs = [cluster3.popen(f"h{r}", [cluster3.python, script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=cluster3.env(RINGCOMM_TIMEOUT="30", **per_rank(r)))
                 for r in (2, 0, 1)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), (name, outs)
        assert rows("".join(o for o, _ in outs)) == [[str(r), "3", f"h{r}", "True"]
                                                     for r in range(3)], (name, outs)
