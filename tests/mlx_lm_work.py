"""Rank side of the patch_mlx and mlx-lm tests: MLX's and mlx-lm's own code on ringcomm.

Every rank seeds MLX alike and builds the same layers, or the same tiny random-weight model
from mlx-lm's own ``Model``/``ModelArgs`` (no download), runs it unsharded as the
one-process reference, then calls ``ringcomm.patch_mlx(group)`` and runs MLX's
``mlx.nn.layers.distributed``, or mlx-lm's ``shard()``/``pipeline()``, ``sharded_load`` and
generation, unchanged, on the group that ``mx.distributed.init()`` returns.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import ringcomm

PROMPT = [3, 17, 42, 5, 99, 8, 61]
VOCAB = 128

# Tiny configurations: every head, expert and hidden count divides by 4 ranks.
ARGS: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", hidden_size=64, num_hidden_layers=2,
                  intermediate_size=128, num_attention_heads=8, num_key_value_heads=4,
                  rms_norm_eps=1e-5, vocab_size=VOCAB, tie_word_embeddings=False),
    # layer 0 a dense MLP, layers 1-3 mixtures of 4 experts (2 per token) plus a shared one
    "deepseek_v3": dict(model_type="deepseek_v3", vocab_size=VOCAB, hidden_size=64,
                        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
                        n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1,
                        kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=16,
                        qk_nope_head_dim=16, max_position_embeddings=256),
}


def build(family: str, seed: int):
    """mlx-lm's own model class for ``family`` with seeded random weights, evaluated."""
    module = importlib.import_module(f"mlx_lm.models.{family}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs(**ARGS[family]))
    if family == "deepseek_v3":  # zero gates would tie every expert: give the router weights
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.weight = mx.random.normal(layer.mlp.gate.weight.shape) * 0.5
    mx.eval(model.parameters())
    return model


def greedy(model, tokens: int, prefill_step_size: int = 2048) -> list[int]:
    """mlx-lm's generate_step with its default (greedy) sampler."""
    from mlx_lm.generate import generate_step
    steps = generate_step(mx.array(PROMPT), model, max_tokens=tokens,
                          prefill_step_size=prefill_step_size)
    return [int(t) for t, _ in steps]


def tensor_parallel(group, family: str, seed: int, tokens: int) -> dict[str, Any]:
    """Logits and greedy tokens of mlx-lm's ``model.shard(group)`` against the unsharded model."""
    model = build(family, seed)
    want_logits = np.array(model(mx.array(PROMPT)[None]).astype(mx.float32))
    want_tokens = greedy(model, tokens)
    ringcomm.patch_mlx(group)
    try:
        world = mx.distributed.init()
        model.shard(world)
        got_logits = np.array(model(mx.array(PROMPT)[None]).astype(mx.float32))
        got_tokens = greedy(model, tokens)
        sharded = _sharded_count(model)
    finally:
        ringcomm.unpatch_mlx()
    return {"world_is_group": world is group, "logits_diff": float(np.abs(got_logits - want_logits).max()),
            "logits_scale": float(np.abs(want_logits).max()), "tokens": got_tokens,
            "want_tokens": want_tokens, "sharded_layers": sharded}


def pipeline_parallel(group, family: str, seed: int, tokens: int) -> dict[str, Any]:
    """Greedy tokens of mlx-lm's ``model.model.pipeline(group)`` against the whole model."""
    model = build(family, seed)
    want_tokens = greedy(model, tokens)
    ringcomm.patch_mlx(group)
    try:
        model.model.pipeline(mx.distributed.init())
        got_tokens = greedy(model, tokens)
        chunked = greedy(model, tokens, prefill_step_size=3)  # the prompt in 3 passes
        held = sum(layer is not None for layer in model.model.layers[model.model.start_idx:])
    finally:
        ringcomm.unpatch_mlx()
    return {"tokens": got_tokens, "chunked_prefill_tokens": chunked, "want_tokens": want_tokens,
            "layers_held": held}


def _sharded_count(model) -> int:
    """How many of the model's modules are MLX's distributed linear layers (shard() ran)."""
    from mlx.nn.layers.distributed import AllToShardedLinear, ShardedToAllLinear
    return sum(isinstance(m, (AllToShardedLinear, ShardedToAllLinear))
               for _, m in model.named_modules())


def write_checkpoint(path: Path, family: str, seed: int) -> None:
    """A local checkpoint as mlx-lm saves one (config, safetensors and index), with a word-level
    tokenizer of the model's vocabulary: what ``mlx_lm.load`` and ``sharded_load`` read."""
    from mlx_lm.utils import save_config, save_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    path.mkdir(parents=True, exist_ok=True)
    save_model(path, build(family, seed))
    save_config(dict(ARGS[family]), path / "config.json")
    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
         "eos_token": "</s>"}))


