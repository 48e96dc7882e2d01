"""Running a job's ranks: start them, pass on their output, stop every one on a failure or signal.

Local ranks are processes here, each leading its own session; remote ones are
``remote.RemoteRank`` ssh sessions.  Both answer ``signal``, ``kill``, ``close`` and
``abandon`` and post ``("exit", rank, code)`` when they end.  Signal handlers only post
``("signal", n)`` to the same queue, so all decisions are made in one loop, never inside a
handler: SIGINT, SIGTERM and SIGHUP are sent on to every rank (on every host), whatever is
still alive ``STOP_GRACE_SECONDS`` later is killed, and the launcher exits 128 + the signal
(130, 143, 129); a second signal kills at once.  Ranks that end after a signal of ours
are never blamed for it (a Ctrl-C is nobody's failure), and their exit codes are listed only
when one had to be killed.  When a rank fails, the others have
``FAILURE_GRACE_SECONDS`` to end by themselves (a ringcomm rank in a call gets an error naming
the failed rank within milliseconds, and prints it), then get SIGTERM, then SIGKILL after the
same grace, and the launcher exits with the first failure's code.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

from .rank_output import Printer

FAILURE_GRACE_SECONDS = 1.0  # after a rank fails: the others' own errors (ringcomm names
                             # the failed rank within ms) before they get SIGTERM
STOP_GRACE_SECONDS = 5.0     # after SIGTERM (or a forwarded signal), before SIGKILL
ABANDON_SECONDS = 5.0    # after SIGKILL: how long a remote host may take to confirm it
START_LIMIT = 8          # ssh sessions starting at once (sshd's MaxStartups begins at 10)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
JOIN_SECONDS = 5.0       # for the output of every rank together, once all have exited
LINE_BYTES = 1 << 20     # a longer line of a remote agent's start-up is read in pieces


def say(message: str) -> None:
    """A launcher message on stderr; a closed terminal (SIGHUP) must not stop the cleanup."""
    try:
        print(f"ringcomm-launch: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class LocalRank:
    """A rank on this machine, leading its own process group."""

    host = "127.0.0.1"

    def __init__(self, rank: int, command: Sequence[str], env: dict[str, str],
                 cwd: str | None, printer: Printer, post) -> None:
        self.rank, self._command, self._env, self._cwd = rank, list(command), env, cwd
        self._printer, self._post = printer, post
        self.proc: subprocess.Popen | None = None
        self._pumps: list[threading.Thread] = []

    def describe(self) -> str:
        return self.host

    def start(self) -> None:
        self.proc = subprocess.Popen(self._command, env=self._env, cwd=self._cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self._pumps = [self._printer.pump(self.rank, self.proc.stdout, False),
                       self._printer.pump(self.rank, self.proc.stderr, True)]
        threading.Thread(target=lambda: self._post(("exit", self, self.proc.wait())),
                         daemon=True).start()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)   # the rank leads its process group
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass

    def join(self, deadline: float) -> None:
        """Wait for the rank's output to be copied, until ``deadline`` (time.monotonic())."""
        for t in self._pumps:
            t.join(max(0.0, deadline - time.monotonic()))


def exit_code(code: int) -> int:
    """A rank's status as a shell reports it: 128 + N for a rank killed by signal N."""
    return code if code >= 0 else 128 - code


def describe_code(code: int | None) -> str:
    """``0``, ``3``, ``137 (SIGKILL)``; None: the rank never reported (its ssh was dropped)."""
    if code is None:
        return "unknown (no word from its host)"
    try:
        return f"{code} ({signal.Signals(code - 128).name})" if code > 128 else str(code)
    except ValueError:
        return str(code)


