"""Hosts on one machine: network namespaces joined by a bridge, links optionally shaped.

Each host ``h0 .. h{N-1}`` is a network namespace with loopback up and one veth (``eth0``)
whose other end is a port of a Linux bridge that lives in a namespace of its own.  Nothing is
created in, or attached to, the machine's own network namespace: the addresses
(``10.77.0.10``, ``10.77.0.11``, ... by default) exist only inside, no namespace has a default
route.  With ``rate_mbit`` every link is shaped with ``tc tbf`` in both directions (the host's
``eth0`` and its bridge port), so a host sends and receives at most that rate, as behind a
switch.  ``ip netns exec`` bind-mounts ``/etc/netns/<namespace>/hosts`` over /etc/hosts:
``h0``.. resolve to their addresses in every command started in a host.

``python -m ringcomm.bench.links`` (``links.py``) measures on these hosts; ``tests/netns.py`` adds an
sshd per host for the multi-host tests.  ``ip`` and ``tc`` come from PATH or from an unpacked
iproute2 (``Iproute.find(root)``: ``root/bin/ip``, ``root/sbin/tc`` and the libraries under
``root``); then LD_LIBRARY_PATH is set for ip and tc only, never for what runs in a host.

Names carry the pid (``<prefix><pid>x<n>-h0``), so runs never collide; what a run whose pid is
gone left (namespaces and the processes in them, /etc/netns entries, temporary directories)
is removed at the next start (``cleanup_stale``).  ``close()`` (also at exit and when set-up
fails half-way) SIGTERMs, then SIGKILLs, every process in the namespaces, then deletes them
(which removes the veths and the bridge), the /etc/netns entries and the temporary directory.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ETC_NETNS = Path("/etc/netns")
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
IPROUTE_ENV = "RINGCOMM_IPROUTE"   # an unpacked iproute2 (bin/ip, sbin/tc, its libraries)
LIBRARY_PATH = "LD_LIBRARY_PATH"

_counter = itertools.count()
_open: set[NetnsHosts] = set()
_lock = threading.Lock()


class NetnsUnavailable(RuntimeError):
    """Network namespaces, or the tools they need, are not available here."""


def which(path: str) -> str | None:
    """``path`` if absolute and executable, else found on PATH or in the sbin folders."""
    if os.path.isabs(path):
        return path if os.access(path, os.X_OK) else None
    return shutil.which(path) or next(
        (p for d in SBIN if os.access(p := os.path.join(d, path), os.X_OK)), None)


@dataclasses.dataclass(frozen=True)
class Iproute:
    """Where ``ip`` and ``tc`` are, and the library path they alone need (None: the system's)."""

    ip: str
    tc: str
    libs: str | None = None

    @classmethod
    def find(cls, root: str | os.PathLike | None = None) -> Iproute:
        """From ``root`` (or $RINGCOMM_IPROUTE): an unpacked iproute2 package; else PATH."""
        root = root or os.environ.get(IPROUTE_ENV)
        if not root:
            ip, tc = which("ip"), which("tc")
            if ip is None or tc is None:
                raise NetnsUnavailable(
                    "missing " + ", ".join(n for n, p in (("ip", ip), ("tc", tc)) if p is None)
                    + f" (apt-get install iproute2, or name an unpacked one: {IPROUTE_ENV})")
            return cls(ip, tc)
        base = Path(root).resolve()
        ip = next((p for p in (base / "bin/ip", base / "sbin/ip") if os.access(p, os.X_OK)), None)
        tc = base / "sbin/tc"
        if ip is None or not os.access(tc, os.X_OK):
            raise NetnsUnavailable(f"{base} has no executable bin/ip and sbin/tc (unpack "
                                   "iproute2 there: dpkg -x iproute2_*.deb DIR)")
        dirs = sorted({str(p.parent) for p in base.rglob("lib*.so*")})
        return cls(str(ip), str(tc), os.pathsep.join(dirs) or None)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str] | None:
        """The environment ip and tc run in: ``base`` (default ours; None when unchanged)
        with the unpacked libraries first on LD_LIBRARY_PATH."""
        if self.libs is None:
            return base
        base = dict(os.environ if base is None else base)
        old = base.get(LIBRARY_PATH)
        return dict(base, **{LIBRARY_PATH: os.pathsep.join(filter(None, [self.libs, old]))})

    def restore(self, base: dict[str, str] | None = None) -> list[str]:
        """What goes before a command that ``ip netns exec`` starts so that it gets
        ``base``'s LD_LIBRARY_PATH (default ours), not ip's: nothing for the system's ip."""
        if self.libs is None:
            return []
        old = (os.environ if base is None else base).get(LIBRARY_PATH)
        env = which("env") or "/usr/bin/env"
        return [env, f"{LIBRARY_PATH}={old}"] if old else [env, "-u", LIBRARY_PATH]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 30) -> str:
        """Run an ip or tc command line; errors name it and say what it printed."""
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                           env=self.env())
        if check and p.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed ({p.returncode}): "
                               f"{(p.stderr or p.stdout).strip()}")
        return p.stdout

    def namespaces(self) -> list[str]:
        return [line.split()[0] for line in
                self.run([self.ip, "netns", "list"], check=False).splitlines() if line.strip()]

    def pids(self, ns: str) -> list[int]:
        return [int(x) for x in self.run([self.ip, "netns", "pids", ns], check=False).split()
                if x.isdigit()]


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
                 burst: int | None = None, iproute: Iproute | None = None):
        if not 1 <= n_hosts <= 254 - first_host:
            raise ValueError(f"n_hosts must be 1..{254 - first_host}, not {n_hosts}")
        if not re.fullmatch(r"[a-z]{1,6}", prefix):
            raise ValueError("prefix: 1 to 6 lower-case letters (the pid follows it)")
        self.n_hosts, self.rate_mbit, self.prefix = n_hosts, rate_mbit, prefix
        self.mtu, self.iproute = mtu, iproute
        self.burst = burst or (tbf_burst(rate_mbit) if rate_mbit else None)
        self.tag = f"{prefix}{os.getpid()}x{next(_counter)}"
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
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
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
        for ns in self.namespaces.values():
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
