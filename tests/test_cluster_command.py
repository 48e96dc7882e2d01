"""Issue 31 item 13: ``python -m ringcomm.cluster up N`` builds hosts a user can run a
multi-host job on (real namespaces, sshds and ssh), prints the exact ``ringcomm-launch``
command, which runs as printed (examples/hosts.py then names every rank's host and IP), and
``down`` removes everything, also what is left when the cluster's folder is gone."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from ringcomm.netns import ETC_NETNS, pid_alive
from tests import netns
from tests.procs import ROOT, env

pytestmark = pytest.mark.timeout(180)


def cluster(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringcomm.cluster", *args], env=env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_up_run_the_printed_command_and_down():
    if reason := netns.unavailable_reason():
        pytest.skip(reason)
    name = f"rct{os.getpid() % 100000}"     # never a user's own cluster ("ringcomm")
    state = f"/run/{name}-cluster"
    start = time.monotonic()
    built = cluster("up", "2", "--name", name)
    try:
        assert built.returncode == 0, built.stderr
        up_s = time.monotonic() - start
        assert "h0  10.77.0.10" in built.stdout and "h1  10.77.0.11" in built.stdout
        command = next(line.strip() for line in built.stdout.splitlines()
                       if line.strip().startswith("ip netns exec"))
        argv = shlex.split(command)
        assert argv[-5:] == ["--hosts", "h0,h1", "--ssh-arg", f"-F {state}/ssh_config",
                             "examples/hosts.py"], command
        job = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT,
                             env=env())
        assert job.returncode == 0, job.stderr
        lines = sorted(job.stdout.splitlines())
        assert lines[0].startswith("[0] rank 0 of 2 on h0 (10.77.0.10): left h1 (10.77.0.11), "
                                   "right h1 (10.77.0.11); 64 MiB all_sum"), job.stdout
        assert lines[1].startswith("[1] rank 1 of 2 on h1 (10.77.0.11): left h0 (10.77.0.10)"), \
            job.stdout
        on_h1 = cluster("run", "--name", name, "h1", "--", "sh", "-c",
                        "hostname; ssh h0 hostname")
        assert on_h1.returncode == 0 and on_h1.stdout.split() == ["h1", "h0"], on_h1
        again = cluster("up", "2", "--name", name)
        assert again.returncode == 1 and "is up already" in again.stderr, again
        # a cluster whose folder is gone (leftovers): down still finds and removes it all
        sshds = [int(open(f"{state}/sshd_{h}.pid").read()) for h in ("h0", "h1")]
        shutil.rmtree(state)
    finally:
        gone = cluster("down", "--name", name)
    assert gone.returncode == 0 and f"removed 2 hosts ({name}-h0, {name}-h1)" in gone.stdout, gone
    assert not any(ns.startswith(f"{name}-") for ns in netns.iproute().namespaces())
    assert not (ETC_NETNS.exists() and any(d.name.startswith(f"{name}-")
                                           for d in ETC_NETNS.iterdir()))
    assert not os.path.exists(state)
    deadline = time.monotonic() + 5   # (init reaps them a moment later)
    while any(pid_alive(pid) for pid in sshds) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(pid) for pid in sshds), sshds
    assert cluster("down", "--name", name).stdout.startswith(f"no cluster named {name}")
    print(f"\ncluster up 2: {up_s:.2f} s; the printed command ran; down left nothing")


def test_refused_without_root_and_bad_arguments():
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the command as another user")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-m", "ringcomm.cluster", "up", "2"], env=env(),
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 2 and "needs root" in result.stderr, result
    assert cluster("up", "0").returncode == 2
    assert cluster("up", "2", "--name", "Bad-Name").returncode == 2
    assert cluster("up", "2", "--subnet", "10.77").returncode == 2
