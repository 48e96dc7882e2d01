"""Tokens per second of tensor-parallel greedy decoding with mlx-lm: ringcomm vs MLX's ring.

    python -m ringcomm.bench.decode_speed                      # 2 ranks, 8 layers of width 512
    python -m ringcomm.bench.decode_speed -n 2 --rounds 3 --tokens 128 --json decode.json

Each pass starts fresh ranks through ringcomm-launch, with MLX_RANK and MLX_HOSTFILE set.
Every rank builds the same seeded random llama from mlx-lm's own classes (no download),
shards it with mlx-lm's ``model.shard(group)`` and decodes greedily with mlx-lm's
``generate_step``.  The rank code is one program for both implementations; only how the
group is made differs: ``mx.distributed.init(strict=True, backend="ring")`` (MLX's C++ ring)
or ``ringcomm.patch_mlx()`` then ``mx.distributed.init()`` (ringcomm).  Passes alternate
(ringcomm, mlx, ringcomm, mlx, ...) in one invocation, since the two rings cannot share the
hostfile's ports at once; each pass times decoding only (from the first generated token to
the last), after a warm-up generation.  The result is printed as a table and, with
``--json``, written as JSON; the exit code is 1 unless every pass produced the same tokens.
``--overhead`` times single all_sum calls on MLX arrays instead (wall and CPU time).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .spawn import ROOT, child_env

IMPLS = ("ringcomm", "mlx")
PASS_TIME_LIMIT = 600.0


def model_args(layers: int, width: int, vocab: int) -> dict:
    """A llama of ``layers`` layers of width ``width`` (heads of 64, MLP 2.75x wide)."""
    heads = max(width // 64, 1)
    return dict(model_type="llama", hidden_size=width, num_hidden_layers=layers,
                intermediate_size=width * 11 // 4, num_attention_heads=heads,
                num_key_value_heads=max(heads // 2, 1), rms_norm_eps=1e-5, vocab_size=vocab,
                tie_word_embeddings=False)


# -- rank side ---------------------------------------------------------------------------

def worker(impl: str, opts: argparse.Namespace) -> None:
    """One rank: join with ``impl``, shard, warm up, time greedy decoding, report (rank 0)."""
    import mlx.core as mx
    group = _join(impl)
    from mlx_lm.generate import generate_step
    from mlx_lm.models import llama

    mx.random.seed(opts.seed)
    model = llama.Model(llama.ModelArgs(**model_args(opts.layers, opts.width, opts.vocab)))
    model.set_dtype(getattr(mx, opts.dtype))
    model.shard(group)
    mx.eval(model.parameters())
    prompt = mx.array([(7 * i + 3) % opts.vocab for i in range(opts.prompt)])

    def sync() -> None:
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group))

    def decode(tokens: int) -> tuple[list[int], float]:
        sync()
        out, start = [], 0.0
        for i, (token, _) in enumerate(generate_step(prompt, model, max_tokens=tokens)):
            out.append(int(token))
            if i == 0:
                start = time.perf_counter()  # decoding only: after the prefill's token
        return out, time.perf_counter() - start

    decode(opts.warmup)
    tokens, seconds = decode(opts.tokens)
    if group.rank() == 0:
        record = {"impl": impl, "ranks": group.size(), "tokens": len(tokens),
                  "seconds": seconds, "tokens_per_s": (len(tokens) - 1) / seconds,
                  "token_ids": tokens}
        Path(opts.out).write_text(json.dumps(record))


def overhead(impl: str, opts: argparse.Namespace) -> None:
    """One rank: microseconds per all_sum of ``opts.elements`` float32 (the size of one
    decoding step's all_sum at width 512), the best of several blocks of calls."""
    import mlx.core as mx
    import numpy as np
    group = _join(impl)
    x = mx.random.normal((opts.elements,))
    mx.eval(x)
    xn, out = np.array(x), np.empty(opts.elements, np.float32)

    def best(call, calls: int = 1000, blocks: int = 7) -> list[float]:
        """[wall, this thread's CPU] microseconds per call, each the best block's."""
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group))  # line the ranks up
        wall, cpu = [], []
        for _ in range(blocks):
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(calls):
                call()
            wall.append((time.perf_counter() - start) / calls * 1e6)
            cpu.append((time.thread_time() - start_cpu) / calls * 1e6)
        return [min(wall), min(cpu)]

    cases = {"mx all_sum(x), x evaluated, result not evaluated (the call alone)":
             lambda: mx.distributed.all_sum(x, group=group),
             "mx all_sum(x), x evaluated, result evaluated":
             lambda: mx.eval(mx.distributed.all_sum(x, group=group)),
             "mx all_sum(x * 1), x * 1 lazy, result evaluated":
             lambda: mx.eval(mx.distributed.all_sum(x * 1, group=group)),
             "mx eval(x * 1) alone (no communication)": lambda: mx.eval(x * 1)}
    if impl == "ringcomm":
        cases["numpy all_sum(out=), the transport alone"] = lambda: group.all_sum(xn, out=out)
    record = {name: best(call) for name, call in cases.items()}
    if group.rank() == 0:
        Path(opts.out).write_text(json.dumps({"impl": impl, "ranks": group.size(),
                                              "elements": opts.elements, "us": record}))


