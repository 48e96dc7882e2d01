"""``-n N``: run each implementation's pass on N fresh localhost ranks through ringcomm-launch.

The launcher does the work of starting ranks (free ports, a fresh hostfile per pass, the
environment, prefixed output, stopping every rank when one fails); this module only bounds
each pass in time and collects rank 0's records.  Passes run one after the other because
MLX's ring and ringcomm would both bind the hostfile's ports (and gloo's rendezvous binds rank
0's first one).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .measure import Record
from .options import Config

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 15.0  # after a stop request, before the launcher is killed
EXIT_TIME_LIMIT = 124      # as timeout(1)


@dataclasses.dataclass
class PassResult:
    impl: str
    exit_code: int
    records: list[Record]


def run_pass(impl: str, config: Config, nproc: int, connections: int,
             time_limit: float) -> PassResult:
    """Run ``impl``'s sweep on ``nproc`` new ranks; rank output goes to our stderr."""
    with tempfile.TemporaryDirectory(prefix="ringcomm-bench-") as tmp:
        results = os.path.join(tmp, "records.jsonl")
        rank_config = dataclasses.replace(config, impls=[impl], results=results)
        command = [sys.executable, "-m", "ringcomm.launch", "-n", str(nproc),
                   "--connections-per-ip", str(connections)]
        if impl == "ringcomm" and config.transport != "tcp":
            command += ["--backend", config.transport]
        command += ["--", sys.executable, "-m", "ringcomm.bench.rank", rank_config.to_json()]
        code = _run(command, time_limit, f"the {impl} pass")
        return PassResult(impl, code, read_records(results))


def read_records(path: str) -> list[Record]:
    """The records rank 0 wrote (none if it wrote nothing)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [Record(**json.loads(line)) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def child_env() -> dict[str, str]:
    """This environment, with the project root first on PYTHONPATH (ranks import it from a
    source tree too)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))


def _run(command: list[str], time_limit: float, what: str) -> int:
    launcher = subprocess.Popen(command, env=child_env(), stdout=stderr_fd(), cwd=ROOT)
    try:
        return launcher.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        print(f"ringcomm-bench: {what} ran past --time-limit {time_limit:g} s; stopping its "
              "ranks (raise --time-limit for longer sweeps)", file=sys.stderr)
        _stop(launcher)
        return EXIT_TIME_LIMIT
    except KeyboardInterrupt:
        _stop(launcher)
        raise


def _stop(launcher: subprocess.Popen) -> int:
    """Ask the launcher to stop its ranks as Ctrl-C would; kill it if it does not."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGINT)
    try:
        launcher.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait(timeout=STOP_GRACE_SECONDS)
    return launcher.returncode


def stderr_fd() -> int | None:
    """Ranks print nothing on stdout, but whatever they do must not mix with the table."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
