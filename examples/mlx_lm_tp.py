"""Tensor-parallel generation with mlx-lm on ringcomm: mlx-lm's own code, unchanged.

    python -m ringcomm.launch -n 2 examples/mlx_lm_tp.py      (or ringcomm-launch -n 2 ..., -n 4)

One line makes ``mx.distributed`` ringcomm's (``ringcomm.patch_mlx()``); the rest is what an
mlx-lm distributed script does: ``mx.distributed.init()``, ``model.shard(group)``, and
mlx-lm's generation loop.  The model is a small random llama built from mlx-lm's own classes
(no download); with a real checkpoint, ``model, tokenizer = mlx_lm.utils.sharded_load(repo)``
replaces building and sharding it.  Every rank checks its tokens against the unsharded
model's.  Needs mlx-lm (``pip install -e ".[test]"`` or ``pip install mlx-lm``).
"""
import sys
import time

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.models import llama

import ringcomm

ringcomm.patch_mlx()                 # the one line: mx.distributed is now ringcomm's
group = mx.distributed.init()        # ringcomm's group (MLX_RANK / MLX_HOSTFILE)

mx.random.seed(0)                    # every rank builds the same weights
args = llama.ModelArgs(model_type="llama", hidden_size=256, num_hidden_layers=4,
                       intermediate_size=704, num_attention_heads=8, num_key_value_heads=4,
                       rms_norm_eps=1e-5, vocab_size=1024)
model = llama.Model(args)
mx.eval(model.parameters())
prompt = mx.array([1, 17, 230, 5, 99, 812, 40])


def greedy(tokens: int) -> list[int]:
    return [int(t) for t, _ in generate_step(prompt, model, max_tokens=tokens)]


want = greedy(16)                    # one process's answer: the whole model on this rank
model.shard(group)                   # mlx-lm's own tensor parallelism, on ringcomm
start = time.perf_counter()
got = greedy(16)
seconds = time.perf_counter() - start
same = got == want
print(f"rank {group.rank()} of {group.size()}: {got} in {seconds:.2f} s; "
      f"same as one process: {same}")
sys.exit(0 if same else 1)
