"""ringcomm.patch_mlx(): MLX's own distributed layers and helpers, unchanged, on ringcomm.

The layer and memory checks run on real localhost ranks (2 and 4 processes over TCP); the
memory check also runs on MLX's own ring backend, whose figures ringcomm's must match.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

mx = pytest.importorskip("mlx.core", reason="MLX is not installed (pip install -e '.[mlx]'): "
                         "patch_mlx patches MLX")

import ringcomm  # noqa: E402
from ringcomm import mlx_patch  # noqa: E402
from tests import mlx_lm_work  # noqa: E402
from tests.procs import ROOT, env  # noqa: E402

SIZES = [2, 4]


def test_importing_ringcomm_imports_no_mlx():
    code = ("import sys, ringcomm; ringcomm.patch_mlx; ringcomm.unpatch_mlx; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlx'))")
    out = subprocess.run([sys.executable, "-c", code], env=env(), cwd=ROOT, timeout=120,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_patch_replaces_every_name_and_unpatch_restores_mlx_exactly():
    originals = {name: getattr(mx.distributed, name) for name in mlx_patch.NAMES}
    mlx_world = mx.distributed.init()  # MLX's own group (one rank: nothing is configured)
    group = ringcomm.init()  # nothing configured in the test process: a group of one rank
    try:
        assert ringcomm.patch_mlx(group) is group
        assert ringcomm.patch_mlx(group) is group  # idempotent: MLX's functions kept once
        for name in mlx_patch.NAMES:
            assert getattr(mx.distributed, name) is getattr(mlx_patch, name), name
        assert mx.distributed.init() is group and mx.distributed.init(backend="ring") is group
        assert mx.distributed.is_available()
        x = mx.arange(6, dtype=mx.float32).reshape(2, 3)
        y = mx.distributed.all_sum(x, stream=mx.cpu)
        assert y is not x and mx.array_equal(y, x)
        assert mx.distributed.all_gather(mx.array(3.0)).shape == (1,)  # 0-d: shape (size,)
        assert mx.distributed.all_sum([1.0, 2.0]).tolist() == [1.0, 2.0]  # array-likes too
        # a real MLX group still goes to MLX's own function
        assert mx.distributed.all_sum(x, group=mlx_world) is not None
        with pytest.raises(TypeError, match="ringcomm.Group or an mx.distributed.Group"):
            mx.distributed.all_sum(x, group="world")
        with pytest.raises(ringcomm.ConfigError, match="one rank"):
            mx.distributed.init(strict=True)
    finally:
        ringcomm.unpatch_mlx()
        ringcomm.unpatch_mlx()  # a second unpatch is a no-op
        group.close()
    for name, fn in originals.items():
        assert getattr(mx.distributed, name) is fn, name
    assert not mlx_patch.is_patched()
    assert type(mx.distributed.init()).__module__.startswith("mlx")


def test_collectives_inside_mx_compile_raise_and_the_pieces_around_them_compile():
    group = ringcomm.init()
    ringcomm.patch_mlx(group)
    try:
        x = mx.arange(4, dtype=mx.float32)
        with pytest.raises(ringcomm.EagerCollectiveError, match="mx.compile"):
            mx.compile(lambda v: mx.distributed.all_sum(v * 2))(x)
        # the documented workaround: compile the work on either side of the collective
        before, after = mx.compile(lambda v: v * 2), mx.compile(lambda v: v + 1)
        assert after(mx.distributed.all_sum(before(x))).tolist() == [1.0, 3.0, 5.0, 7.0]
    finally:
        ringcomm.unpatch_mlx()
        group.close()


@pytest.mark.parametrize("size", SIZES)
def test_mlx_distributed_layers_and_helpers_run_unchanged(clusters, size):
    """shard_linear (plain and quantized), shard_inplace, fully_shard, the backward pass
    through sum_gradients, average_gradients, clip_grad_norm_sharded, the raw collectives,
    send/recv/recv_like and Group.split, against the unsharded layers and exact sums."""
    for rank, res in enumerate(clusters.get(size).run(mlx_lm_work.mlx_layers, 7)):
        assert res.pop("init_is_group") and res.pop("send_returns_input"), rank
        assert res.pop("split") == (1, 0, True), rank
        assert res.pop("split_reordered") == (size - 1 - rank, 0.0), rank
        for name, diff in res.items():
            assert diff < 1e-4, (rank, name, diff)


@pytest.mark.parametrize("elements", [1024, 1 << 21], ids=["4KiB", "8MiB"])
def test_all_sum_result_is_donated_and_allocated_once_as_in_mlx(clusters, elements):
    """MLX's own test_donation, run on MLX's ring and on ringcomm: the same peak after an
    all_sum, and after ``all_sum(x) * s`` once the previous result is released (the product
    takes the result's buffer over).  MLX's test as written keeps the previous ``y`` alive
    while the next call runs: an eager call holds one more result then (documented)."""
    mine = clusters.get(2).run(mlx_lm_work.donation, elements)
    theirs = clusters.get(2, impls=("mlx", "mlx")).run(mlx_lm_work.donation, elements)
    for rank, (got, want) in enumerate(zip(mine, theirs)):
        assert got["all_sum_only"] == want["all_sum_only"], (rank, got, want)
        assert got["released_first"] == want["released_first"] == want["result_bytes"], \
            (rank, got, want)
        assert want["with_binary"] == want["all_sum_only"], want
        assert got["with_binary"] == got["all_sum_only"] + got["result_bytes"], got
