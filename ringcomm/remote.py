"""One rank on another machine: its ssh command line, its start-up agent, stopping it there.

A remote rank runs as ``ssh -T -o BatchMode=yes -o ConnectTimeout=N [--ssh-arg ...] -- HOST
'exec PYTHON -u -c BOOT'``: ssh takes keys, users and ports from ``~/.ssh/config``, and
``BatchMode`` makes a missing key fail at once instead of prompting; ``--`` keeps HOST a
destination (``hosts.check_ssh_name`` has already refused one beginning with "-").  ``BOOT``
reads ``ringcomm/remote_agent.py``'s source and the rank's configuration from the first stdin
line, within the launcher's start-up wait as a whole, so nothing but the Python's path is on
any command line (the token and the environment travel inside the ssh session).  The agent checks the host, reports its ports, and on
``go`` runs the command in a session of its own; the ssh session's stdin is its control line:
signals go down it, and its end (the launcher stopped or died, or ssh lost its connection)
stops the rank on the host.  ssh's keep-alives (every 5 s, 3 missed) end a session whose
host has gone.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from typing import IO, Callable, Sequence

from .hosts import Host, describe
from .rank_output import READ_BYTES, Printer
from .remote_agent import MARKER
from .supervise import LINE_BYTES

# SIGALRM ends the agent unless its first line (source and configuration) arrives within
# the seconds given, as a whole, however slowly its bytes come: by then the launcher has given
# up on this host (the connect time-out plus STARTUP_SECONDS)
BOOT = ('import sys,json,signal;signal.alarm({seconds});'
        'm=json.loads(sys.stdin.buffer.readline());signal.alarm(0);g={{}};'
        'exec(compile(m["agent"],"ringcomm-agent","exec"),g);g["run"](m["config"])')
STARTUP_SECONDS = 20.0     # after the connect time-out: the login shell and the agent's checks
JOIN_SECONDS = 5.0
_AGENT_SOURCE: str | None = None


def agent_source() -> str:
    global _AGENT_SOURCE
    if _AGENT_SOURCE is None:
        with open(os.path.join(os.path.dirname(__file__), "remote_agent.py"),
                  encoding="utf-8") as f:
            _AGENT_SOURCE = f.read()
    return _AGENT_SOURCE


def ssh_argv(connect_timeout: float, extra: Sequence[str] = ()) -> list[str]:
    """ssh and the options every remote rank's session starts with."""
    return ["ssh", "-T", "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, math.ceil(connect_timeout))}",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", *extra]


def remote_command(python: str, boot_seconds: float) -> str:
    """What ssh asks the host's login shell to run: the agent's boot, which waits at most
    ``boot_seconds`` for the launcher's first line."""
    boot = BOOT.format(seconds=max(1, math.ceil(boot_seconds)))
    return f"exec {shlex.quote(python)} -u -c {shlex.quote(boot)}"


def shell_hint(*argv: str) -> str:
    """A command for the user to try, quoted as a shell reads it (the host names in it were
    checked by ``hosts.check_ssh_name``: none begins with "-")."""
    return shlex.join(argv)


def explain_ssh_failure(host: Host, code: int, stderr: str, python: str) -> str:
    """A failed start-up, in words: what went wrong on which host and what to fix."""
    name, err = describe(host), stderr.strip()
    tail = err.splitlines()[-1] if err else "(no output)"
    if code == 255:
        low = err.lower()
        if "permission denied" in low:
            return (f"host {name}: ssh refused the login ({tail}); BatchMode allows no "
                    f"password prompt: install a key ({shell_hint('ssh-copy-id', host.ssh)}) "
                    "or name one in ~/.ssh/config, then check that "
                    f"`{shell_hint('ssh', '-o', 'BatchMode=yes', host.ssh, 'true')}` works")
        if "host key verification failed" in low or "host key" in low:
            return (f"host {name}: its host key is unknown or has changed ({tail}); connect "
                    f"once with `{shell_hint('ssh', host.ssh)}` to accept it")
        if "could not resolve" in low:
            return f"host {name}: ssh cannot resolve the name ({tail}); give its IP"
        return (f"host {name}: cannot reach it over ssh ({tail}); check the name or IP, that "
                f"the machine is up and runs sshd, and that "
                f"`{shell_hint('ssh', host.ssh, 'true')}` works here")
    if code in (126, 127):
        return (f"host {name}: cannot run the Python {python} there ({tail}); give --python "
                "with the path of a Python on that host")
    return f"host {name}: the start-up failed (exit code {code}): {tail}"


class RemoteRank:
    """One rank's ssh session: start-up report, output, signals, exit."""

    def __init__(self, rank: int, host: Host, config: dict, ssh: Sequence[str],
                 printer: Printer, post: Callable[[tuple], None]) -> None:
        self.rank, self.host, self.config = rank, host, config
        # "--" ends ssh's options: the destination can never be read as one
        self.argv = [*ssh, "--", host.ssh, remote_command(config["python_for_agent"],
                                                          config["boot_seconds"])]
        self._printer, self._post = printer, post
        self._lock = threading.Lock()
        self._early: list[bytes] = []     # stderr before the agent reported (ssh's errors)
        self.report: dict | None = None
        self.proc: subprocess.Popen | None = None
        self._threads: list[threading.Thread] = []

    def describe(self) -> str:
        return describe(self.host)

    def start(self) -> None:
        """Start ssh and send the agent; posts ("ready", self, report) or ("exit", self, code)."""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self._send({"agent": agent_source(), "config": self.config})
        self._thread(self._read_stdout, self.proc.stdout)
        self._thread(self._read_stderr, self.proc.stderr)

        def wait() -> None:
            code = self.proc.wait()
            self.join(time.monotonic() + JOIN_SECONDS)   # a report is posted before the exit
            self._post(("exit", self, code))
        threading.Thread(target=wait, daemon=True).start()

    def _thread(self, target, source: IO[bytes]) -> threading.Thread:
        t = threading.Thread(target=target, args=(source,), daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _read_stdout(self, source: IO[bytes]) -> None:
        """Lines until the agent's report, then the rank's output as it comes."""
        marker = MARKER.encode() + b" "
        for line in iter(lambda: source.readline(LINE_BYTES), b""):
            if line.startswith(marker):
                report = self._check_report(line[len(marker):])
                with self._lock:
                    self.report = report
                    early, self._early = self._early, []
                for piece in early if report.get("ok") else ():
                    self._printer.write(self.rank, piece, True)
                self._post(("ready", self, report))
                break
            self._printer.write(self.rank, line, False)
        self._copy(source, False)

    def _read_stderr(self, source: IO[bytes]) -> None:
        """ssh's and the agent's errors are kept until the report (they explain a failed
        start-up); then the rank's stderr as it comes."""
        for data in iter(lambda: source.read1(READ_BYTES), b""):
            with self._lock:
                if self.report is None:
                    self._early.append(data)
                    del self._early[:-64]     # the last pieces tell why
                    continue
            self._printer.write(self.rank, data, True)
        self._printer.finish(self.rank, True)
        source.close()

    def _copy(self, source: IO[bytes], err: bool) -> None:
        for data in iter(lambda: source.read1(READ_BYTES), b""):
            self._printer.write(self.rank, data, err)
        self._printer.finish(self.rank, err)
        source.close()

    def _check_report(self, text: bytes) -> dict:
        """The agent's report, checked: ``{"ok": true, "ports": [...]}`` with as many ports as
        were asked for, or ``{"ok": false, "error": "..."}``."""
        cfg = self.config
        want = len(cfg["ips"]) * cfg["connections"] + cfg["extra_ports"]
        try:
            report = json.loads(text)
        except (ValueError, RecursionError):
            report = None
        if not isinstance(report, dict):
            report = {}
        if report.get("ok") is False:
            return {"ok": False, "error": str(report.get("error"))[:2000]}
        ports = report.get("ports")
        if (report.get("ok") is not True or not isinstance(ports, list) or len(ports) != want
                or not all(type(p) is int and 0 < p < 65536 for p in ports)):
            return {"ok": False, "error": f"garbled start-up report {text[:200]!r} (a "
                    "different ringcomm agent, or something in the login shell's output?)"}
        return report

    def early_stderr(self) -> str:
        with self._lock:
            return b"".join(self._early).decode(errors="replace")

    def failure(self, code: int | None, waited: float = 0.0) -> str:
        """Why this rank did not start, from its report or ssh's exit and stderr (``code``
        None: no report within ``waited`` seconds)."""
        if self.report is not None and not self.report.get("ok"):
            return f"host {self.describe()}: {self.report.get('error')}"
        if code is None:
            return (f"host {self.describe()}: no word from it within {waited:.0f} s of "
                    "starting ssh (a login shell "
                    "that waits for input? a stuck ~/.bashrc?); check that "
                    f"`{shell_hint('ssh', self.host.ssh, 'true')}` returns at once")
        return explain_ssh_failure(self.host, code, self.early_stderr(),
                                   self.config["python_for_agent"])

    def _send(self, message: dict) -> None:
        # a few hundred bytes after the first message (~10 KiB): the pipe (64 KiB) never
        # fills, so this write cannot block even when ssh no longer reads
        with self._lock:
            stdin = self.proc.stdin if self.proc else None
            if stdin is None or stdin.closed:
                return
            try:
                stdin.write(json.dumps(message).encode() + b"\n")
                stdin.flush()
            except (OSError, ValueError):
                pass

    def go(self, files: dict[str, str], env: dict[str, str]) -> None:
        """Start the rank: the ring hostfile (and device file) and its variables."""
        self._send({"files": files, "env": env})

    def signal(self, sig: int) -> None:
        self._send({"signal": int(sig)})

    def kill(self) -> None:
        """SIGKILL the rank's session there, and end the control line."""
        self.signal(signal.SIGKILL)
        self.close()

    def close(self) -> None:
        """End the control line: the agent stops whatever still runs (SIGTERM, SIGKILL)."""
        with self._lock:
            if self.proc and self.proc.stdin and not self.proc.stdin.closed:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass

    def abandon(self) -> None:
        """Kill the local ssh client (its host no longer answers)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()

    def join(self, deadline: float) -> None:
        """Wait for ssh's output to be read, until ``deadline`` (time.monotonic())."""
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