class Supervisor:
    """The one event loop of a job; a context manager that holds the signal handlers."""

    def __init__(self, printer: Printer | None = None) -> None:
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self._printer = printer
        self.signalled: int | None = None
        self._previous: dict[int, object] = {}
        self._stash: list[tuple] = []

    def __enter__(self) -> Supervisor:
        for sig in SIGNALS:   # SimpleQueue.put is safe inside a signal handler
            self._previous[sig] = signal.signal(sig, lambda n, _f: self.events.put(("signal", n)))
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def post(self, event: tuple) -> None:
        self.events.put(event)

    def _next(self, until: float | None) -> tuple | None:
        if self._stash:
            return self._stash.pop(0)
        wait = 0.5 if until is None else max(0.0, min(0.5, until - time.monotonic()))
        try:
            return self.events.get(timeout=wait)
        except queue.Empty:
            return None

    def _on_signal(self, sig: int) -> bool:
        """Record a signal; True when it is the first."""
        if self.signalled is None:
            self.signalled = sig
            return True
        return False

    def start_remote(self, ranks: Sequence, wait_seconds: float) -> list[str]:
        """Start every remote rank's session (at most START_LIMIT connecting at once) and
        wait for each agent's report; the failures, in words (none: every host is ready).
        Stops early, with no failures, when a signal arrives (``self.signalled``)."""
        pending, starting, failures, failed = list(ranks), {}, [], set()
        while pending or starting:
            while pending and len(starting) < START_LIMIT:
                r = pending.pop(0)
                try:
                    r.start()
                except (OSError, RuntimeError) as e:   # RuntimeError: no thread to spare
                    failures.append(f"cannot run ssh for host {r.describe()}: {e}; install "
                                    "OpenSSH's client, or put its ssh first on PATH")
                    failed.add(r)
                    continue
                starting[r] = time.monotonic() + wait_seconds
            if not starting:
                break
            event = self._next(min(starting.values()))
            now = time.monotonic()   # each host's deadline holds however many events come
            for r in [r for r, t in starting.items() if now >= t]:
                failures.append(r.failure(None, wait_seconds))
                failed.add(r)
                del starting[r]
            if event is None:
                pass
            elif event[0] == "signal":
                if self._on_signal(event[1]):
                    say(f"got {signal.Signals(event[1]).name} while starting; stopping")
                    return failures
            elif event[0] == "ready" and event[1] in starting:
                del starting[event[1]]
                if not event[2].get("ok"):
                    failures.append(event[1].failure(None))
                    failed.add(event[1])
            elif event[0] == "exit" and event[1] in starting:
                del starting[event[1]]
                failures.append(event[1].failure(event[2]))
                failed.add(event[1])
            elif event[0] == "exit" and event[1] not in failed:
                failures.append(f"host {event[1].describe()}: rank {event[1].rank}'s start-up "
                                f"ended (exit code {event[2]}) before the job began")
                self._stash.append(event)
        return failures

    def abort(self, ranks: Sequence) -> None:
        """Stop ranks that were started but never given ``go``: end their control lines,
        wait for their sessions, then kill the ssh clients still there."""
        for r in ranks:
            r.close()

        def alive() -> list:
            return [r for r in ranks if r.proc is not None and r.proc.poll() is None]
        deadline = time.monotonic() + ABANDON_SECONDS
        while alive() and time.monotonic() < deadline:
            self._next(min(deadline, time.monotonic() + 0.05))
        for r in alive():
            r.abandon()

    def run(self, ranks: Sequence) -> int:
        """Supervise started ranks until every one has exited; the launcher's exit code."""
        alive, status, codes, dropped = set(ranks), 0, {}, set()
        for r in ranks:
            if getattr(r, "proc", None) is None:
                alive.discard(r)
        term_at = kill_at = abandon_at = give_up_at = None
        forced = False   # some rank had to be killed

        def stop(sig: int) -> None:
            nonlocal kill_at
            for r in alive:
                r.signal(sig)
            if kill_at is None:
                kill_at = time.monotonic() + STOP_GRACE_SECONDS

        while alive:
            due = [t for t in (term_at, kill_at, abandon_at, give_up_at) if t is not None]
            event = self._next(min(due) if due else None)
            now = time.monotonic()
            if event is not None and event[0] == "exit" and event[1] in alive:
                r, code = event[1], event[2]
                alive.discard(r)
                codes[r] = None if r in dropped else exit_code(code)
                # after a signal of ours every rank ends non-zero: nobody failed
                if code != 0 and status == 0 and self.signalled is None:
                    status = exit_code(code)
                    lost = (" (ssh's code for a lost connection, unless the rank exited with "
                            "it)" if code == 255 and r.describe() != "127.0.0.1" else "")
                    say(f"rank {r.rank} failed first (exit code {describe_code(status)}) on host "
                        f"{r.describe()}{lost}; stopping the other ranks")
                    term_at = now + FAILURE_GRACE_SECONDS
                    if self._printer is not None:
                        self._printer.reveal(r.rank)   # its output, if --output-ranks hid it
            elif event is not None and event[0] == "signal":
                if self._on_signal(event[1]):
                    say(f"got {signal.Signals(event[1]).name}; sending it to every rank "
                        f"(SIGKILL after {STOP_GRACE_SECONDS:g} s)")
                    stop(event[1])
                else:
                    say(f"got {signal.Signals(event[1]).name} again; killing every rank")
                    kill_at = now
            if term_at is not None and now >= term_at and kill_at is None:
                stop(signal.SIGTERM)
            if kill_at is not None and now >= kill_at and abandon_at is None:
                forced = forced or bool(alive)
                for r in alive:
                    r.kill()
                abandon_at = now + ABANDON_SECONDS
            if abandon_at is not None and now >= abandon_at and give_up_at is None:
                for r in alive:
                    say(f"rank {r.rank} on host {r.describe()}: no word after SIGKILL; "
                        "dropping its ssh session (its processes there may still run)")
                    r.abandon()
                    dropped.add(r)
                give_up_at = now + ABANDON_SECONDS
            if give_up_at is not None and now >= give_up_at:
                break
        joined = time.monotonic() + JOIN_SECONDS
        for r in ranks:
            r.join(joined)
        if status or forced:   # a signal's exit codes are no news, unless it was not obeyed
            say("exit codes: " + ", ".join(
                f"rank {r.rank} on host {r.describe()}: {describe_code(codes.get(r))}"
                for r in ranks))
        if self.signalled is not None:
            return 128 + self.signalled
        return status
