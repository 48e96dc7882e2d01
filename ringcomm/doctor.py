"""``python -m ringcomm``: what a new machine offers ringcomm, and a two-rank self-test.

The first thing to run on a new machine: versions, the transports and verbs providers usable
here (and the RDMA devices they list), the settings in force, then two real ranks on loopback
run a few collectives over TCP and the verdict is one line.  The ranks are separate processes
started the way the launcher starts them (``MLX_RANK`` and a hostfile), so the self-test goes
through the same set-up, sockets and checks as a real job.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import import_module
from typing import Callable

from .launch import localhost_hostfile
from .transports import settings, verbs
from .transports.hostfile import write_hostfile
from .transports.errors import RingcommError

SELF_TEST_TIMEOUT = 30.0  # seconds for the whole self-test, set-up included
# The self-test keeps the user's RINGCOMM_ tuning (threads, spin, congestion, token, ...) but
# forms its own two-rank TCP ring, so it drops what says where and how the user's job forms.
_NOT_FOR_SELF_TEST = ("RINGCOMM_BACKEND", "RINGCOMM_RENDEZVOUS", "RINGCOMM_IFNAME",
                      "RINGCOMM_TIMEOUT", "RINGCOMM_JOB_ID")

# What each rank of the self-test runs: a few collectives checked against numpy.
_RANK_CODE = """
import sys, time, numpy as np, ringcomm
start = time.perf_counter()
g = ringcomm.init(strict=True)
r, n = g.rank(), g.size()
def pingpong():  # rank 0 sends first, rank 1 receives first
    peer = 1 - r
    if r == 0:
        ringcomm.send(np.full(4, r, np.float64), peer)
    got = ringcomm.recv((4,), "float64", peer)
    if r == 1:
        ringcomm.send(np.full(4, r, np.float64), peer)
    return np.array_equal(got, np.full(4, peer, np.float64))