def sharded_load_and_generate(group, root: str, family: str, pipeline: bool,
                              tokens: int) -> dict[str, Any]:
    """mlx-lm's own ``load`` + ``generate`` on one process, then its ``sharded_load`` (tensor
    or pipeline parallel) + ``generate`` on the patched group, from one local checkpoint."""
    from mlx_lm.generate import generate
    from mlx_lm.utils import load, sharded_load
    path = Path(root) / f"rank{group.rank()}"  # each rank writes its own (identical) copy
    write_checkpoint(path, family, 0)
    prompt = " ".join(f"w{t}" for t in PROMPT)
    model, tokenizer = load(str(path))
    want = generate(model, tokenizer, prompt, max_tokens=tokens)
    ringcomm.patch_mlx(group)
    try:
        world = mx.distributed.init()
        if pipeline:
            model, tokenizer = sharded_load(str(path), pipeline_group=world)
        else:
            model, tokenizer = sharded_load(str(path))
        got = generate(model, tokenizer, prompt, max_tokens=tokens)
    finally:
        ringcomm.unpatch_mlx()
    return {"text": got, "want": want, "pipelined": model.model.pipeline_size > 1
            if hasattr(model.model, "pipeline_size") else False,
            "sharded": _sharded_count(model)}


# -- MLX's own distributed layers and helpers ------------------------------------------------

def _diff(a, b) -> float:
    return float(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max())


