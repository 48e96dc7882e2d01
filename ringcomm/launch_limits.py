"""How big a job this launcher can start, checked before any rank starts.

The launcher holds open files for every rank while it runs: the two pipes of a local rank's
output (and, while choosing a localhost ring's ports, every port's socket at once), or the
three pipes of a remote rank's ssh.  A job past ``RLIMIT_NOFILE`` would otherwise start some
ranks and fail part-way with "Too many open files", and a count like ``-n 1000000000`` would
be built in memory first.  The soft limit is raised up to the hard one when the job needs it
(the ranks inherit it); past the hard limit the job is refused with exit 2.  Ports given
with ``-p`` must all fall within 1..65535.
"""
from __future__ import annotations

import math
import resource

from .transports.errors import ConfigError

FDS_PER_LOCAL_RANK = 2      # the launcher's ends of the rank's stdout and stderr pipes
FDS_PER_REMOTE_RANK = 3     # ssh's stdin, stdout and stderr pipes
RESERVED_FDS = 64           # the launcher's own files, and a Popen's pipes while it starts
MAX_PORT = 65535
MAX_CONNECT_TIMEOUT = 3600.0


def open_files_needed(ranks: int, connections: int, local: bool) -> int:
    """Open files a job of ``ranks`` ranks (``connections`` ports each) needs here, at most."""
    per_rank = max(FDS_PER_LOCAL_RANK, connections) if local else FDS_PER_REMOTE_RANK
    return ranks * per_rank + RESERVED_FDS


def raise_open_file_limit(need: int) -> tuple[int, int] | None:
    """Raise the soft ``RLIMIT_NOFILE`` to ``need`` where the hard limit allows; None when
    this process may now open ``need`` files, else its (soft, hard) limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or need <= soft:
        return None
    if hard == resource.RLIM_INFINITY or need <= hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return None
        except (OSError, ValueError):
            pass   # (macOS caps the soft limit below an unlimited hard one)
    return soft, hard


def ensure_open_files(ranks: int, connections: int, local: bool) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to what the job needs, or refuse the job when even
    the hard limit is too low (``ConfigError``)."""
    need = open_files_needed(ranks, connections, local)
    short = raise_open_file_limit(need)
    if short is None:
        return
    soft, hard = short
    raise ConfigError(
        f"{ranks} {'local' if local else 'remote'} ranks need about {need} open files in the "
        f"launcher, and this process may open {soft} (ulimit -n; its hard limit is "
        f"{hard}); start fewer ranks (-n, hosts in the hostfile) or connections "
        f"(--connections-per-ip), or raise the limit "
        f"(ulimit -n {need})")


def check_port_range(starting_port: int | None, count: int) -> None:
    """``-p``'s ``count`` consecutive ports must all be ports."""
    if starting_port is not None and starting_port + count - 1 > MAX_PORT:
        raise ConfigError(f"-p {starting_port}: the job needs {count} consecutive ports from "
                          f"it, past {MAX_PORT}; give a port of at most "
                          f"{max(1, MAX_PORT - count + 1)}, or leave -p out to use free ones")


def check_connect_timeout(seconds: float) -> str | None:
    """Why ``--connect-timeout`` cannot be used (None when it can)."""
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_CONNECT_TIMEOUT:
        return (f"--connect-timeout must be a number of seconds above 0 and at most "
                f"{MAX_CONNECT_TIMEOUT:g}; got {seconds!r}")
    return None