checks = {
    "all_sum": lambda: np.array_equal(ringcomm.all_sum(np.full(1 << 18, r + 1, np.float32)),
                                      np.full(1 << 18, n * (n + 1) / 2, np.float32)),
    "all_gather": lambda: np.array_equal(ringcomm.all_gather(np.arange(5) + 10 * r),
                                         np.concatenate([np.arange(5) + 10 * k for k in range(n)])),
    "broadcast": lambda: np.array_equal(ringcomm.broadcast(np.full(3, r, np.int64), 0),
                                        np.zeros(3, np.int64)),
    "send/recv": pingpong,
}
failed = [name for name, check in checks.items() if not check()]
described = str(g.describe())  # what the group runs on (Group.describe), for the report
g.close()
print(f"{time.perf_counter() - start:.3f} " + ",".join(failed), flush=True)
print(described, flush=True)
sys.exit(1 if failed else 0)
"""


def versions() -> list[tuple[str, str]]:
    """(what, version) of ringcomm, Python and the libraries it runs with."""
    from . import __version__
    rows = [("ringcomm", __version__),
            ("Python", f"{platform.python_version()} ({sys.executable})"),
            ("platform", f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores")]
    for module, name in (("numpy", "numpy"), ("ml_dtypes", "ml_dtypes"), ("mlx.core", "MLX")):
        try:
            rows.append((name, getattr(import_module(module), "__version__", "installed")))
        except Exception as e:  # noqa: BLE001 (a broken install says why, it does not stop us)
            rows.append((name, f"not usable ({type(e).__name__}: {str(e).splitlines()[0]})"
                         if not isinstance(e, ImportError) else "not installed"))
    return rows


def transports() -> list[tuple[str, str]]:
    """(transport or verbs provider, what it offers here)."""
    rows = [("tcp", "usable")]
    for provider in verbs.PROVIDERS:
        try:
            api = verbs.load(provider)
            names = verbs.device_names(api)
        except RingcommError as e:
            rows.append((f"rdma, verbs {provider}", f"not usable: {str(e).split('. ')[0]}"))
            continue
        label = "an emulation, not RDMA; " if getattr(api, "EMULATED", False) else ""
        rows.append((f"rdma, verbs {provider}",
                     f"{label}devices: {', '.join(names) if names else 'none'}"))
    return rows


def settings_in_force(env: dict[str, str] | None = None) -> tuple[list[tuple[str, str]], str]:
    """The ringcomm settings set in the environment, and the effective timeout, or the
    ConfigError that the settings would raise."""
    env = dict(os.environ if env is None else env)
    rows = [(name, "(set)" if name == "RINGCOMM_TOKEN" else env[name])
            for name in (*settings.KNOWN, *settings.ALIASES) if name in env]
    try:
        knobs = settings.load(env)
    except RingcommError as e:
        return rows, f"invalid: {e}"
    return rows, f"timeout {knobs.timeout:g} s, protocol {knobs.protocol}, backend {knobs.backend}"


def self_test(timeout: float = SELF_TEST_TIMEOUT) -> tuple[bool, str]:
    """Two ranks on 127.0.0.1 run all_sum, all_gather, broadcast and send/recv: (ok, line)."""
    with tempfile.TemporaryDirectory(prefix="ringcomm-selftest-") as tmp:
        hostfile = os.path.join(tmp, "hostfile.json")
        write_hostfile(hostfile, localhost_hostfile(2, 1))
        env = {k: v for k, v in os.environ.items() if k not in settings.KNOWN and k not in
               settings.ALIASES or k.startswith("RINGCOMM_") and k not in _NOT_FOR_SELF_TEST}
        env.update(MLX_HOSTFILE=hostfile, RINGCOMM_TIMEOUT=str(timeout),
                   PYTHONPATH=os.pathsep.join(p for p in (_package_root(),
                                                          env.get("PYTHONPATH")) if p))
        start = time.perf_counter()
        ranks = [subprocess.Popen([sys.executable, "-c", _RANK_CODE], env={**env, "MLX_RANK":
                                  str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for r in range(2)]
        outputs = []
        for proc in ranks:
            try:
                outputs.append(proc.communicate(timeout=timeout + 5))
            except subprocess.TimeoutExpired:
                for p in ranks:
                    p.kill()
                return False, f"the two ranks did not finish within {timeout + 5:g} s"
        elapsed = time.perf_counter() - start
    for r, (proc, (out, err)) in enumerate(zip(ranks, outputs)):
        if proc.returncode != 0:
            first = out.splitlines()[0].split() if out else []  # seconds, then what failed
            failed = first[1] if len(first) > 1 else ""
            why = (f"wrong results: {failed}" if failed
                   else (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1])
            return False, f"rank {r} failed: {why}"
    inside = max(float(out.split()[0]) for out, _ in outputs)
    described = outputs[0][0].splitlines()[1:2] or ["?"]  # rank 0's Group.describe()
    return True, (f"2 ranks on 127.0.0.1 over TCP: all_sum, all_gather, broadcast, send/recv "
                  f"right; {inside * 1e3:.0f} ms inside the ranks (set-up included), "
                  f"{elapsed:.2f} s with interpreter start\n  group: {described[0]}")


def _package_root() -> str:
    """The folder holding the ``ringcomm`` package, so the ranks import this same copy."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def report(write: Callable[[str], None] = print, run_self_test: bool = True) -> int:
    """Print the report; 0 when the self-test passed (or was skipped), 1 otherwise."""
    def table(title: str, rows: list[tuple[str, str]]) -> None:
        write(title)
        width = max((len(a) for a, _ in rows), default=0)
        for a, b in rows:
            write(f"  {a.ljust(width)}  {b}")
    table("versions", versions())
    table("transports", transports())
    rows, summary = settings_in_force()
    table("settings", rows or [("(none set)", "defaults")])
    write(f"  => {summary}")
    if not run_self_test:
        return 0
    ok, line = self_test()
    write("self-test")
    write(f"  {line}")
    write("verdict: ready: ringcomm works on this machine" if ok else
          "verdict: NOT ready: the two-rank self-test failed (see above)")
    return 0 if ok else 1
