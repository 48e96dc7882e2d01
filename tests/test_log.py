"""The ``ringcomm`` log (issue 31 item 2), on real processes: a rank waiting for a peer that
never comes says what it waits for after ~5 s, through the program's logging when it has a
handler and not at all when it raised the logger's level; RINGCOMM_LOG=debug shows set-up and
each operation's plan; a misspelled setting is named with the closest known one."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

from ringcomm.launch import localhost_devices, localhost_hostfile
from ringcomm.ports import free_ports
from tests.procs import env, launch, start_ranks

INIT = """
import logging, sys, ringcomm
{setup}
print("init", file=sys.stderr, flush=True)
try:
    ringcomm.init(strict=True)
except ringcomm.RingcommError as e:
    print("failed:", type(e).__name__, file=sys.stderr, flush=True)
"""


class Rank:
    """A process running ``INIT``; its stderr lines with the seconds since it said "init"."""

    def __init__(self, setup: str = "", **extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", INIT.format(setup=setup)],
                                     env=env(**extra), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.started: float | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            now = time.monotonic()
            if line.strip() == "init":
                self.started = now
            elif self.started is not None:
                self.lines.append((now - self.started, line.rstrip("\n")))

    def first(self, pattern: str, within: float) -> tuple[float, str]:
        """The first line matching ``pattern``, waited for up to ``within`` s after "init"."""
        end = time.monotonic() + within + 30  # (+ the interpreter's start under load)
        while time.monotonic() < end:
            for at, line in list(self.lines):
                if re.search(pattern, line):
                    return at, line
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}: {self.lines}")

    def end(self) -> list[str]:
        """Its stderr lines, once it has ended (at its RINGCOMM_TIMEOUT)."""
        self.proc.wait(60)
        self.reader.join(5)
        return [line for _, line in self.lines]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def ring_env(tmp_path, name: str, rank: int, **extra: str) -> dict[str, str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([[str(a) for a in entry]
                                for entry in localhost_hostfile(2, 1, free_ports(1)[0])]))
    return dict(MLX_RANK=str(rank), MLX_HOSTFILE=str(path), **extra)


def test_a_rank_waiting_for_a_peer_that_never_comes_says_so_after_5_s(tmp_path):
    """Every set-up wait: the ring's accept (rank 0) and connect (rank 1), the rendezvous'
    gathering (rank 0) and joining (rank 1), the RDMA side channel's connect; each alone."""
    port = free_ports(2)
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps(localhost_devices(2, 1, "emulated0")))
    accepting = ring_env(tmp_path, "a", 0)
    connecting = ring_env(tmp_path, "c", 1)
    ranks = {
        "accept": (Rank(**accepting, RINGCOMM_TIMEOUT="10"),
                   r"^ringcomm: rank 0: waiting for rank 1 at 127\.0\.0\.1:\d+ "
                   r"\(RINGCOMM_TIMEOUT=10 s, [45] s left\)$"),
        "connect": (Rank(**connecting, RINGCOMM_TIMEOUT="10"),
                    r"^ringcomm: rank 1: waiting for rank 0 at 127\.0\.0\.1:\d+ "
                    r"\(RINGCOMM_TIMEOUT=10 s, [45] s left\)$"),
        "gather": (Rank(RANK="0", WORLD_SIZE="3", MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(port[0]), RINGCOMM_TIMEOUT="10"),
                   r"^ringcomm: rank 0: waiting for ranks 1, 2 to join the rendezvous at "
                   rf"127\.0\.0\.1:{port[0]} \(RINGCOMM_TIMEOUT=10 s"),
        "join": (Rank(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port[1]), RINGCOMM_TIMEOUT="10"),
                 r"^ringcomm: rank 1: waiting for rank 0 and every other rank at the "
                 rf"rendezvous 127\.0\.0\.1:{port[1]} \(RINGCOMM_TIMEOUT=10 s"),
        "coordinator": (Rank("import sys; sys.argv = ['x']", MLX_RANK="1",
                             MLX_IBV_DEVICES=str(devices), RINGCOMM_BACKEND="rdma",
                             MLX_JACCL_COORDINATOR=f"127.0.0.1:{free_ports(1)[0]}",
                             RINGCOMM_VERBS="emulated", RINGCOMM_TIMEOUT="10"),
                        r"^ringcomm: rank 1: waiting for rank 0 \(the coordinator\) at "
                        r"127\.0\.0\.1:\d+ \(RINGCOMM_TIMEOUT=10 s"),
    }
    try:
        for name, (rank, pattern) in ranks.items():
            at, line = rank.first(pattern, 7)
            assert 4 <= at <= 7, (name, at, line)  # (the "init" mark may be read late)
        for name, (rank, _) in ranks.items():  # one line until 10 s: the next is due at 10 s
            lines = rank.end()
            assert sum("waiting for" in line for line in lines) == 1, (name, lines)
            assert lines[-1].startswith("failed: CommTimeoutError"), (name, lines)
    finally:
        for rank, _ in ranks.values():
            rank.kill()


