"""Helpers to run rank scripts as real processes (for tests that kill, stop or launch them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ringcomm.launch import localhost_hostfile
from ringcomm.transports.hostfile import write_hostfile

ROOT = Path(__file__).resolve().parent.parent


def env(**extra: str) -> dict[str, str]:
    """The environment a rank process needs to import this checkout."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1", **extra)


def start_ranks(tmp_path: Path, size: int, script: str, connections: int = 1,
                **extra: str) -> list[subprocess.Popen]:
    """Start ``size`` ranks running ``script`` with MLX_RANK/MLX_HOSTFILE set."""
    hostfile = tmp_path / "hostfile.json"
    write_hostfile(hostfile, localhost_hostfile(size, connections))
    code = textwrap.dedent(script)
    return [subprocess.Popen([sys.executable, "-c", code],
                             env=env(MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile), **extra),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(size)]


def launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m ringcomm.launch ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "ringcomm.launch", *args], env=env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


class ReportingRank:
    """A rank process (``proc``, ``name``) whose last stdout line is a JSON report."""

    proc: subprocess.Popen
    name: str

    def result(self, timeout: float) -> dict:
        """The rank's last JSON line, and its stderr; a rank still running after ``timeout``
        or printing nothing fails the test (a bare Python exception prints no JSON)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"{self.name} was still running {timeout} s later: {out} {err}")
        lines = out.strip().splitlines()
        assert lines, f"{self.name} printed nothing (exit {self.proc.returncode}): {err}"
        return json.loads(lines[-1]) | {"stderr": err}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
