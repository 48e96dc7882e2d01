"""A wheel built from the repository installs into a fresh virtual environment and runs the
main command outside the checkout: no source tree, no import hook, every floor inside it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.procs import ROOT


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A new venv holding only the wheel; numpy and ml_dtypes come from this environment's
    site-packages through a plain path line (which runs none of its .pth files, so the
    checkout's editable install is not visible there)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp / "dist"), str(ROOT)], capture_output=True, text=True,
                           timeout=300)  # (its build environment takes setuptools from PyPI)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp / "dist").glob("ringcomm-*.whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "-q", "--no-deps", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True).stdout.strip()
    deps = {Path(m.__file__).resolve().parent.parent for m in _deps()}
    Path(purelib, "deps-from-test-env.pth").write_text("\n".join(map(str, deps)) + "\n")
    return env_dir


def _deps():
    import ml_dtypes
    import numpy
    return numpy, ml_dtypes


def run(fresh: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(fresh / "bin" / "python"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_wheel_holds_every_floor_and_needs_no_checkout(fresh, tmp_path):
    done = run(fresh, "-c", "import sys, ringcomm, ringcomm.transports, ringcomm.bench; "
               "print(ringcomm.__file__); print(ringcomm.__version__); "
               "print('editable' in str(sys.meta_path).lower())", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, version, hooked = done.stdout.split()
    assert Path(where).is_relative_to(fresh) and not Path(where).is_relative_to(ROOT)
    assert version[0].isdigit() and hooked == "False"
    assert (Path(where).parent / "py.typed").exists()


def test_the_main_command_runs_from_the_installed_wheel(fresh, tmp_path):
    shutil.copy(ROOT / "examples" / "allsum.py", tmp_path / "allsum.py")
    done = run(fresh, "-m", "ringcomm.launch", "-n", "2", "allsum.py", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("(expected 3)") == 2, done.stdout
    doctor = run(fresh, "-m", "ringcomm", cwd=tmp_path)
    assert doctor.returncode == 0 and "verdict: ready" in doctor.stdout, doctor.stdout
