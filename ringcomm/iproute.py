"""``ip`` and ``tc`` for ``ringcomm.netns``: the system's, or an unpacked iproute2 package.

An unpacked package (``RINGCOMM_IPROUTE`` or ``--iproute DIR``: ``bin/ip``, ``sbin/tc`` and
their libraries) runs with LD_LIBRARY_PATH set for ip and tc only, never for what runs in a
host (``restore``).
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
IPROUTE_ENV = "RINGCOMM_IPROUTE"   # an unpacked iproute2 (bin/ip, sbin/tc, its libraries)
LIBRARY_PATH = "LD_LIBRARY_PATH"


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
