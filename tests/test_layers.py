"""layers/: sharded linear layers, gradients and average_gradients on 2 and 4 localhost ranks."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("mlx.core", reason="MLX is not installed (pip install -e '.[mlx]'): "
                    "the sharded layers are MLX modules")

from tests import layer_work  # noqa: E402  (needs mlx)
from tests.procs import ROOT, env  # noqa: E402

SIZES = [2, 4]


# (sharding, segments, quantized); a quantized weight's input axis is cut only whole, since
# each rank's slice must be a multiple of the quantization group size
CASES = [(sharding, segments, quantized)
         for sharding in ("all-to-sharded", "sharded-to-all")
         for segments in (1, 3, [0.25, 0.5])
         for quantized in (False, True)
         if not (quantized and sharding == "sharded-to-all" and segments != 1)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("sharding,segments,quantized", CASES,
                         ids=[f"{s}-{g}-{'q' if q else 'f'}" for s, g, q in CASES])
def test_sharded_linear_matches_the_unsharded_layer(clusters, size, sharding, segments, quantized):
    results = clusters.get(size).run(layer_work.forward_and_grads, sharding, segments, quantized,
                                     True, 0)
    for rank, res in enumerate(results):
        assert res["type"].startswith("Quantized") == quantized
        assert res["out"] < 1e-4 and res["dx"] < 1e-3, (rank, res)
        if not quantized:
            assert res["dw"] < 1e-3, (rank, res)


@pytest.mark.parametrize("size", SIZES)
def test_layers_without_bias(clusters, size):
    for sharding in ("all-to-sharded", "sharded-to-all"):
        for res in clusters.get(size).run(layer_work.forward_and_grads, sharding, 1, False,
                                          False, 1):
            assert res["out"] < 1e-4 and res["dx"] < 1e-3 and res["dw"] < 1e-3, res


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("all_reduce_size,calls", [(0, 4), (1, 4), (200, 2), (32 * 1024**2, 1)])
def test_average_gradients_batches_and_averages(clusters, size, all_reduce_size, calls):
    # leaves of 15, 40, 4 and 7 float32 (60, 160, 16, 28 bytes): with 200 bytes, [a, b0] then [b1, d]
    for res in clusters.get(size).run(layer_work.average, all_reduce_size, None, False):
        assert len(res["calls"]) == calls, res
        assert max(res["errors"].values()) < 1e-5, res


@pytest.mark.parametrize("size", SIZES)
def test_average_gradients_bfloat16_on_the_wire_and_mixed_dtypes(clusters, size):
    for res in clusters.get(size).run(layer_work.average, 32 * 1024**2, "bfloat16", False):
        assert len(res["calls"]) == 1 and max(res["errors"].values()) < 0.05, res
        assert set(res["dtypes"].values()) == {"mlx.core.float32"}, res  # cast back
    for res in clusters.get(size).run(layer_work.average, 32 * 1024**2, None, True):
        assert len(res["calls"]) == 2, res  # one batch per dtype
        assert res["dtypes"]["b.1"] == "mlx.core.float16" and max(res["errors"].values()) < 1e-2


@pytest.mark.parametrize("size", SIZES)
def test_data_parallel_sgd_equals_single_process_training(clusters, size):
    for diff in clusters.get(size).run(layer_work.data_parallel_sgd):
        assert diff < 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_layers_run_unchanged_over_rdma_emulated(clusters, size):
    """The same layer code over the RDMA transport on the verbs emulation (no RDMA here)."""
    cluster = clusters.get(size, 1, ("rdma-emulated",) * size)
    assert all(diff < 1e-5 for diff in cluster.run(layer_work.data_parallel_sgd))
    for rank, res in enumerate(cluster.run(layer_work.forward_and_grads, "all-to-sharded", 3,
                                           True, True, 0)):
        assert res["type"].startswith("Quantized") and res["out"] < 1e-4 and res["dx"] < 1e-3, \
            (rank, res)


def launch_example(path, ranks: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringcomm.launch", "-n", str(ranks), str(path)],
                          capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)


@pytest.mark.parametrize("ranks", SIZES)
@pytest.mark.parametrize("example", ["tp_inference.py", "dp_training.py"])
def test_examples_pass_their_checks(example, ranks):
    result = launch_example(ROOT / "examples" / example, ranks)
    assert result.returncode == 0 and result.stdout.count("check passed") == ranks, result


def test_a_script_for_mlx_layers_runs_with_only_the_import_and_group_changed(tmp_path):
    """examples/tp_inference.py, turned back into a script for MLX's own layers and ring,
    passes too: the two differ in those two lines only."""
    ours = (ROOT / "examples" / "tp_inference.py").read_text()
    theirs = ours.replace("from ringcomm.layers import shard_linear, shard_inplace",
                          "from mlx.nn.layers.distributed import shard_linear, shard_inplace")
    theirs = theirs.replace("group = ringcomm.init(strict=True)",
                            'group = mx.distributed.init(strict=True, backend="ring")')
    changed = [a for a, b in zip(ours.splitlines(), theirs.splitlines()) if a != b]
    assert len(changed) == 2, changed
    script = tmp_path / "tp_inference_mlx.py"
    script.write_text(theirs)
    result = launch_example(script, 2)
    assert result.returncode == 0 and result.stdout.count("check passed") == 2, result


def test_importing_ringcomm_does_not_import_mlx():
    code = "import sys, ringcomm, numpy as np; ringcomm.all_sum(np.ones(2)); print('mlx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env(), check=True).stdout.strip() == "False"


MLX_ARRAYS = """
import mlx.core as mx, numpy as np, ringcomm
g = ringcomm.init(strict=True, timeout=60)
r = g.rank()
out = []
for dt in (mx.bool_, mx.int8, mx.uint32, mx.int64, mx.float16, mx.bfloat16, mx.float32, mx.float64, mx.complex64):
    x = (mx.arange(6).reshape(2, 3) * (r + 1)).astype(dt)
    s, gth = ringcomm.all_sum(x), ringcomm.all_gather(x)
    out.append(type(s).__name__ == "array" and s.dtype == dt and gth.dtype == dt and gth.shape == (4, 3))
    out.append(bool(mx.all(s == (x * 3 / (r + 1)).astype(dt)).item()) if dt != mx.bool_ else True)
w = mx.array([1.0, 2.0])
grad = mx.grad(lambda v: (ringcomm.all_gather(v * (r + 1)) ** 2).sum())(w)
out.append(grad.tolist() == (2 * (r + 1) ** 2 * w).tolist())
try:
    mx.compile(lambda v: ringcomm.all_sum(v))(w)
    out.append(False)
except ringcomm.EagerCollectiveError:
    out.append(True)
if r == 0:
    ringcomm.send(mx.array([1.5, 2.5], mx.bfloat16), 1)
else:
    got = ringcomm.recv((2,), mx.bfloat16, 0)
    out.append(got.dtype == mx.bfloat16 and got.tolist() == [1.5, 2.5])
print(all(out), out)
"""


def test_mlx_arrays_in_every_collective(tmp_path):
    from tests.procs import start_ranks
    for p in start_ranks(tmp_path, 2, MLX_ARRAYS):
        out, err = p.communicate(timeout=120)
        assert out.startswith("True"), (out, err)
