"""The localhost launcher: hostfile, environment, prefixed output, failure handling."""
from __future__ import annotations

import sys
import time

from tests.procs import launch

ALLSUM = """
import numpy as np, ringcomm, sys
g = ringcomm.init(strict=True)
print("sum", ringcomm.all_sum(np.array([g.rank() + 1], np.int64))[0], "of", g.size())
print("args", sys.argv[1:])
"""


def test_runs_every_rank_with_prefixed_output(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(ALLSUM)
    result = launch("-n", "3", "--connections-per-ip", "2", str(script), "a", "b")
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert lines == sorted([f"[{r}] sum 6 of 3" for r in range(3)]
                           + [f"[{r}] args ['a', 'b']" for r in range(3)])


def test_command_after_double_dash_env_and_starting_port(tmp_path):
    from ringcomm.launch import free_ports
    port = free_ports(1)[0]
    result = launch("-n", "2", "-p", str(port), "--env", "GREETING=hi", "--",
                    sys.executable, "-c",
                    "import os; print(os.environ['GREETING'], os.environ['MLX_RANK'], "
                    "open(os.environ['MLX_HOSTFILE']).read())")
    assert result.returncode == 0, result.stderr
    assert f'[0] hi 0 [["127.0.0.1:{port}"], ["127.0.0.1:{port + 1}"]]' in result.stdout
    assert "[1] hi 1" in result.stdout


def test_a_failing_rank_stops_the_others_and_the_exit_code_says_so(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import os, sys, time\n"
                      "print('started', flush=True)\n"
                      "if os.environ['MLX_RANK'] == '2':\n"
                      "    print('bad input', file=sys.stderr); sys.exit(3)\n"
                      "time.sleep(60)\n")
    start = time.monotonic()
    result = launch("-n", "4", str(script))
    assert result.returncode == 3
    assert time.monotonic() - start < 30, "the sleeping ranks were not stopped"
    assert "[2] bad input" in result.stderr
    assert "rank 2 failed first (exit code 3)" in result.stderr


def test_usage_errors():
    assert launch("-n", "2").returncode == 2
    assert launch("-n", "0", "x.py").returncode == 2
    assert launch("-n", "2", "--env", "NOEQUALS", "x.py").returncode == 2


def test_examples_run_on_four_ranks():
    for example in ("examples/allsum.py", "examples/selfcheck.py", "examples/demo.py"):
        result = launch("-n", "4", example)
        assert result.returncode == 0, (example, result.stdout, result.stderr)
        assert len(result.stdout.splitlines()) == 4, result.stdout
    assert "all right" in launch("-n", "3", "--connections-per-ip", "2",
                                 "examples/selfcheck.py").stdout


def test_ctrl_c_reaches_every_rank_and_the_exit_code_is_non_zero(tmp_path):
    import signal
    import subprocess

    from tests.procs import env
    script = tmp_path / "job.py"
    script.write_text("import numpy as np, ringcomm, time\n"
                      "g = ringcomm.init(strict=True)\n"
                      "ringcomm.barrier()\n"
                      "print('ready', flush=True)\n"
                      "if g.rank() == 1:\n"
                      "    time.sleep(60)\n"
                      "ringcomm.all_sum(np.ones(4))\n")
    launcher = subprocess.Popen([sys.executable, "-m", "ringcomm.launch", "-n", "3", str(script)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    for _ in range(3):
        assert "ready" in launcher.stdout.readline()
    time.sleep(0.3)
    start = time.monotonic()
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 130  # 128 + SIGINT, from the rank that stopped first
    assert time.monotonic() - start < 10, "the sleeping rank was not interrupted"
    assert "KeyboardInterrupt" in err and "failed first" in err, err
