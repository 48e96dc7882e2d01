"""Small gaps an MLX user meets (issue 15, item 11): MLX's ``stream=`` keyword on every
collective, ``ringcomm.__version__``, and an ``import ringcomm`` that does not pay for
ml_dtypes (nor importlib.metadata) until a bfloat16 (or the version) is asked for."""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ringcomm
from tests.procs import ROOT, env

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None


def _stream():
    """A real MLX stream where MLX is installed (what MLX code passes), else any object."""
    try:
        import mlx.core as mx
    except ImportError:
        return object()
    return mx.default_stream(mx.cpu)


def every_call_with_stream(group) -> dict:
    """Rank side: each collective, module-level and as a Group method, with ``stream=``."""
    s = _stream()
    r, n = group.rank(), group.size()
    x = np.full(4, r + 1, np.float32)
    right, left = (r + 1) % n, (r - 1) % n
    out = {}
    for name, call in (("module", ringcomm), ("method", group)):
        kw = {"group": group} if call is ringcomm else {}
        out[name] = {
            "all_sum": call.all_sum(x, stream=s, **kw).tolist(),
            "all_max": call.all_max(x, stream=s, **kw).tolist(),
            "all_min": call.all_min(x, stream=s, **kw).tolist(),
            "all_gather": call.all_gather(x, stream=s, **kw).tolist(),
            "sum_scatter": call.sum_scatter(np.ones((n, 2), np.float32), stream=s,
                                            **kw).tolist(),
        }
        call.barrier(stream=s, **kw)
        if r % 2 == 0:
            call.send(x, right, stream=s, **kw)
            got = call.recv((4,), np.float32, left, stream=s, **kw)
            got_like = call.recv_like(x, left, stream=s, **kw)
            call.send(x, right, stream=s, **kw)
        else:
            got = call.recv((4,), np.float32, left, stream=s, **kw)
            call.send(x, right, stream=s, **kw)
            call.send(x, right, stream=s, **kw)
            got_like = call.recv_like(x, left, stream=s, **kw)
        out[name]["recv"], out[name]["recv_like"] = got.tolist(), got_like.tolist()
    return out


def test_every_collective_accepts_and_ignores_mlx_stream_keyword(clusters):
    n = 2
    for r, res in enumerate(clusters.get(n).run(every_call_with_stream)):
        for name in ("module", "method"):
            got = res[name]
            assert got["all_sum"] == [3.0] * 4 and got["all_max"] == [2.0] * 4, (r, got)
            assert got["all_min"] == [1.0] * 4, (r, got)
            assert got["all_gather"] == [1.0] * 4 + [2.0] * 4, (r, got)
            assert got["sum_scatter"] == [[2.0, 2.0]], (r, got)
            assert got["recv"] == got["recv_like"] == [float((r - 1) % n + 1)] * 4, (r, got)


def test_version_is_the_installed_metadata_and_pyproject_s():
    assert ringcomm.__version__ == importlib.metadata.version("ringcomm")
    from ringcomm._version import from_pyproject
    written = from_pyproject(ROOT / "pyproject.toml")
    assert written == ringcomm.__version__
    if tomllib is not None:
        with open(ROOT / "pyproject.toml", "rb") as f:
            assert tomllib.load(f)["project"]["version"] == written


def site_without_ringcomm(tmp_path: Path) -> Path:
    """A directory with the installed packages (numpy, ml_dtypes...) but no ringcomm
    distribution: what a checkout used without installing it sees."""
    site = tmp_path / "site"
    site.mkdir()
    installed = Path(np.__file__).resolve().parent.parent  # where numpy and the rest are
    for entry in installed.iterdir():
        if entry.name.lower().startswith(("ringcomm", "__editable__")) or entry.suffix == ".pth":
            continue
        (site / entry.name).symlink_to(entry)
    return site


def test_version_of_an_uninstalled_checkout_comes_from_its_pyproject(tmp_path):
    """A checkout on PYTHONPATH with no metadata anywhere: the version is its pyproject's."""
    site = site_without_ringcomm(tmp_path)
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "ringcomm", checkout / "ringcomm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for floor in ("transports", "layers", "benchmarks"):
        (checkout / floor).symlink_to(ROOT / floor)
    text = (ROOT / "pyproject.toml").read_text()
    (checkout / "pyproject.toml").write_text(
        text.replace(f'version = "{ringcomm.__version__}"', 'version = "9.9.9.dev0"', 1))
    code = ("import importlib.metadata as m, ringcomm, json\n"
            "try:\n    m.version('ringcomm'); installed = True\n"
            "except m.PackageNotFoundError:\n    installed = False\n"
            "print(json.dumps([ringcomm.__version__, installed, ringcomm.__file__]))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          env=dict(env(), PYTHONPATH=os.pathsep.join([str(checkout), str(site)])),
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    version, installed, where = json.loads(done.stdout)
    assert not installed and Path(where).is_relative_to(checkout), (installed, where)
    assert version == "9.9.9.dev0"


IMPORTS = """
import sys, json, time
start = time.perf_counter()
import ringcomm
seconds = time.perf_counter() - start
before = {m: m in sys.modules for m in ("ml_dtypes", "importlib.metadata", "mlx")}
import numpy as np
names = [d.name for d in ringcomm.SUPPORTED_DTYPES]
after_list = "ml_dtypes" in sys.modules
import ml_dtypes
x = np.arange(4, dtype=ml_dtypes.bfloat16)
ringcomm.init()
print(json.dumps({"before": before, "names": names, "after_list": after_list,
                  "sum": ringcomm.all_sum(x).astype(float).tolist(),
                  "in": np.dtype(ml_dtypes.bfloat16) in ringcomm.SUPPORTED_DTYPES,
                  "seconds": seconds}))
"""


def test_import_ringcomm_leaves_ml_dtypes_and_metadata_until_needed():
    done = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                          env=env(), cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["before"] == {"ml_dtypes": False, "importlib.metadata": False, "mlx": False}, res
    assert len(res["names"]) == 14 and res["names"][10] == "bfloat16" and res["after_list"], res
    assert res["in"] and res["sum"] == [0.0, 1.0, 2.0, 3.0], res
    print(f"import ringcomm: {res['seconds'] * 1e3:.0f} ms")


def test_membership_and_codes_do_not_import_ml_dtypes():
    code = ("import sys, numpy as np\nfrom ringcomm import dtypes\n"
            "assert np.dtype('float32') in dtypes.SUPPORTED_DTYPES\n"
            "assert np.dtype('float128') not in dtypes.SUPPORTED_DTYPES\n"
            "assert dtypes.DTYPE_CODES[np.dtype('complex64')] == 14\n"
            "assert dtypes.wire_dtype('>i4') == np.dtype('<i4')\n"
            "assert dtypes.reducer('max', np.dtype('float32')) is not None\n"
            "print('ml_dtypes' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env(), cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", (done.stdout, done.stderr)


def test_unsupported_dtypes_are_still_refused():
    with pytest.raises(TypeError, match="bfloat16"):
        ringcomm.dtypes.wire_dtype(np.dtype("float128") if hasattr(np, "float128")
                                   else np.dtype("U3"))
