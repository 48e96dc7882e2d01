"""``python -m ringcomm``: the report a new user runs first, on real processes."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.procs import ROOT, env


def doctor(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringcomm", *args], env=env(**extra),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_reports_versions_transports_settings_and_a_passing_self_test():
    done = doctor(RINGCOMM_SPIN_US="10", RINGCOMM_TOKEN="secret")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for line in ("ringcomm ", "numpy ", "tcp ", "rdma, verbs emulated", "an emulation, not RDMA",
                 "RINGCOMM_SPIN_US", "2 ranks on 127.0.0.1 over TCP", "verdict: ready"):
        assert line in out, out
    assert "secret" not in out  # a token is said to be set, never shown
    assert re.search(r"RINGCOMM_TOKEN +\(set\)", out), out


def test_a_failing_self_test_is_a_verdict_and_exit_1():
    # an invalid setting reaches the self-test's ranks: they fail with its ConfigError
    done = doctor(RINGCOMM_SPIN_US="abc")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "invalid: " in done.stdout and "RINGCOMM_SPIN_US" in done.stdout
    assert "rank 0 failed" in done.stdout and "verdict: NOT ready" in done.stdout


def test_version_and_no_self_test():
    done = doctor("--version")
    assert done.returncode == 0 and done.stdout.startswith("ringcomm ")
    done = doctor("--no-self-test")
    assert done.returncode == 0 and "self-test" not in done.stdout and "versions" in done.stdout