def test_the_waiting_line_follows_the_programs_logging(tmp_path):
    """A program with a handler gets the line there, in its format, once; a program that
    raised the logger's level gets none, as from any logger."""
    own = Rank("logging.basicConfig(format='APP %(name)s %(levelname)s %(message)s')",
               **ring_env(tmp_path, "own", 0, RINGCOMM_TIMEOUT="6"))
    quiet = Rank("logging.getLogger('ringcomm').setLevel(logging.ERROR)",
                 **ring_env(tmp_path, "quiet", 0, RINGCOMM_TIMEOUT="6"))
    try:
        lines = own.end()
        waiting = [line for line in lines if "waiting for" in line]
        assert len(waiting) == 1 and waiting[0].startswith(
            "APP ringcomm WARNING rank 0: waiting for rank 1 at 127.0.0.1:"), lines
        assert quiet.end() == ["failed: CommTimeoutError"]
    finally:
        own.kill()
        quiet.kill()


DEBUGGED = """
import numpy as np, ringcomm
g = ringcomm.init()
ringcomm.all_sum(np.ones(4, np.float32))
g.close()
"""


def test_ringcomm_log_debug_shows_set_up_and_each_plan(tmp_path):
    debug = start_ranks(tmp_path, 2, DEBUGGED, RINGCOMM_LOG="debug")
    plain = start_ranks(tmp_path / "..", 2, DEBUGGED)
    for rank, p in enumerate(debug):
        _, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        for line in (f"ringcomm debug: rank {rank} of 2: listening on 127.0.0.1:",
                     f"ringcomm debug: rank {rank}: connected to rank {1 - rank} (left)",
                     f"ringcomm debug: rank {rank}: connected to rank {1 - rank} (right)",
                     f"ringcomm debug: rank {rank} of 2: init done (backend='tcp', "
                     f"rank={rank}, timeout=300 s, protocol='ringcomm'",
                     f"ringcomm debug: rank {rank}: all_sum float32 (4,): 1 stream(s), "
                     "1 step(s), 16 bytes out and 16 in over left/right connection(s) 0"):
            assert line in stderr, (line, stderr)
    for p in plain:  # at the default level: nothing
        _, stderr = p.communicate(timeout=60)
        assert p.returncode == 0 and stderr == "", stderr


def test_a_misspelled_setting_is_named_with_the_closest_known_one():
    ringcomm_like = dict(RINGCOMM_TIMOUT="5", MLX_HOSTFIEL="h.json", RINGCOMM_FROBNICATE="1",
                         # not misspellings: internal variables, MLX's own, test knobs
                         RINGCOMM_IPROUTE="/x", RINGCOMM_EMULATED_LOSS="0",
                         MLX_METAL_FAST_SYNCH="1", MLX_RING_VERBOSE="1")
    result = subprocess.run([sys.executable, "-c", "import ringcomm; ringcomm.init()"],
                            env=env(**ringcomm_like), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stderr.splitlines()) == [
        "ringcomm: MLX_HOSTFIEL is not a ringcomm setting and is ignored; did you mean "
        "MLX_HOSTFILE?",
        "ringcomm: RINGCOMM_FROBNICATE is not a ringcomm setting and is ignored; "
        "docs/settings.md lists them",
        "ringcomm: RINGCOMM_TIMOUT is not a ringcomm setting and is ignored; did you mean "
        "RINGCOMM_TIMEOUT?"], result.stderr


def test_under_the_launcher_a_misspelled_setting_is_said_once():
    result = launch("-n", "2", "--env", "RINGCOMM_TIMOUT=5", "examples/allsum.py")
    assert result.returncode == 0, result
    said = [line for line in (result.stdout + result.stderr).splitlines()
            if "RINGCOMM_TIMOUT is not a ringcomm setting" in line]
    assert len(said) == 1 and "did you mean RINGCOMM_TIMEOUT?" in said[0], result
