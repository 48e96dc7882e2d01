"""A rank of the RDMA scenarios that tests/rxe_guest_tests.py runs on Soft-RoCE in the guest
(and, for a quick check of the scenarios themselves, on the verbs emulation).

``python -m tests.rxe_work SCENARIO`` with the JACCL-style environment (MLX_RANK,
MLX_IBV_DEVICES, MLX_JACCL_COORDINATOR) and RXE_VERBS, the provider.  Each rank checks every
result against numpy and prints one line ``RESULT {json}``; a ringcomm error is printed as
``ERROR {json}`` (its type, message, peer, seconds since the last completed call) with exit
status 3; anything else is a traceback and exit status 1.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import ringcomm
from ringcomm.dtypes import SUPPORTED_DTYPES
from ringcomm.transports import settings, verbs
from ringcomm.transports.errors import RingcommError
from tests import async_work, p2p_work

SEED = 30
BIG = 1 << 20  # float32 elements: 4 MiB, many frames per link, the credits wrap


def provider() -> str:
    """RXE_VERBS; "ctypes" made loadable here when transports/verbs.py does not know it yet
    (its wiring is another change of issue 30; this keeps the scenarios runnable meanwhile)."""
    name = os.environ.get("RXE_VERBS", "pyverbs")
    if name == "ctypes" and "ctypes" not in settings.VERBS_PROVIDERS:
        from ringcomm.transports import verbs_ctypes
        plain = verbs.load
        verbs.load = lambda p=None: verbs_ctypes if p == "ctypes" else plain(p)
    return name


def inputs(size: int, n: int, dtype: np.dtype, seed: int) -> list[np.ndarray]:
    """Every rank's input (each rank makes all of them, for numpy's answer)."""
    hi = 2 if dtype.kind == "b" else 4  # sums stay exact in every dtype on 4 ranks
    return [np.random.default_rng([seed, r]).integers(0, hi, n).astype(dtype)
            for r in range(size)]


def check(what: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
        bad = np.flatnonzero(got.reshape(-1).view(np.uint8) != want.reshape(-1).view(np.uint8)) \
            if got.nbytes == want.nbytes else []
        raise AssertionError(f"{what}: wrong result ({len(bad)} bytes differ, first at "
                             f"{bad[:4].tolist() if len(bad) else '?'})")


def collectives(g, n_elems: int, dtypes) -> int:
    """all_sum, all_max, all_min, all_gather and sum_scatter of every dtype against numpy."""
    size, r, calls = g.size(), g.rank(), 0
    for i, dtype in enumerate(dtypes):
        xs = inputs(size, n_elems, np.dtype(dtype), SEED + i)
        stack = np.stack(xs)
        total = stack.any(0) if dtype.kind == "b" else stack.sum(0).astype(dtype)
        rows = n_elems // size
        for op, want in (("all_sum", total), ("all_max", np.max(stack, 0)),
                         ("all_min", np.min(stack, 0)), ("all_gather", np.concatenate(xs)),
                         ("sum_scatter", total[r * rows:(r + 1) * rows])):
            check(f"{op} of {n_elems} {dtype}", getattr(g, op)(xs[r]), want)
            calls += 1
    return calls


def everything(g) -> dict:
    """Collectives small (every dtype) and large, broadcast from every root, all_to_all,
    send/recv between every ordered pair, split, async_op."""
    size, r = g.size(), g.rank()
    calls = collectives(g, size * 1537, SUPPORTED_DTYPES)
    calls += collectives(g, BIG - BIG % size, [np.dtype(np.float32)])
    for root in range(size):
        xs = inputs(size, 300_001, np.dtype(np.float32), SEED + 100 + root)
        check(f"broadcast from {root}", g.broadcast(xs[r], root), xs[root])
    a2a = [p2p_work.data(SEED, p, (size * 40_000, 2), "int64") for p in range(size)]
    rows = 40_000
    check("all_to_all", g.all_to_all(a2a[r]),
          np.concatenate([x[r * rows:(r + 1) * rows] for x in a2a]))
    pairs = [(s, d) for s in range(size) for d in range(size) if s != d]
    got = p2p_work.pairs(g, pairs, (70_000,), "float32", SEED)  # 280 KB: two slots each
    want = [p2p_work.data(SEED + i, s, (70_000,), "float32")
            for i, (s, d) in enumerate(pairs) if d == r]
    for k, (x, y) in enumerate(zip(got, want)):
        check(f"recv #{k} on rank {r}", x, y)
    sub = g.split(r % 2)
    xs = inputs(size, 100_000, np.dtype(np.int32), SEED + 200)
    mine = [x for p, x in enumerate(xs) if p % 2 == r % 2]
    check("all_sum in a split subgroup", sub.all_sum(xs[r]), np.sum(mine, 0).astype(np.int32))
    sub.close()
    count = 40
    results = async_work.mixed(g, SEED, count)
    for i, (want_i, (got_i, same)) in enumerate(zip(async_work.expected(SEED, size, count, r),
                                                    results)):
        if want_i is not None:
            check(f"async op #{i}", np.asarray(got_i), want_i)
    return {"calls": calls + 3 * size + len(pairs) + count}


def survive(g, stop: dict) -> dict:
    """all_sum of BIG floats until an error; ``stop`` says what breaks after call 3."""
    size, r = g.size(), g.rank()
    xs = inputs(size, BIG, np.dtype(np.float32), SEED)
    want = np.sum(xs, 0).astype(np.float32)
    last = time.monotonic()
    for call in range(1000):
        if call == 3 and r == stop.get("rank"):
            if stop["how"] == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            subprocess.run(stop["command"], shell=True, check=True)
        try:
            check(f"all_sum #{call}", g.all_sum(xs[r]), want)
        except RingcommError as e:
            return {"error": type(e).__name__, "message": str(e), "peer": e.peer,
                    "call": call, "after": round(time.monotonic() - last, 3)}
        last = time.monotonic()
    return {"error": None}


def lossy(g, calls: int) -> dict:
    """``calls`` all_sums and all_gathers of BIG/4 floats, every one exact."""
    size, r = g.size(), g.rank()
    for call in range(calls):
        xs = inputs(size, BIG // 4, np.dtype(np.float32), SEED + call)
        check(f"all_sum #{call}", g.all_sum(xs[r]), np.sum(xs, 0).astype(np.float32))
        check(f"all_gather #{call}", g.all_gather(xs[r]), np.concatenate(xs))
    return {"calls": 2 * calls}


def main(scenario: str) -> int:
    name = provider()
    start = time.monotonic()
    g = None
    try:
        g = ringcomm.init(backend="rdma", verbs=name, strict=True)
        if scenario == "everything":
            out = everything(g)
        elif scenario == "collectives":
            out = {"calls": collectives(g, g.size() * 1537, SUPPORTED_DTYPES)}
        elif scenario == "lossy":
            out = lossy(g, int(os.environ.get("RXE_CALLS", "3")))
        else:
            out = survive(g, json.loads(os.environ.get("RXE_STOP", "{}")))
        rank = g.rank()
        g.close()
    except RingcommError as e:
        print("ERROR " + json.dumps({"error": type(e).__name__, "message": str(e),
                                     "peer": e.peer}), flush=True)
        return 3
    out.update(rank=rank, provider=name, emulated=bool(getattr(verbs.load(name),
                                                                    "EMULATED", False)),
               seconds=round(time.monotonic() - start, 2))
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
