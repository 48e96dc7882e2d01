"""``-n N``: run each implementation's pass on N fresh localhost ranks through ringcomm-launch.

The launcher does the work of starting ranks (free ports, a fresh hostfile per pass, the
environment, prefixed output, stopping every rank when one fails); this module only bounds
each pass in time, passes a stop request on (``interrupts``) and collects rank 0's records.
Passes run one after the other because MLX's ring and ringcomm would both bind the hostfile's
ports (and gloo's rendezvous binds rank 0's first one).

The launcher runs in its own session, with its output (and its ranks') copied to our stderr
as it comes; once a stop was asked for, that output is held back and shown only if the
ranks did not stop cleanly: how the launcher stopped them is not news to whoever asked.
"""
from __future__ import annotations

import codecs
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

from .interrupts import STOP_SIGNAL, Interrupts
from .measure import Record
from .options import Config

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 15.0  # after a stop request, before the launcher is killed
EXIT_TIME_LIMIT = 124      # as timeout(1)
OUTPUT_JOIN_SECONDS = 5.0  # for the last of the launcher's output once it has exited


@dataclasses.dataclass
class PassResult:
    impl: str
    exit_code: int
    records: list[Record]


def run_pass(impl: str, config: Config, nproc: int, connections: int,
             time_limit: float, interrupts: Interrupts) -> PassResult:
    """Run ``impl``'s sweep on ``nproc`` new ranks; rank output goes to our stderr.  On a
    signal (``interrupts``) the ranks are stopped and the records so far are returned."""
    with tempfile.TemporaryDirectory(prefix="ringcomm-bench-") as tmp:
        results = os.path.join(tmp, "records.jsonl")
        rank_config = dataclasses.replace(config, impls=[impl], results=results)
        command = [sys.executable, "-m", "ringcomm.launch", "-n", str(nproc),
                   "--connections-per-ip", str(connections)]
        if impl == "ringcomm" and config.transport != "tcp":
            command += ["--backend", config.transport]
        command += ["--", sys.executable, "-m", "ringcomm.bench.rank", rank_config.to_json()]
        code = _run(command, time_limit, f"the {impl} pass", interrupts)
        return PassResult(impl, code, read_records(results))


def read_records(path: str) -> list[Record]:
    """The records rank 0 wrote (none if it wrote nothing); a last line cut short by a
    killed rank is left out."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(Record(**json.loads(line)))
                except ValueError:
                    break
    except FileNotFoundError:
        pass
    return records


def child_env() -> dict[str, str]:
    """This environment, with the project root first on PYTHONPATH (ranks import it from a
    source tree too)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))


def _run(command: list[str], time_limit: float, what: str, interrupts: Interrupts) -> int:
    launcher = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                start_new_session=True)
    copier = _OutputCopier(launcher.stdout, interrupts)
    interrupts.watch(launcher)
    try:
        code = launcher.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        print(f"ringcomm-bench: {what} ran past --time-limit {time_limit:g} s; stopping its "
              "ranks (raise --time-limit for longer sweeps)", file=sys.stderr)
        _stop(launcher)
        code = EXIT_TIME_LIMIT
    finally:
        interrupts.watch(None)
    copier.join(OUTPUT_JOIN_SECONDS)
    # stopped as asked: its ranks ended on the signal, or it did before starting any
    if interrupts.signalled is not None and code not in (128 + STOP_SIGNAL, -STOP_SIGNAL):
        copier.release()  # it did not stop as asked: what it and its ranks said
    return code


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


class _OutputCopier:
    """Copies the launcher's output to our stderr as it comes (partial lines too), on a
    thread; once a signal came (``interrupts``) it keeps it instead, for :meth:`release`."""

    def __init__(self, source: IO[bytes], interrupts: Interrupts) -> None:
        self._source, self._interrupts = source, interrupts
        self._held: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._copy, daemon=True)
        self._thread.start()

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        _write("".join(held))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _copy(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self._source.fileno()
        while chunk := os.read(fd, 65536):
            text = decoder.decode(chunk)
            if self._interrupts.signalled is not None:
                with self._lock:
                    self._held.append(text)
            else:
                _write(text)
        self._source.close()


def _write(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # our terminal is gone: keep draining the launcher
        pass


def stderr_fd() -> int | None:
    """Ranks print nothing on stdout, but whatever they do must not mix with the table."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
