"""Hosts on one machine that a multi-host job reaches over ssh: network namespaces on a bridge
(``ringcomm.netns``) with a real OpenSSH server in each.

Every host runs ``/usr/sbin/sshd -D`` with a config, a host key and a client key made for
this cluster in its directory (``tmp``), ``PermitRootLogin prohibit-password``, ``UsePAM no``
and ``StrictModes no``, in a UTS namespace of its own named after the host (``hostname`` says
``h1`` on h1, in every ssh session there).  ``ssh_config`` is an ssh client config (``ssh
-F``) that maps every alias ``hI`` and every cluster IP to that host, with the cluster's key,
``BatchMode yes``, ``StrictHostKeyChecking no`` and ``UserKnownHostsFile /dev/null``;
``ssh_wrapper`` is an executable ``ssh`` that adds ``-F ssh_config``, and ``bin_dir`` (its
folder) is first on PATH of every command that ``run``/``popen`` start in a host.

The machine's own namespace has no route to the hosts: a launcher runs in one of them
(``h0``) and reaches every host, h0 too, over ssh.  The filesystem is the machine's: a
command over ssh sees the same files and Pythons, in root's login environment (nothing of
the caller's environment crosses ssh), so it names its Python by absolute path.

Used by the multi-host tests (``tests/netns.py``: fixtures, and what they found about mpirun)
and by ``python -m ringcomm.cluster`` (``keep=True``: hosts a user runs jobs on, torn down
later with ``ringcomm.netns.remove``).  sshd needs its privilege-separation directory
``/run/sshd``: it is created when missing and left in place.
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

from .netns import Iproute, NetnsHosts, die_with_parent, which

PREFIX = "rcnt"
TOOLS = {"ip": "ip", "tc": "tc", "sshd": "/usr/sbin/sshd", "ssh": "ssh",
         "ssh-keygen": "ssh-keygen", "unshare": "unshare", "hostname": "hostname"}
SSHD_PRIVSEP = Path("/run/sshd")


def tool(name: str) -> str | None:
    """Where ``name`` (one of TOOLS) is here, or None."""
    return which(TOOLS.get(name, name))


def unavailable_reason(need: Sequence[str] = tuple(TOOLS)) -> str | None:
    """Why a cluster cannot be built here (not root, a tool missing), or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "the network-namespace cluster needs root (ip netns, veth, sshd)"
    missing = [n for n in need if tool(n) is None]
    if missing:
        return ("missing " + ", ".join(missing) + " (apt-get install openssh-server "
                "openssh-client iproute2)")
    return None


def iproute() -> Iproute:
    """This machine's ip (and tc, which a cluster without rates does not need)."""
    return Iproute(tool("ip") or "ip", tool("tc") or "tc")



class NetnsCluster(NetnsHosts):
    """``n_hosts`` network namespaces on a bridge, an sshd in each; see the module docstring.

    Attributes after ``start()`` (or entering the ``with``): those of ``NetnsHosts``
    (``hosts``, ``ips``, ``namespaces``, ``bridge_ns``, ``subnet``, ``ifname``, ``tmp``,
    ``setup_s``, ``teardown_s``), and ``ssh_config``, ``ssh_wrapper``, ``bin_dir``, ``key``
    (the client's private key), ``python`` (this interpreter, absolute), ``repo`` (where
    commands run by default).  ``keep=True``: sshds that outlive this process (with
    ``tag``/``state_dir`` and ``detach()``, as ``python -m ringcomm.cluster up`` builds).
    """

    def __init__(self, n_hosts: int = 3, rate_mbit: float | None = None, *,
                 prefix: str = PREFIX, subnet: str = "10.77.0", first_host: int = 10,
                 check_ssh: bool = True, ready_timeout: float = 15.0,
                 repo: str | os.PathLike | None = None, keep: bool = False,
                 tag: str | None = None, state_dir: str | os.PathLike | None = None):
        super().__init__(n_hosts, rate_mbit, prefix=prefix, subnet=subnet,
                         first_host=first_host, tag=tag, state_dir=state_dir)
        self.check_ssh, self.ready_timeout, self.keep = check_ssh, ready_timeout, keep
        self.python = sys.executable
        self.repo = str(repo or os.getcwd())
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
        keygen = tool("ssh-keygen")
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
            f'#!/bin/sh\nexec {shlex.quote(tool("ssh"))} -F {shlex.quote(str(self.ssh_config))}'
            ' "$@"\n')
        self.ssh_wrapper.chmod(0o755)

    def _start_sshd(self, host: str) -> None:
        log = self.tmp / f"sshd_{host}.log"
        argv = self.wrap(host, [tool("sshd"), "-D", "-f", str(self.tmp / f"sshd_{host}.conf"),
                                "-E", str(log)])
        # kept: no pipe to a reader that goes away, no death with this process
        self._sshd[host] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=log.open("ab") if self.keep else subprocess.PIPE, start_new_session=True,
            preexec_fn=None if self.keep else die_with_parent)

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
        if proc is not None and proc.poll() is not None and proc.stderr and not self.keep:
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
        return super().wrap(host, [tool("unshare"), "--uts", "sh", "-c",
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
        return [tool("ssh"), "-F", str(self.ssh_config), *options, host, command]

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
