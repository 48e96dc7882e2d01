"""Issue 31 item 5: the launcher passes a rank's output on as it comes (partial lines and
``\\r`` progress included), keeps prefixes readable, never lets two ranks share a line, and
offers mpirun's and torchrun's output switches (--no-tag-output, --output-ranks)."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from tests.procs import ROOT, env, launch

# rank 0 draws a progress bar on stderr and then waits (it never ends a line by itself)
PROGRESS = """
import sys, time
sys.stderr.write("\\rstep 1/3"); sys.stderr.flush()
sys.stderr.write("\\rstep 2/3"); sys.stderr.flush()
time.sleep(60)
"""


def read_until(fd: int, wanted: bytes, seconds: float) -> bytes:
    """What ``fd`` gives until ``wanted`` shows up or ``seconds`` pass (bounded reads)."""
    got, deadline = b"", time.monotonic() + seconds
    while wanted not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        got += chunk
    return got


def test_a_progress_bar_shows_before_the_rank_ends_with_its_prefix(tmp_path):
    script = tmp_path / "progress.py"
    script.write_text(PROGRESS)
    launcher = subprocess.Popen([sys.executable, "-m", "ringcomm.launch", "-n", "1",
                                 str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env(), cwd=ROOT)
    try:
        start = time.monotonic()
        got = read_until(launcher.stderr.fileno(), b"2/3", 10)
        seconds = time.monotonic() - start
        assert launcher.poll() is None       # the rank is still sleeping: it came as it was
        # every \r redraws the line with the prefix in front
        assert got == b"\r[0] step 1/3\r[0] step 2/3", got
        print(f"\npartial line shown {seconds:.2f} s after the launcher started")
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.communicate(timeout=30)


# rank 0 leaves a line unfinished for a second; rank 1 prints a whole line meanwhile
INTERLEAVE = """
import os, sys, time
if os.environ["MLX_RANK"] == "0":
    sys.stdout.write("half"); sys.stdout.flush(); time.sleep(1.5)
    sys.stdout.write(" and the rest\\n")
else:
    time.sleep(0.5); print("whole line")
"""


def test_ranks_never_share_a_line_with_or_without_prefixes(tmp_path):
    script = tmp_path / "interleave.py"
    script.write_text(INTERLEAVE)
    tagged = launch("-n", "2", str(script))
    assert tagged.returncode == 0, tagged.stderr
    # rank 0's unfinished line is ended for rank 1's, and its rest gets its prefix again
    assert tagged.stdout == "[0] half\n[1] whole line\n[0]  and the rest\n", tagged.stdout
    bare = launch("-n", "2", "--no-tag-output", str(script))
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout == "half\nwhole line\n and the rest\n", bare.stdout
    assert launch("-n", "2", "--tag-output", str(script)).stdout == tagged.stdout


SHOW_SOME = """
import os, sys
rank = os.environ["MLX_RANK"]
print("hello from", rank)
if rank == os.environ["FAIL"]:
    print("the reason rank 2 gives up", file=sys.stderr)
    sys.exit(3)
"""


def test_output_ranks_shows_one_rank_and_a_hidden_rank_s_failure(tmp_path):
    script = tmp_path / "some.py"
    script.write_text(SHOW_SOME)
    quiet = launch("-n", "3", "--output-ranks", "1", "--env", "FAIL=none", str(script))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "[1] hello from 1\n" and quiet.stderr == "", quiet
    failed = launch("-n", "3", "--output-ranks", "0", "--env", "FAIL=2", str(script))
    assert failed.returncode == 3
    assert "[1]" not in failed.stdout + failed.stderr, failed
    assert "rank 2 failed first (exit code 3)" in failed.stderr
    assert "[2] the reason rank 2 gives up" in failed.stderr, failed.stderr  # its tail, shown
    wrong = launch("-n", "2", "--output-ranks", "2", str(script))
    assert wrong.returncode == 2 and "the job has ranks 0 to 1" in wrong.stderr
    assert wrong.stdout == ""
    assert launch("-n", "2", "--output-ranks", "x", str(script)).returncode == 2
