"""How busy the machine was with other work while a pass ran: the load that makes timings
of one pass incomparable with another's.

On Linux the answer is measured: the CPU time the whole machine spent busy during the pass
(``/proc/stat``), less what this process and the ranks it started used (their rusage, counted
once the launcher has waited for them), over the pass's wall time, in CPUs.  The load average
(``os.getloadavg()``) is no good after a pass, since the pass's own ranks raise it; elsewhere
(macOS) it is the fallback, read before the pass, when no rank of ours runs yet.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import time

PROC_STAT = "/proc/stat"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclasses.dataclass
class PassLoad:
    """Other processes' use of the machine during one pass."""

    impl: str
    other_cpus: float   # CPUs that other work kept busy, on average over the pass
    cpus: int
    measured: bool      # True: from CPU time (/proc/stat); False: the load average before

    @property
    def share(self) -> float:
        """``other_cpus`` as a fraction of the machine."""
        return self.other_cpus / self.cpus

    def describe(self) -> str:
        how = "kept busy" if self.measured else "load average (before the pass)"
        return f"{self.impl} pass: other work {how} {self.other_cpus:.1f} of {self.cpus} CPUs"


class LoadMeter:
    """Start before a pass (``LoadMeter(impl)``), call :meth:`finish` after its ranks exited."""

    def __init__(self, impl: str) -> None:
        self.impl = impl
        self._wall = time.monotonic()
        self._busy, counted = _machine_busy_seconds()
        self.cpus = counted or os.cpu_count() or 1  # the CPUs whose time /proc/stat sums
        self._ours = _our_cpu_seconds()
        self._loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    def finish(self) -> PassLoad:
        busy, _ = _machine_busy_seconds()
        wall = time.monotonic() - self._wall
        if self._busy is None or busy is None or wall <= 0:
            return PassLoad(self.impl, self._loadavg, self.cpus, measured=False)
        others = (busy - self._busy) - (_our_cpu_seconds() - self._ours)
        return PassLoad(self.impl, max(others, 0.0) / wall, self.cpus, measured=True)


def _machine_busy_seconds() -> tuple[float | None, int]:
    """CPU seconds all CPUs spent not idle since boot, and how many CPUs that is (None, 0
    where /proc/stat is missing or unreadable)."""
    try:
        with open(PROC_STAT, encoding="ascii") as f:
            lines = f.read().splitlines()
        fields = lines[0].split()
        # user nice system idle iowait irq softirq steal (guest time is already in user)
        ticks = [int(v) for v in fields[1:9]] if fields[0] == "cpu" else []
    except (OSError, IndexError, ValueError):
        return None, 0
    if len(ticks) < 8:
        return None, 0
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS_PER_SECOND, cpus


def _our_cpu_seconds() -> float:
    """CPU seconds of this process and of every descendant that has been waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total
