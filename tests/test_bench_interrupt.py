"""Ctrl-C during ``ringcomm-bench -n 2``, on real processes: the sizes that finished are
printed and written, the exit is 130 with one line and no traceback, and no rank is left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.procs import ROOT, env

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc for leftovers")

# --progress 0: rank 0 says so as each size finishes, and the signal follows the first one;
# the sweep goes on long past it (up to 256 MiB), so the stop always cuts it short
SWEEP = ["-n", "2", "-b", "1M", "-e", "256M", "-f", "4", "-w", "1", "--iters", "20",
         "--progress", "0"]


def processes_marked(marker: str) -> list[str]:
    """The command lines of the processes whose environment holds ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("to_group", [True, False], ids=["process-group", "bench-alone"])
def test_ctrl_c_keeps_what_finished_and_exits_130(tmp_path, to_group):
    out = tmp_path / "r.jsonl"
    marker = f"BENCH_TEST_MARK={uuid.uuid4().hex}"
    bench = subprocess.Popen(
        [sys.executable, "-m", "ringcomm.bench", *SWEEP, "--output", str(out)], cwd=ROOT,
        env=env(BENCH_TEST_MARK=marker.split("=")[1]), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)  # its group, as a shell's job
    try:
        seen = ""
        while "B done in" not in seen:  # the first size has been measured
            line = bench.stderr.readline()
            assert line, f"the bench ended before measuring a size: {seen}"
            seen += line
        if to_group:
            os.killpg(bench.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        else:
            bench.send_signal(signal.SIGINT)
        sent = time.monotonic()
        stdout, rest = bench.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    stderr = seen + rest
    assert bench.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert processes_marked(marker) == [], "ranks or a launcher were left running"
    assert took < 20, f"stopping took {took:.1f} s"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    table = [line.split() for line in stdout.splitlines() if not line.startswith("#")]
    assert rows and [int(cells[0]) for cells in table] == [r["bytes"] for r in rows]
    assert rows[0]["bytes"] == 1 << 20 and rows[-1]["bytes"] < 256 << 20, "not cut short"
    for cells, row in zip(table, rows):
        assert float(cells[4]) == pytest.approx(row["time_us"], abs=0.06)
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last == (f"ringcomm-bench: stopped by SIGINT during the ringcomm pass; the "
                    f"{len(rows)} result(s) that finished are in the table above and written "
                    f"to {out}")
    after = stderr[len(seen):]  # what came after the first size: the stop, said once
    assert [line for line in after.splitlines() if "ringcomm-launch" in line] == [], after


def test_ctrl_c_under_the_launcher_keeps_what_rank_0_measured(tmp_path):
    """ringcomm-bench as the ranks of ringcomm-launch: rank 0 prints and writes what finished."""
    out = tmp_path / "r.jsonl"
    marker = uuid.uuid4().hex
    launcher = subprocess.Popen(
        [sys.executable, "-m", "ringcomm.launch", "-n", "2", "--", sys.executable, "-m",
         "ringcomm.bench", *SWEEP[2:], "--output", str(out)], cwd=ROOT,
        env=env(BENCH_TEST_MARK=marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        seen = ""
        while "B done in" not in seen:
            line = launcher.stderr.readline()
            assert line, f"the ranks ended before measuring a size: {seen}"
            seen += line
        os.killpg(launcher.pid, signal.SIGINT)
        stdout, rest = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    stderr = seen + rest
    assert launcher.returncode == 130, stderr
    assert "Traceback" not in stderr and processes_marked(marker) == []
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    table = [line.split()[1:] for line in stdout.splitlines() if not line.startswith("[0] #")]
    assert rows and [int(cells[0]) for cells in table] == [r["bytes"] for r in rows]
    assert rows[-1]["bytes"] < 256 << 20
    assert (f"[0] python -m ringcomm.bench: stopped by SIGINT; the {len(rows)} result(s) that "
            f"finished are in the table above and written to {out}") in stderr.splitlines()