def mlx_layers(group, seed: int) -> dict[str, Any]:
    """MLX's ``mlx.nn.layers.distributed`` and ``mlx.nn.utils`` with ``group=None`` (so
    through ``mx.distributed.init()``) against the unsharded layers: max differences."""
    from mlx.nn.layers.distributed import fully_shard, shard_inplace, shard_linear
    from mlx.nn.utils import average_gradients, clip_grad_norm_sharded
    from mlx.utils import tree_flatten
    out: dict[str, Any] = {}
    ringcomm.patch_mlx(group)
    try:
        world = mx.distributed.init()
        n, r = world.size(), world.rank()
        out["init_is_group"] = world is group and mx.distributed.is_available()
        mine = slice(r * 128 // n, (r + 1) * 128 // n)
        mx.random.seed(seed)
        x, x_wide, y = (mx.random.normal((4, 64)), mx.random.normal((4, 128)),
                        mx.random.normal((4, 64)))
        up, down = nn.Linear(64, 128), nn.Linear(128, 64)
        out["all_to_sharded"] = _diff(shard_linear(up, "all-to-sharded")(x), up(x)[:, mine])
        out["sharded_to_all"] = _diff(shard_linear(down, "sharded-to-all")(x_wide[:, mine]),
                                      down(x_wide))
        q = down.to_quantized(group_size=32, bits=4)
        out["quantized_sharded_to_all"] = _diff(
            shard_linear(q, "sharded-to-all")(x_wide[:, mine]), q(x_wide))

        # the backward pass: sum_gradients' all_sum runs inside MLX's vjp
        def loss(model, v, target):
            return (model(v) * target).sum()
        full = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64))
        sharded = nn.Sequential(shard_linear(full.layers[0], "all-to-sharded"),
                                shard_linear(full.layers[1], "sharded-to-all"))
        l1, g1 = nn.value_and_grad(full, loss)(full, x, y)
        l2, g2 = nn.value_and_grad(sharded, loss)(sharded, x, y)
        out["loss"] = _diff(l1, l2)
        out["grad_w0"] = _diff(g1["layers"][0]["weight"][mine], g2["layers"][0]["weight"])
        out["grad_w1"] = _diff(g1["layers"][1]["weight"][:, mine], g2["layers"][1]["weight"])
        out["grad_x"] = _diff(mx.grad(lambda v: loss(full, v, y))(x),
                              mx.grad(lambda v: loss(sharded, v, y))(x))

        inplace = nn.Linear(64, 128)
        want = inplace(x)[:, mine]
        shard_inplace(inplace, "all-to-sharded")
        out["shard_inplace"] = _diff(inplace(x), want)

        # fully_shard: all_gather in the forward pass, sum_scatter in the backward pass
        mx.random.seed(seed + 1)
        reference = nn.Linear(64, 64)
        mx.random.seed(seed + 1)
        wrapped = fully_shard(nn.Linear(64, 64))
        rows = slice(r * 64 // n, (r + 1) * 64 // n)
        out["fully_shard"] = _diff(wrapped(x), reference(x))
        _, gf = nn.value_and_grad(reference, loss)(reference, x, y)
        _, gw = nn.value_and_grad(wrapped, loss)(wrapped, x, y)
        out["fully_shard_grad"] = _diff(gw["module"]["weight"], gf["weight"][rows])

        # average_gradients (batched and one call per array) and clip_grad_norm_sharded
        grads = {"a": mx.full((10,), float(r)), "b": mx.full((3, 4), 2.0 * r)}
        mean = sum(range(n)) / n
        out["average_gradients"] = max(
            max(_diff(g, mx.full(g.shape, mean * (2 if k == "b" else 1)))
                for k, g in tree_flatten(average_gradients(grads, all_reduce_size=size)))
            for size in (0, 16, 32 * 1024**2))
        _, norm = clip_grad_norm_sharded({"g": mx.full((4,), 1.0)}, 100.0)
        out["clip_norm"] = abs(norm.item() - 2.0 * n ** 0.5)

        # the raw functions, as MLX's signatures take them
        v = mx.arange(8, dtype=mx.float32) + r
        out["all_max"] = _diff(mx.distributed.all_max(v, stream=mx.cpu), mx.arange(8) + n - 1)
        out["all_min"] = _diff(mx.distributed.all_min(v, group=world), mx.arange(8))
        out["all_gather"] = _diff(mx.distributed.all_gather(v[None]),
                                  mx.arange(8)[None] + mx.arange(n)[:, None])
        out["sum_scatter"] = _diff(mx.distributed.sum_scatter(mx.ones((2 * n, 3)) * r),
                                   mx.full((2, 3), float(sum(range(n)))))
        right, left = (r + 1) % n, (r - 1) % n
        def send_twice():
            return [mx.distributed.send(v, right) for _ in range(2)]

        def receive_twice():
            return mx.distributed.recv_like(v, left), mx.distributed.recv((8,), mx.float32, left)
        if r % 2 == 0:  # even ranks send first, odd ones receive first
            sent, (got, got2) = send_twice(), receive_twice()
        else:
            (got, got2), sent = receive_twice(), send_twice()
        out["send_returns_input"] = all(s is v for s in sent)
        out["recv"] = max(_diff(got, mx.arange(8) + left), _diff(got2, mx.arange(8) + left))

        # Group.split: groups of one, the whole group, and the whole group reversed
        alone, whole = world.split(r), world.split(0)
        reordered = world.split(0, key=n - r)
        out["split"] = (alone.size(), alone.rank(), whole.size() == n and whole.rank() == r)
        out["split_reordered"] = (reordered.rank(), _diff(
            mx.distributed.all_sum(mx.array([float(r)]), group=reordered),
            mx.array([float(n * (n - 1) // 2)])))
        for g in (alone, whole, reordered):
            g.close()
    finally:
        ringcomm.unpatch_mlx()
    return out


def donation(group, elements: int) -> dict[str, int]:
    """MLX's own memory check (its test_donation), on the patched group or on MLX's ring:
    peak bytes above the start after ``all_sum(x)``, then after ``all_sum(x) * s``; and the
    latter again with the previous result released first.  One all_sum runs before (for
    results over 1 MiB ringcomm allocates a 0-d zero once per dtype, to fill them from)."""
    patched = isinstance(group, ringcomm.Group)
    if patched:
        ringcomm.patch_mlx(group)
    try:
        x = mx.random.normal((elements,))
        mx.eval(mx.distributed.all_sum(x))  # warm-up: ringcomm keeps a 0-d fill value
        mx.synchronize()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        scale = mx.array(2.0)
        y = mx.distributed.all_sum(x)
        mx.eval(y)
        mx.synchronize()
        all_sum_only = mx.get_peak_memory() - base
        y = mx.distributed.all_sum(x) * scale
        mx.eval(y)
        mx.synchronize()
        with_binary = mx.get_peak_memory() - base
        del y
        mx.synchronize()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        y = mx.distributed.all_sum(x) * scale
        mx.eval(y)
        mx.synchronize()
        released_first = mx.get_peak_memory() - base
        del y
    finally:
        if patched:
            ringcomm.unpatch_mlx()
    return {"all_sum_only": all_sum_only, "with_binary": with_binary,
            "released_first": released_first, "result_bytes": x.nbytes}