def _join(impl: str):
    import mlx.core as mx
    if impl == "ringcomm":
        import ringcomm
        ringcomm.patch_mlx()
        return mx.distributed.init()
    return mx.distributed.init(strict=True, backend="ring")


# -- controller --------------------------------------------------------------------------

def run_pass(impl: str, opts: argparse.Namespace, argv: list[str]) -> dict:
    """Start ``opts.n`` fresh ranks running ``worker(impl)``; return rank 0's record."""
    with tempfile.TemporaryDirectory(prefix="ringcomm-decode-") as tmp:
        out = os.path.join(tmp, "record.json")
        command = [sys.executable, "-m", "ringcomm.launch", "-n", str(opts.n), "--",
                   sys.executable, "-m", "ringcomm.bench.decode_speed", *argv,
                   "--worker", impl, "--out", out]
        proc = subprocess.Popen(command, cwd=ROOT, env=child_env(),
                                stdout=sys.stderr, start_new_session=True)
        try:
            code = proc.wait(timeout=PASS_TIME_LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            raise SystemExit(f"decode_speed: the {impl} pass ran past {PASS_TIME_LIMIT} s")
        if code != 0 or not os.path.exists(out):
            raise SystemExit(f"decode_speed: the {impl} pass failed (exit code {code})")
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m ringcomm.bench.decode_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2, help="ranks (default 2)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    p.add_argument("--tokens", type=int, default=128, help="tokens timed per pass")
    p.add_argument("--warmup", type=int, default=8, help="tokens generated before timing")
    p.add_argument("--rounds", type=int, default=2, help="passes of each implementation")
    p.add_argument("--impls", default=",".join(IMPLS), help="ringcomm,mlx (default both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--overhead", action="store_true",
                   help="instead: microseconds per all_sum call on MLX arrays")
    p.add_argument("--elements", type=int, default=512,
                   help="with --overhead: float32 elements per all_sum (default 512)")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.worker:
        (overhead if opts.overhead else worker)(opts.worker, opts)
        return 0
    impls = [i for i in opts.impls.split(",") if i]
    if not impls or any(i not in IMPLS for i in impls):
        p.error(f"--impls takes a comma-separated list of {', '.join(IMPLS)}")
    passes = [run_pass(impl, opts, argv) for _ in range(opts.rounds) for impl in impls]
    if opts.overhead:
        return report_overhead(passes, opts, argv)
    summary = {impl: sorted(r["tokens_per_s"] for r in passes if r["impl"] == impl)
               for impl in impls}
    same = len({tuple(r["token_ids"]) for r in passes}) == 1
    config = {k: getattr(opts, k) for k in ("n", "layers", "width", "vocab", "dtype", "prompt",
                                            "tokens", "warmup", "rounds", "seed")}
    result = {"config": config, "passes": passes, "tokens_per_s": summary,
              "same_tokens": same, "command": "python -m ringcomm.bench.decode_speed " + " ".join(argv)}
    print(f"tensor-parallel greedy decoding, llama {opts.layers} layers x {opts.width}, "
          f"vocab {opts.vocab}, {opts.dtype}, {opts.n} ranks, {opts.tokens} tokens per pass")
    for impl, rates in summary.items():
        print(f"  {impl:9s} tokens/s: " + ", ".join(f"{r:.1f}" for r in rates)
              + f"   (median {statistics.median(rates):.1f})")
    print(f"  same tokens from every pass: {same}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=1))
    return 0 if same else 1


def report_overhead(passes: list[dict], opts: argparse.Namespace, argv: list[str]) -> int:
    """Print (and with --json write) the per-call times, best pass first."""
    print(f"microseconds per call, {opts.elements} float32, {opts.n} ranks (best of "
          f"{opts.rounds} passes)")
    print(f"  {'':9s} {'wall':>8s} {'cpu':>8s}  (cpu: the calling thread's CPU time)")
    best: dict[str, dict[str, list[float]]] = {}
    for record in passes:
        for name, (wall, cpu) in record["us"].items():
            row = best.setdefault(record["impl"], {})
            old = row.get(name, [wall, cpu])
            row[name] = [min(wall, old[0]), min(cpu, old[1])]
    for impl, row in best.items():
        for name, (wall, cpu) in row.items():
            print(f"  {impl:9s} {wall:8.1f} {cpu:8.1f}  {name}")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"passes": passes, "best_us": best,
                                               "command": "python -m ringcomm.bench.decode_speed "
                                               + " ".join(argv)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
