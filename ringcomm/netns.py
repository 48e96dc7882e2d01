"""Hosts on one machine: network namespaces joined by a bridge, links optionally shaped.

Each host ``h0 .. h{N-1}`` is a network namespace with loopback up and one veth (``eth0``)
whose other end is a port of a Linux bridge that lives in a namespace of its own.  Nothing is
created in, or attached to, the machine's own network namespace: the addresses
(``10.77.0.10``, ``10.77.0.11``, ... by default) exist only inside, no namespace has a default
route.  With ``rate_mbit`` every link is shaped with ``tc tbf`` in both directions (the host's
``eth0`` and its bridge port), so a host sends and receives at most that rate, as behind a
switch.  ``ip netns exec`` bind-mounts ``/etc/netns/<namespace>/hosts`` over /etc/hosts:
``h0``.. resolve to their addresses in every command started in a host.

This is the one builder of such hosts: ``python -m ringcomm.bench.links`` measures on them,
``ringcomm.netns_ssh`` adds an sshd per host, for the multi-host tests (``tests/netns.py``) and
for ``python -m ringcomm.cluster up N`` (hosts that outlive the command, for a user's trial of
a multi-host job on one machine).  ``ip`` and ``tc`` come from PATH or from an unpacked
iproute2 (``Iproute.find(root)``: ``root/bin/ip``, ``root/sbin/tc`` and the libraries under
``root``); then LD_LIBRARY_PATH is set for ip and tc only, never for what runs in a host.

Names carry the pid (``<prefix><pid>x<n>-h0``), so runs never collide; what a run whose pid is
gone left (namespaces and the processes in them, /etc/netns entries, temporary directories)
is removed at the next start (``cleanup_stale``).  ``close()`` (also at exit and when set-up
fails half-way) SIGTERMs, then SIGKILLs, every process in the namespaces, then deletes them
(which removes the veths and the bridge), the /etc/netns entries and the temporary directory.
Hosts built with a fixed ``tag`` (``<tag>-h0``) and a ``state_dir`` are kept after
``detach()``: neither the exit of the process that built them nor another run's cleanup
touches them, and ``remove(tag)`` tears them down later.
"""
from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .iproute import Iproute, NetnsUnavailable, which

__all__ = ["ETC_NETNS", "Iproute", "NetnsHosts", "NetnsUnavailable", "cleanup_stale",
           "die_with_parent", "kill_netns", "pid_alive", "remove", "tbf_burst", "which"]

ETC_NETNS = Path("/etc/netns")

_counter = itertools.count()
_open: set[NetnsHosts] = set()
_lock = threading.Lock()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent() -> None:
    """In a child before exec: SIGTERM it when the thread that started it dies, so a run
    killed with SIGKILL leaves no process behind (its namespaces go at the next start)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def kill_netns(iproute: Iproute, names: Sequence[str], grace: float = 2.0) -> list[str]:
    """Kill every process in the namespaces ``names``, delete them; return the errors."""
    errors = []
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        pids = [p for ns in names for p in iproute.pids(ns) if p != os.getpid()]
        if not pids:
            break
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                errors.append(f"processes {pids} survived SIGKILL in {list(names)}")
                break
            sig, deadline = signal.SIGKILL, time.monotonic() + 3.0
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    for ns in names:
        p = subprocess.run([iproute.ip, "netns", "del", ns], capture_output=True, text=True,
                           env=iproute.env(), timeout=30)
        if p.returncode != 0 and ns in iproute.namespaces():
            errors.append(f"ip netns del {ns}: {p.stderr.strip()}")
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
    return errors


def cleanup_stale(prefix: str, iproute: Iproute | None = None) -> list[str]:
    """Remove namespaces, /etc/netns entries and temp dirs of runs (``prefix<pid>x<n>``)
    whose process is gone; return the namespace names removed."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)x\d+-")
    stale = lambda name: (m := pattern.match(name)) and not pid_alive(int(m.group(1)))
    if iproute is None:
        try:
            iproute = Iproute.find()
        except NetnsUnavailable:
            iproute = None
    names = [ns for ns in iproute.namespaces() if stale(ns)] if iproute else []
    if names:
        kill_netns(iproute, names)
    if ETC_NETNS.is_dir():
        for d in ETC_NETNS.iterdir():
            if stale(d.name):
                shutil.rmtree(d, ignore_errors=True)
        try:
            ETC_NETNS.rmdir()     # only when empty
        except OSError:
            pass
    for d in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        if d.is_dir() and stale(d.name):
            shutil.rmtree(d, ignore_errors=True)
    return names


