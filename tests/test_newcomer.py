"""What a newcomer reaches for first: a clean ``dir(ringcomm)``, dtype names that work before
anything imported ml_dtypes (on real processes)."""
from __future__ import annotations

import subprocess
import sys

import ringcomm
from tests.procs import env, start_ranks


def test_dir_lists_the_public_api_and_nothing_else():
    names = dir(ringcomm)
    assert names == sorted(ringcomm.__all__)
    for public in ("all_sum", "broadcast", "init", "Work", "PeerLostError", "__version__"):
        assert public in names
    for internal in ("np", "Any", "Sequence", "group", "engine", "annotations", "_group"):
        assert internal not in names
    assert all(hasattr(ringcomm, name) for name in names)


def test_star_import_gives_the_public_api():
    done = subprocess.run([sys.executable, "-c", "from ringcomm import *; print(all_sum, Work, "
                           "__version__)"], env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_recv_by_the_name_bfloat16_before_ml_dtypes_is_imported(tmp_path):
    ranks = start_ranks(tmp_path, 2, """
        import sys
        import numpy as np
        import ringcomm
        g = ringcomm.init(strict=True, timeout=30)
        if g.rank() == 0:
            import ml_dtypes
            ringcomm.send(np.array([1.5, -2.0, 3.25], ml_dtypes.bfloat16), 1)
        else:
            assert "ml_dtypes" not in sys.modules  # nothing has imported it yet
            got = ringcomm.recv((3,), "bfloat16", 0)
            print(got.dtype, got.astype(np.float32).tolist())
        g.close()
    """)
    outs = [p.communicate(timeout=60) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outs
    assert outs[1][0].strip() == "bfloat16 [1.5, -2.0, 3.25]"


def test_patch_mlx_and_layers_without_mlx_say_how_to_install_it():
    code = """
import sys
sys.modules["mlx"] = sys.modules["mlx.core"] = None  # as on a machine without MLX
import ringcomm
for attempt in (ringcomm.patch_mlx, lambda: __import__("ringcomm.layers")):
    try:
        attempt()
    except ImportError as e:
        print(type(e).__name__, e)
"""
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert lines[0].startswith("ImportError patch_mlx needs MLX")
    assert lines[1].startswith("ImportError ringcomm.layers needs MLX")
    assert all("pip install '.[mlx]'" in line for line in lines)
