"""A test cluster on one machine: N network namespaces joined by a bridge, an sshd in each.

The namespaces, the bridge, the addresses (``10.77.0.10``, ... in ``10.77.0.0/24``), the
optional ``tc tbf`` rate limit (``rate_mbit``) and their cleanup are ``ringcomm.bench.netns``
(``NetnsHosts``: the links benchmark builds the same hosts without sshd); this module adds
the sshds, ssh and mpirun on top.  The machine's own interfaces are never touched.

Every host runs a real OpenSSH server (``/usr/sbin/sshd -D``) with a config, a host key and a
client key made for this cluster in a temporary directory, ``PermitRootLogin
prohibit-password``, ``UsePAM no`` and ``StrictModes no``.  ``cluster.ssh_config`` is an
ssh client config (``ssh -F``) that maps every alias ``hI`` and every cluster IP to that host,
with the test key, ``BatchMode yes``, ``StrictHostKeyChecking no`` and ``UserKnownHostsFile
/dev/null``; ``cluster.ssh_wrapper`` is an executable ``ssh`` that adds ``-F ssh_config``,
and ``cluster.bin_dir`` (the folder it is in) is put first on PATH of every command that
``run``/``popen`` start in a host, so a launcher that calls plain ``ssh h1 ...`` there reaches
the cluster's h1 with the right key.

The layout a multi-host test uses: the launcher runs inside ``h0`` (``cluster.run("h0", ...)``
or ``cluster.popen("h0", ...)``) and reaches ``h0 .. h{N-1}`` over ssh across the bridge (h0
runs an sshd too, so it can ssh to itself).  The pytest process itself stays in the machine's
namespace, which has no route to the cluster.

Inside each host:

- **names**: ``ip netns exec`` bind-mounts ``/etc/netns/<namespace>/hosts`` and
  ``resolv.conf`` over ``/etc/hosts`` and ``/etc/resolv.conf``; the fixture writes them, so
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
sshd needs its privilege-separation directory ``/run/sshd``; it is created when missing and
left in place (an empty directory, what the system's sshd would create at boot).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ringcomm.bench.netns import (ETC_NETNS, Iproute, NetnsHosts, NetnsUnavailable,
                                  cleanup_stale, die_with_parent, pid_alive, which)

REPO = Path(__file__).resolve().parent.parent
PREFIX = "rcnt"
TOOLS = {"ip": "ip", "tc": "tc", "sshd": "/usr/sbin/sshd", "ssh": "ssh",
         "ssh-keygen": "ssh-keygen", "unshare": "unshare", "hostname": "hostname"}
SSHD_PRIVSEP = Path("/run/sshd")

__all__ = ["ETC_NETNS", "NetnsCluster", "NetnsUnavailable", "cleanup_stale", "cluster_fixture",
           "iproute", "pid_alive", "start_or_skip", "unavailable_reason"]


def _which(name: str) -> str | None:
    return which(TOOLS.get(name, name))


def unavailable_reason(need: Sequence[str] = tuple(TOOLS)) -> str | None:
    """Why a cluster cannot be built here (not root, a tool missing), or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "the network-namespace cluster needs root (ip netns, veth, sshd)"
    missing = [n for n in need if _which(n) is None]
    if missing:
        return ("missing " + ", ".join(missing) + " (apt-get install openssh-server "
                "openssh-client iproute2)")
    return None


def iproute() -> Iproute:
    """This machine's ip (and tc, which a cluster without rates does not need)."""
    return Iproute(_which("ip") or "ip", _which("tc") or "tc")