def remove(tag: str, state_dir: str | os.PathLike | None = None,
           iproute: Iproute | None = None) -> list[str]:
    """Tear down hosts built with ``tag`` (and kept): every process in the namespaces
    ``<tag>-*``, the namespaces, their /etc/netns entries and ``state_dir``; the namespaces
    removed.  Raises RuntimeError naming what was left."""
    iproute = iproute or Iproute.find()
    names = [ns for ns in iproute.namespaces() if ns.startswith(f"{tag}-")]
    errors = kill_netns(iproute, names) if names else []
    if ETC_NETNS.is_dir():
        for d in ETC_NETNS.iterdir():
            if d.name.startswith(f"{tag}-"):
                shutil.rmtree(d, ignore_errors=True)
        try:
            ETC_NETNS.rmdir()     # only when empty
        except OSError:
            pass
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    if errors:
        raise RuntimeError("; ".join(errors))
    return names


def tbf_burst(rate_mbit: float) -> int:
    """Default bucket: 4 ms at the rate (what a 250 Hz timer needs), at least 32 KiB."""
    return max(32 * 1024, int(rate_mbit * 1e6 / 8 / 250))


class NetnsHosts:
    """``n_hosts`` network namespaces on a bridge; see the module docstring.

    After ``start()`` (or entering the ``with``): ``hosts`` (``["h0", ...]``), ``ips`` (host
    -> IP), ``namespaces`` (host -> namespace name), ``bridge_ns``, ``subnet``, ``ifname``
    (``eth0``), ``tmp`` (the run's temporary directory), ``setup_s``; after ``close()``,
    ``teardown_s``.
    """

    def __init__(self, n_hosts: int = 3, rate_mbit: float | None = None, *, prefix: str,
                 subnet: str = "10.77.0", first_host: int = 10, mtu: int | None = None,
                 burst: int | None = None, iproute: Iproute | None = None,
                 tag: str | None = None, state_dir: str | os.PathLike | None = None):
        if not 1 <= n_hosts <= 254 - first_host:
            raise ValueError(f"n_hosts must be 1..{254 - first_host}, not {n_hosts}")
        if not re.fullmatch(r"[a-z]{1,6}", prefix):
            raise ValueError("prefix: 1 to 6 lower-case letters (the pid follows it)")
        self.n_hosts, self.rate_mbit, self.prefix = n_hosts, rate_mbit, prefix
        self.mtu, self.iproute = mtu, iproute
        self.burst = burst or (tbf_burst(rate_mbit) if rate_mbit else None)
        if tag is not None and not re.fullmatch(r"[a-z][a-z0-9]{0,11}", tag):
            raise ValueError("tag: a lower-case letter, then up to 11 letters or digits")
        self.tag = tag or f"{prefix}{os.getpid()}x{next(_counter)}"
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.hosts = [f"h{i}" for i in range(n_hosts)]
        self.ips = {h: f"{subnet}.{first_host + i}" for i, h in enumerate(self.hosts)}
        self.subnet = f"{subnet}.0/24"
        self.namespaces = {h: f"{self.tag}-{h}" for h in self.hosts}
        self.bridge_ns = f"{self.tag}-br"
        self.ifname = "eth0"
        self.tmp: Path | None = None
        self._made: list[str] = []
        self._closed = False
        self.setup_s = self.teardown_s = None

    def __enter__(self) -> NetnsHosts:
        return self if self.setup_s is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def unavailable(self) -> str | None:
        """Why these hosts cannot be built here, or None."""
        if not sys.platform.startswith("linux"):
            return "network namespaces need Linux"
        if os.geteuid() != 0:
            return "network namespaces and tc need root"
        return None

    def start(self) -> NetnsHosts:
        """Build the hosts; on any failure, tear down what was built and re-raise."""
        if self._closed or self.setup_s is not None:
            raise RuntimeError(f"{self.tag} was started already")
        t0 = time.monotonic()
        reason = self.unavailable()
        if reason:
            raise NetnsUnavailable(reason)
        if self.iproute is None:
            self.iproute = Iproute.find()
        with _lock:
            _open.add(self)
        try:
            cleanup_stale(self.prefix, self.iproute)
            self._build()
        except BaseException:
            self.close()
            raise
        self.setup_s = time.monotonic() - t0
        return self

    def _build(self) -> None:
        ip, run = self.iproute.ip, self.iproute.run
        if self.state_dir is None:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        else:
            self.state_dir.mkdir(mode=0o700, parents=True)   # an existing one: refused
            self.tmp = self.state_dir
        for ns in [self.bridge_ns, *self.namespaces.values()]:
            p = subprocess.run([ip, "netns", "add", ns], capture_output=True, text=True,
                               env=self.iproute.env(), timeout=30)
            if p.returncode != 0:     # the first failure: namespaces are not available
                err = p.stderr.strip()
                if not self._made:
                    raise NetnsUnavailable(f"cannot create a network namespace: {err}")
                raise RuntimeError(f"ip netns add {ns}: {err}")
            self._made.append(ns)
        br = self.bridge_ns
        mtu = ["mtu", str(self.mtu)] if self.mtu else []
        run([ip, "-n", br, "link", "add", "br0", *mtu, "type", "bridge", "stp_state", "0"])
        run([ip, "-n", br, "link", "set", "br0", "up"])
        for i, h in enumerate(self.hosts):
            ns = self.namespaces[h]
            run([ip, "-n", br, "link", "add", f"p{i}", *mtu, "type", "veth",
                 "peer", "name", self.ifname, *mtu, "netns", ns])
            run([ip, "-n", br, "link", "set", f"p{i}", "master", "br0", "up"])
            run([ip, "-n", ns, "addr", "add", f"{self.ips[h]}/24", "dev", self.ifname])
            run([ip, "-n", ns, "link", "set", self.ifname, "up"])
            run([ip, "-n", ns, "link", "set", "lo", "up"])
            if self.rate_mbit:
                self._tbf(ns, self.ifname)       # host -> bridge
                self._tbf(br, f"p{i}")           # bridge -> host
        self._write_etc()

    def _tbf(self, ns: str, dev: str) -> None:
        self.iproute.run([self.iproute.tc, "-n", ns, "qdisc", "replace", "dev", dev, "root",
                          "tbf", "rate", f"{self.rate_mbit}mbit", "burst", str(self.burst),
                          "latency", "50ms"])

    def _write_etc(self) -> None:
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
            f"{self.ips[h]}\t{h}\n" for h in self.hosts)
        for ns in self.namespaces.values():
            d = ETC_NETNS / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text(hosts)
            (d / "resolv.conf").write_text("# no DNS inside the namespace hosts\n"
                                           "options timeout:1 attempts:1\n")

    def close(self) -> None:
        """Stop every process in the namespaces, delete them, /etc/netns entries and the temp
        dir.  Idempotent; does everything it can and raises at the end if something was left."""
        if self._closed:
            return
        t0 = time.monotonic()
        errors = kill_netns(self.iproute, self._made) if self._made else []
        for ns in self._made:   # never another cluster's of the same names
            shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
        try:
            ETC_NETNS.rmdir()     # only when empty: another run's entries stay
        except OSError:
            pass
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        with _lock:
            _open.discard(self)
        self._closed = True  # only now: a teardown cut short (a second Ctrl-C) runs again at exit
        self.teardown_s = time.monotonic() - t0
        if errors:
            raise RuntimeError("netns hosts teardown: " + "; ".join(errors))

    def detach(self) -> None:
        """Keep the hosts after this process ends (no teardown at exit); ``remove(tag)``
        tears them down."""
        with _lock:
            _open.discard(self)
        self._closed = True

    def check_host(self, host: str) -> str:
        """``host``'s namespace; KeyError naming the hosts there are."""
        if host not in self.namespaces:
            raise KeyError(f"no host {host!r} here ({', '.join(self.hosts)})")
        return self.namespaces[host]

    def wrap(self, host: str, cmd: str | Sequence[str],
             env: dict[str, str] | None = None) -> list[str]:
        """argv that runs ``cmd`` (an argv list, or a string for ``sh -c``) in ``host``, in
        the environment ``env`` (default ours) that it is started with."""
        ns = self.check_host(host)
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return [self.iproute.ip, "netns", "exec", ns, *self.iproute.restore(env), *argv]

    def popen(self, host: str, cmd: str | Sequence[str], *, env: dict | None = None,
              **kwargs) -> subprocess.Popen:
        """Start ``cmd`` in ``host`` with ``env`` (default ours); kwargs go to Popen."""
        return subprocess.Popen(self.wrap(host, cmd, env), env=self.iproute.env(env), **kwargs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.n_hosts}, rate_mbit={self.rate_mbit}, "
                f"tag={self.tag!r}, ips={self.ips})")


@atexit.register
def _close_all() -> None:
    for c in list(_open):
        try:
            c.close()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            print(f"netns hosts {c.tag}: {e}", file=sys.stderr)
