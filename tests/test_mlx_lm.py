"""mlx-lm as a real client of ringcomm.patch_mlx(): its own models, sharding, loading and
generation, unchanged, on 2 and 4 localhost ranks over TCP.

Models are tiny and random (mlx-lm's own ``Model``/``ModelArgs``, seeded; no download):
``llama`` (dense; ``shard()`` swaps in MLX's sharded linear layers) and ``deepseek_v3``
(a mixture of experts whose ``shard()`` shards the experts in place and all_sums their
output itself; its ``model.model.pipeline()`` splits the layers over the ranks).
"""
from __future__ import annotations

import selectors
import signal
import time

import pytest

pytest.importorskip("mlx.core", reason="MLX is not installed (pip install -e '.[mlx]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install -e '.[test]' "
                    "installs it on Linux and macOS)")

from tests import mlx_lm_work  # noqa: E402
from tests.procs import start_ranks  # noqa: E402

SIZES = [2, 4]
TOKENS = 8


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
def test_tensor_parallel_logits_and_greedy_tokens_match_one_process(clusters, size, family):
    results = clusters.get(size).run(mlx_lm_work.tensor_parallel, family, 0, TOKENS)
    for rank, res in enumerate(results):
        assert res["world_is_group"], rank  # mx.distributed.init() gave the patched group
        assert res["sharded_layers"] > 0, rank  # shard() really swapped layers in
        assert res["logits_diff"] <= 1e-5 * max(1.0, res["logits_scale"]), (rank, res)
        assert res["tokens"] == res["want_tokens"], (rank, res)
        assert len(res["tokens"]) == TOKENS
    assert len({tuple(r["tokens"]) for r in results}) == 1


@pytest.mark.parametrize("size", SIZES)
def test_pipeline_parallel_greedy_tokens_match_one_process(clusters, size):
    results = clusters.get(size).run(mlx_lm_work.pipeline_parallel, "deepseek_v3", 0, TOKENS)
    layers = mlx_lm_work.ARGS["deepseek_v3"]["num_hidden_layers"]
    assert sum(r["layers_held"] for r in results) == layers  # each layer on one rank
    assert all(r["layers_held"] > 0 for r in results)
    for rank, res in enumerate(results):
        assert res["tokens"] == res["want_tokens"], (rank, res)
        assert res["chunked_prefill_tokens"] == res["want_tokens"], (rank, res)


@pytest.mark.parametrize("family,pipeline", [("llama", False), ("deepseek_v3", True)],
                         ids=["tensor-llama", "pipeline-deepseek_v3"])
def test_sharded_load_and_generate_from_a_local_checkpoint(clusters, tmp_path, family,
                                                           pipeline):
    """mlx-lm's user-level path: ``sharded_load`` (which itself calls shard()/pipeline() and
    all_sums to line the ranks up) and ``generate`` with a tokenizer, against ``load`` and
    ``generate`` in one process."""
    results = clusters.get(2).run(mlx_lm_work.sharded_load_and_generate, str(tmp_path),
                                  family, pipeline, TOKENS)
    for rank, res in enumerate(results):
        assert res["text"] == res["want"] and len(res["want"].split()) == TOKENS, (rank, res)
        assert res["pipelined"] == pipeline and (res["sharded"] > 0) != pipeline, (rank, res)


GENERATE_UNTIL_FAILURE = """
import time
import mlx.core as mx
import ringcomm
from mlx_lm.generate import generate_step
from tests import mlx_lm_work as w
ringcomm.patch_mlx(ringcomm.init(strict=True, timeout=60))
model = w.build("llama", 0)
model.shard(mx.distributed.init())
try:
    for i, _ in enumerate(generate_step(mx.array(w.PROMPT), model, max_tokens=-1)):
        print("token", i, flush=True)
except ringcomm.PeerLostError as e:
    print(f"{time.time():.6f} PeerLostError: {e}", flush=True)
"""


def _wait_for_line(proc, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                got = proc.stdout.readline()
                if not got:
                    raise AssertionError(f"the rank exited: {proc.stderr.read()}")
                if got.strip() == line:
                    return
    raise AssertionError(f"no {line!r} within {timeout} s")


def test_a_killed_rank_ends_mlx_lm_generation_with_peer_lost_on_the_other(tmp_path):
    """What the patch buys an unmodified mlx-lm loop: a rank SIGKILLed mid-generation is a
    PeerLostError naming it on the survivor, within seconds, not a hang."""
    procs = start_ranks(tmp_path, 2, GENERATE_UNTIL_FAILURE)
    try:
        _wait_for_line(procs[0], "token 5", timeout=180)
        killed_at = time.time()
        procs[1].send_signal(signal.SIGKILL)
        out, err = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
    stamp, message = out.strip().splitlines()[-1].split(" ", 1)
    assert message.startswith("PeerLostError") and "rank 1" in message, (out, err)
    assert float(stamp) - killed_at < 5.0, (stamp, killed_at)