class NetnsCluster(NetnsHosts):
    """``n_hosts`` network namespaces on a bridge, an sshd in each; see the module docstring.

    Attributes after ``start()`` (or entering the ``with``): those of ``NetnsHosts``
    (``hosts``, ``ips``, ``namespaces``, ``bridge_ns``, ``subnet``, ``ifname``, ``tmp``,
    ``setup_s``, ``teardown_s``), and ``ssh_config``, ``ssh_wrapper``, ``bin_dir``, ``key``
    (the client's private key), ``python`` (the venv's interpreter, absolute), ``repo`` (this
    checkout).
    """

    def __init__(self, n_hosts: int = 3, rate_mbit: float | None = None, *,
                 prefix: str = PREFIX, subnet: str = "10.77.0", first_host: int = 10,
                 check_ssh: bool = True, ready_timeout: float = 15.0):
        super().__init__(n_hosts, rate_mbit, prefix=prefix, subnet=subnet,
                         first_host=first_host)
        self.check_ssh, self.ready_timeout = check_ssh, ready_timeout
        self.python = sys.executable
        self.repo = str(REPO)
        self._sshd: dict[str, subprocess.Popen] = {}

    def unavailable(self) -> str | None:
        return unavailable_reason()

    def start(self) -> NetnsCluster:
        self.iproute = iproute()  # (start() reports a missing ip before using it)
        return super().start()

    def _build(self) -> None:
        super()._build()
        self._keys_and_configs()
        SSHD_PRIVSEP.mkdir(mode=0o755, exist_ok=True)
        for h in self.hosts:
            self._start_sshd(h)
        self._wait_sshd()
        if self.check_ssh:
            self._check_ssh()

    def _keys_and_configs(self) -> None:
        t = self.tmp
        keygen = _which("ssh-keygen")
        for name in ("host_ed25519", "id_ed25519"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C",
                            f"{self.tag}-{name}", "-f", str(t / name)], check=True, timeout=30,
                           capture_output=True)
        self.key = t / "id_ed25519"
        shutil.copy(t / "id_ed25519.pub", t / "authorized_keys")
        for h in self.hosts:
            (t / f"sshd_{h}.conf").write_text(f"""\
ListenAddress 0.0.0.0:22
HostKey {t}/host_ed25519
PidFile {t}/sshd_{h}.pid
AuthorizedKeysFile {t}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
MaxStartups 200
MaxSessions 200
LogLevel ERROR
Subsystem sftp internal-sftp
""")
        lines = []
        for h in self.hosts:
            lines += [f"Host {h} {self.ips[h]}", f"  HostName {self.ips[h]}"]
        lines += ["Host *", "  User root", f"  IdentityFile {self.key}",
                  "  IdentitiesOnly yes", "  BatchMode yes", "  StrictHostKeyChecking no",
                  "  UserKnownHostsFile /dev/null", "  GlobalKnownHostsFile /dev/null",
                  "  ConnectTimeout 5", "  LogLevel ERROR", ""]
        self.ssh_config = t / "ssh_config"
        self.ssh_config.write_text("\n".join(lines))
        self.bin_dir = t / "bin"
        self.bin_dir.mkdir()
        self.ssh_wrapper = self.bin_dir / "ssh"
        self.ssh_wrapper.write_text(
            f'#!/bin/sh\nexec {shlex.quote(_which("ssh"))} -F {shlex.quote(str(self.ssh_config))}'
            ' "$@"\n')
        self.ssh_wrapper.chmod(0o755)

    def _start_sshd(self, host: str) -> None:
        log = self.tmp / f"sshd_{host}.log"
        argv = self.wrap(host, [_which("sshd"), "-D", "-f", str(self.tmp / f"sshd_{host}.conf"),
                                "-E", str(log)])
        self._sshd[host] = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            start_new_session=True, preexec_fn=die_with_parent)

    def _wait_sshd(self) -> None:
        # sshd -D writes its PidFile once its listening sockets are bound
        deadline = time.monotonic() + self.ready_timeout
        waiting = set(self.hosts)
        while waiting:
            for h in sorted(waiting):
                proc = self._sshd[h]
                if proc.poll() is not None:
                    raise RuntimeError(f"sshd in {h} exited ({proc.returncode}): "
                                       f"{self._sshd_error(h)}")
                if (self.tmp / f"sshd_{h}.pid").exists():
                    waiting.discard(h)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"sshd not ready after {self.ready_timeout} s on "
                                   f"{sorted(waiting)}: {self._sshd_error(min(waiting))}")
            if waiting:
                time.sleep(0.01)

    def _sshd_error(self, host: str) -> str:
        log = self.tmp / f"sshd_{host}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        proc = self._sshd.get(host)
        if proc is not None and proc.poll() is not None and proc.stderr:
            text += proc.stderr.read().decode(errors="replace")
        return text.strip() or "(no output)"

    def _check_ssh(self) -> None:
        frm = self.hosts[0]
        procs = {h: self.popen(frm, self.ssh_argv(h, "exit 0"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for h in self.hosts}
        bad = []
        for h, p in procs.items():
            try:
                _, err = p.communicate(timeout=self.ready_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            if p.returncode != 0:
                bad.append(f"{h} ({p.returncode}): {err.strip()}; sshd: {self._sshd_error(h)}")
        if bad:
            raise RuntimeError(f"ssh from {frm} failed: " + "; ".join(bad))

    def close(self) -> None:
        """Stop the sshds and every process in the cluster's namespaces, delete them and the
        temp dir.  Idempotent; runs everything it can and raises at the end if something was
        left."""
        if self._closed:
            return
        for proc in self._sshd.values():
            if proc.poll() is None:
                proc.terminate()
        try:
            super().close()
        finally:
            for proc in self._sshd.values():
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stderr:
                    proc.stderr.close()

    # -- running things ---------------------------------------------------------------------

    def wrap(self, host: str, cmd: str | Sequence[str],
             env: dict[str, str] | None = None) -> list[str]:
        """argv that runs ``cmd`` (an argv list, or a string for ``sh -c``) in ``host``'s
        network namespace, with ``host`` as its host name and the cluster's /etc/hosts."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return super().wrap(host, [_which("unshare"), "--uts", "sh", "-c",
                                   'hostname "$0" && exec "$@"', host, *argv], env)

    def env(self, base: dict | None = None, **extra: str) -> dict[str, str]:
        """The environment of commands started in a host: ``base`` (default os.environ)
        with ``bin_dir`` first on PATH (plain ``ssh`` uses the cluster's config) and
        PYTHONUNBUFFERED=1, plus ``extra``."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", os.defpath)])
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(extra)
        return env

    def popen(self, host: str, cmd: str | Sequence[str], *, env: dict | None = None,
              cwd: str | os.PathLike | None = None, **kwargs) -> subprocess.Popen:
        """Start ``cmd`` in ``host``; keyword arguments go to subprocess.Popen."""
        return super().popen(host, cmd, env=self.env() if env is None else env,
                             cwd=self.repo if cwd is None else cwd, **kwargs)

    def run(self, host: str, cmd: str | Sequence[str], *, timeout: float = 60, check: bool = False,
            input: str | None = None, env: dict | None = None,
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` in ``host`` to completion; stdout and stderr captured as text.
        ``check=True`` raises with both outputs in the message."""
        env = self.env() if env is None else env
        p = subprocess.run(self.wrap(host, cmd, env), capture_output=True, text=True,
                           input=input, timeout=timeout, env=self.iproute.env(env),
                           cwd=self.repo if cwd is None else cwd)
        if check and p.returncode != 0:
            raise AssertionError(f"{host}: {cmd!r} exited {p.returncode}\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def ssh_argv(self, host: str, command: str | Sequence[str], *,
                 options: Sequence[str] = ()) -> list[str]:
        """``ssh -F ssh_config [options] host command`` (command: a string for the remote
        shell, or a list that is shell-quoted)."""
        if not isinstance(command, str):
            command = shlex.join(command)
        return [_which("ssh"), "-F", str(self.ssh_config), *options, host, command]

    def ssh(self, host: str, command: str | Sequence[str], *, frm: str | None = None,
            options: Sequence[str] = (), **kwargs) -> subprocess.CompletedProcess:
        """Run ``command`` on ``host`` over ssh from ``frm`` (default h0); as ``run``."""
        return self.run(frm or self.hosts[0], self.ssh_argv(host, command, options=options),
                        **kwargs)

    def remote_python_command(self, *args: str, cwd: str | None = None) -> str:
        """A remote shell command that runs the venv's python in the checkout
        (``cd REPO && exec PYTHON args``) - what a command over ssh must do here."""
        return (f"cd {shlex.quote(cwd or self.repo)} && exec "
                + shlex.join([self.python, *args]))

    def mpirun_argv(self, hosts: Sequence[str] | None = None, per_host: int = 1, *,
                    by_name: bool = False, extra: Sequence[str] = ()) -> list[str]:
        """The mpirun command line (before the program) that runs ``per_host`` ranks on each
        of ``hosts`` (default all) when started in h0; see the module docstring."""
        hosts = list(self.hosts if hosts is None else hosts)
        spec = ",".join(f"{h if by_name else self.ips[h]}:{per_host}" for h in hosts)
        return [shutil.which("mpirun") or "mpirun", "--allow-run-as-root",
                "-np", str(len(hosts) * per_host), "--host", spec,
                "--mca", "plm_rsh_agent", str(self.ssh_wrapper),
                "--mca", "plm_rsh_no_tree_spawn", "1",
                "--mca", "btl", "self,tcp",
                "--mca", "btl_tcp_if_include", self.subnet,
                "--mca", "oob_tcp_if_include", self.subnet,
                "--mca", "pml", "ob1", *extra]

    # -- faults -----------------------------------------------------------------------------

    def link_down(self, host: str) -> None:
        """Take ``host``'s only interface down (inside its namespace): it drops off the
        bridge, so peers' packets to it are lost (connects time out, no RST)."""
        self.iproute.run([self.iproute.ip, "-n", self.check_host(host), "link", "set", "dev",
                          self.ifname, "down"])

    def link_up(self, host: str) -> None:
        """Bring ``host``'s interface back (its address, route and rate limit come back)."""
        self.iproute.run([self.iproute.ip, "-n", self.check_host(host), "link", "set", "dev",
                          self.ifname, "up"])


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
