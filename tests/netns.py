"""The multi-host test cluster: N network namespaces on a bridge, an sshd in each, as pytest
fixtures.

The hosts are ``ringcomm.netns_ssh.NetnsCluster`` (on ``ringcomm.netns``, the one builder that
the links benchmark and ``python -m ringcomm.cluster`` use too): ``h0``, ``h1``, ... at
``10.77.0.10``, ... in ``10.77.0.0/24``, an sshd in each, ``cluster.ssh_config`` and an ``ssh``
wrapper first on PATH of every command started in a host.  Here, commands run in this
checkout by default (``cluster.repo``).

The layout a multi-host test uses: the launcher runs inside ``h0`` (``cluster.run("h0", ...)``
or ``cluster.popen("h0", ...)``) and reaches ``h0 .. h{N-1}`` over ssh across the bridge (h0
runs an sshd too, so it can ssh to itself).  The pytest process itself stays in the machine's
namespace, which has no route to the cluster.

Inside each host:

- **names**: ``ip netns exec`` bind-mounts ``/etc/netns/<namespace>/hosts`` and
  ``resolv.conf`` over ``/etc/hosts`` and ``/etc/resolv.conf``; the builder writes them, so
  ``h0``.. resolve (``getaddrinfo``) to the cluster IPs in every command and ssh session in the
  cluster, and DNS goes nowhere.  Each command also gets its own UTS namespace with the
  host's name, so ``hostname`` says ``h1`` on h1.
- **the filesystem is the machine's** (namespaces split only the network): a remote command
  sees this checkout and its venv.  Over ssh, the environment is root's login one: HOME=/root,
  the shell is bash, which sources /root/.bashrc (Debian's bash does for ssh commands), and
  PATH is sshd's default plus whatever .bashrc adds (here pyenv's shims come first, so a bare
  ``python`` over ssh is NOT the venv's).  A remote command must therefore name the venv's
  interpreter by absolute path (``cluster.python``, i.e. ``sys.executable``) and ``cd`` to the
  checkout (``cluster.repo``) or set PYTHONPATH; ``remote_python_command`` builds that.
  Nothing of the test's environment crosses ssh (no SendEnv/AcceptEnv).

Open MPI (Debian 12's openmpi-bin, 4.1.4), as ``cluster.mpirun_argv(...)`` builds it, run in
h0, one rank per host::

    mpirun --allow-run-as-root -np 3 --host 10.77.0.10:1,10.77.0.11:1,10.77.0.12:1 \
        --mca plm_rsh_agent <tmp>/bin/ssh --mca plm_rsh_no_tree_spawn 1 \
        --mca btl self,tcp --mca btl_tcp_if_include 10.77.0.0/24 \
        --mca oob_tcp_if_include 10.77.0.0/24 --mca pml ob1 \
        <absolute venv python> script.py

- ``--allow-run-as-root``: the tests run as root (it also reaches the remote orteds).
- ``plm_rsh_agent`` is the ssh wrapper (an absolute path: the orted on a remote host has no
  wrapper on its PATH); ``-mca plm_rsh_args "-F <ssh_config>"`` works as well.
  ``plm_rsh_no_tree_spawn 1`` makes mpirun in h0 ssh to every host itself, as a launcher
  would, instead of orteds sshing onwards.
- ``btl self,tcp`` + ``btl_tcp_if_include``/``oob_tcp_if_include`` the cluster subnet keep
  MPI's own traffic on the bridge (no shared memory between "hosts", no loopback, no other
  interface); ``pml ob1`` stops the UCX component from probing devices.
- The first host in ``--host`` that is one of h0's own IPs runs its rank locally (no ssh).
  Host names (``--host h0:1,h1:1,h2:1``) work too, through the per-namespace /etc/hosts.
- Ranks get ``OMPI_COMM_WORLD_RANK``/``OMPI_COMM_WORLD_SIZE``/``OMPI_COMM_WORLD_LOCAL_RANK``
  and run in mpirun's working directory on every host (``run`` starts it in the checkout).
  The rank on h0 inherits mpirun's environment (the test's: venv on PATH, PYTHONUNBUFFERED);
  a remote rank's is the orted's, i.e. the ssh session's (see above: no venv, no
  PYTHONUNBUFFERED), plus what ``-x NAME`` / ``-x NAME=value`` exports, e.g.
  ``-x PYTHONUNBUFFERED=1 -x RINGCOMM_RENDEZVOUS=10.77.0.10:29500``.  So name the program as
  ``cluster.python script.py`` (absolute) and export every variable the ranks need.
- Checked here (tests/test_netns_cluster.py): 3 ranks land on h0, h1, h2, by IP and by name,
  and a real ``MPI_Init``/``MPI_Allreduce`` (libmpi through ctypes) completes across the
  hosts with these settings; about 1 s of mpirun overhead for 3 hosts.

Usage::

    from tests.netns import cluster_fixture
    cluster3 = cluster_fixture(3)                  # a module-scoped fixture named cluster3

    def test_something(cluster3):
        out = cluster3.ssh("h2", "hostname -I").stdout   # ssh from h0 to h2
        cluster3.run("h0", [cluster3.python, "-c", "print(1)"], check=True)
        cluster3.link_down("h2"); ...; cluster3.link_up("h2")

or directly: ``with NetnsCluster(3, rate_mbit=100) as c: ...``.  Set-up raises
``NetnsUnavailable`` (the fixture turns it into a skip naming the reason) when not root, when a
tool (ip, tc, sshd, ssh, ssh-keygen, unshare, hostname) is missing, or when a namespace cannot
be made; any other failure is an error, after tearing down what was built.  Names carry the
pid (``rcnt<pid>x<n>-h0``), so parallel runs never collide; the sshds die with the process
that started them (PR_SET_PDEATHSIG), and namespaces (with any process still in them),
/etc/netns entries and temporary directories left by a run whose pid is gone are removed at
the next start (``cleanup_stale()``).  Teardown (``close()``, also at exit and when set-up
fails half-way) SIGTERMs, then SIGKILLs, every process in the cluster's namespaces - sshd,
ssh sessions and whatever a test started there - then deletes the namespaces (which removes
the veths and the bridge) and the temporary directory.
Cost here (2 cores, loaded): namespaces, veths, addresses, tc and 3 sshds ready in about
0.1 s; set-up then checks ssh from h0 to every host in parallel (``check_ssh``), about 0.7 s,
mostly root's .bashrc (every ssh command pays it, ~0.3 s here); teardown under 0.1 s.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from ringcomm import netns_ssh
from ringcomm.netns import ETC_NETNS, NetnsUnavailable, cleanup_stale, pid_alive
from ringcomm.netns_ssh import TOOLS, iproute, unavailable_reason

REPO = Path(__file__).resolve().parent.parent

__all__ = ["ETC_NETNS", "NetnsCluster", "NetnsUnavailable", "TOOLS", "cleanup_stale",
           "cluster_fixture", "iproute", "pid_alive", "start_or_skip", "unavailable_reason"]


class NetnsCluster(netns_ssh.NetnsCluster):
    """``ringcomm.netns_ssh.NetnsCluster`` whose commands run in this checkout by default."""

    def __init__(self, n_hosts: int = 3, rate_mbit: float | None = None, **kwargs) -> None:
        kwargs.setdefault("repo", REPO)
        super().__init__(n_hosts, rate_mbit, **kwargs)


def start_or_skip(n_hosts: int = 3, **kwargs) -> NetnsCluster:
    """``NetnsCluster(n_hosts, **kwargs).start()``, or pytest.skip with the reason."""
    try:
        return NetnsCluster(n_hosts, **kwargs).start()
    except NetnsUnavailable as e:
        pytest.skip(f"netns cluster unavailable: {e}")


def cluster_fixture(n_hosts: int = 3, *, scope: str = "module", **kwargs):
    """A pytest fixture (assign it to a module-level name) yielding a started NetnsCluster
    of ``n_hosts`` hosts for ``scope``, skipping with the reason where none can be built."""
    @pytest.fixture(scope=scope)
    def netns_cluster():
        cluster = start_or_skip(n_hosts, **kwargs)
        try:
            yield cluster
        finally:
            cluster.close()
    return netns_cluster
