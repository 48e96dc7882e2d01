"""ringcomm is typed (PEP 561): mypy --strict passes on a user program that calls every public
function, and catches an async_op=True result used as an array."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.procs import ROOT, env

PROGRAM = ROOT / "tests" / "typing" / "user_program.py"


def test_mypy_strict_on_a_user_program(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         str(tmp_path / "cache"), "--follow-imports=silent", str(PROGRAM)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env())
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    flagged = {int(line.split(":")[1]) for line in errors}
    text = PROGRAM.read_text().splitlines()
    expected = {n for n, line in enumerate(text, 1) if line.rstrip().endswith(
        ("# E: a Work, not an array", "# E: an array, not a Work"))}
    assert len(expected) == 2
    assert flagged == expected, done.stdout + done.stderr
