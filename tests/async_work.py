"""Rank-side functions for tests/test_async.py (run on every rank of a tests.cluster ring;
importable so that they can be sent by reference)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np

OPS = ("all_sum", "all_max", "all_gather", "sum_scatter", "broadcast", "all_to_all", "p2p",
       "barrier")


def plan(seed: int, n: int, count: int) -> list[dict]:
    """The same ``count`` operations on every rank: op, shape, dtype, root or (src, dst)."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(count):
        op = str(rng.choice(OPS if n > 1 else OPS[:-2]))
        rows = int(rng.choice([1, 3, 20000] if rng.random() < 0.2 else [1, 2, 5]))
        src, dst = (int(v) for v in rng.choice(n, 2, replace=False)) if n > 1 else (0, 0)
        steps.append({"op": op, "shape": (rows * n, 2),
                      "dtype": str(rng.choice(["float32", "int64"])),
                      "root": int(rng.integers(n)), "src": src, "dst": dst,
                      "like": bool(rng.random() < 0.5)})
    return steps


def data(seed: int, i: int, rank: int, step: dict) -> np.ndarray:
    rng = np.random.default_rng([seed, i, rank])
    return rng.integers(0, 100, size=step["shape"]).astype(step["dtype"])


def expected(seed: int, n: int, count: int, rank: int) -> list:
    """What each operation of ``plan`` returns on ``rank``, computed with numpy alone."""
    out = []
    for i, s in enumerate(plan(seed, n, count)):
        xs = [data(seed, i, p, s) for p in range(n)]
        rows = s["shape"][0] // n
        out.append({"all_sum": lambda: np.sum(xs, axis=0).astype(s["dtype"]),
                    "all_max": lambda: np.max(xs, axis=0),
                    "all_gather": lambda: np.concatenate(xs),
                    "sum_scatter": lambda: np.sum(xs, axis=0).astype(s["dtype"])[
                        rank * rows:(rank + 1) * rows],
                    "broadcast": lambda: xs[s["root"]],
                    "all_to_all": lambda: np.concatenate([x[rank * rows:(rank + 1) * rows]
                                                          for x in xs]),
                    "p2p": lambda: xs[s["src"]] if rank in (s["src"], s["dst"]) else None,
                    "barrier": lambda: None}[s["op"]]())
    return out


def _issue(group, seed: int, i: int, s: dict, async_op: bool, use_out: bool):
    n, r = group.size(), group.rank()
    x = data(seed, i, r, s)
    op = s["op"]
    rows = s["shape"][0] // n
    shape = {"all_gather": (s["shape"][0] * n, 2), "sum_scatter": (rows, 2)}.get(op, s["shape"])
    out = np.empty(shape, x.dtype) if use_out else None
    if op == "p2p":
        if r == s["src"]:  # send returns its input
            return group.send(x, s["dst"], async_op=async_op), None
        if r != s["dst"]:
            return None, None
        if s["like"]:
            return group.recv_like(x, s["src"], out=out, async_op=async_op), out
        return group.recv(x.shape, x.dtype, s["src"], out=out, async_op=async_op), out
    if op == "barrier":
        return group.barrier(async_op=async_op), None
    if op == "broadcast":
        return group.broadcast(x, s["root"], out=out, async_op=async_op), out
    return getattr(group, op)(x, out=out, async_op=async_op), out


def mixed(group, seed: int, count: int) -> list:
    """``plan``'s operations, each async or (one in five, chosen per rank) blocking, some into
    ``out=``; pending ones waited in a random order of this rank's, some while later ones are
    issued.  Returns the results in issue order (and whether each out= was the result)."""
    from ringcomm import Work
    r = group.rank()
    rng = np.random.default_rng([seed, r, 99])
    results: dict[int, object] = {}
    pending: dict[int, tuple] = {}
    for i, s in enumerate(plan(seed, group.size(), count)):
        got, out = _issue(group, seed, i, s, rng.random() > 0.2, rng.random() < 0.3)
        if isinstance(got, Work):
            pending[i] = (got, out)
        else:
            results[i] = (got, out is None or got is out)
        if pending and rng.random() < 0.3:
            j = int(rng.choice(list(pending)))
            work, out = pending.pop(j)
            got = work.wait(timeout=60)
            results[j] = (got, out is None or got is out)
    for j in rng.permutation(list(pending)):
        work, out = pending.pop(int(j))
        got = work.wait(timeout=60)
        assert work.is_completed() and work.exception() is None
        results[int(j)] = (got, out is None or got is out)
    return [results[i] for i in range(count)]


def wait_past_timeout(group) -> dict:
    """Rank 1 sends 0.5 s late; rank 0 waits 50 ms first, then for good."""
    if group.rank() == 1:
        time.sleep(0.5)
        group.send(np.arange(4.0), 0)
        return {}
    work = group.recv(4, np.float64, 1, async_op=True)
    facts = {}
    for what in ("wait", "result"):
        try:
            work.wait(0.05) if what == "wait" else work.result()
        except TimeoutError as e:
            facts[what + "_early"] = f"{type(e).__name__}: {e}"
    facts["completed_early"] = work.is_completed()
    facts["exception_early"] = work.exception()
    facts["value"] = work.wait(30)
    facts["result"] = work.result()
    return facts


def out_of_order(group) -> list:
    """Rank 0 issues all_sum then all_gather, the others all_gather then all_sum (same array),
    then three more all_sums: every wait's error, type and cause."""
    x = np.arange(4, dtype=np.float32)
    ops = ["all_sum", "all_gather"] if group.rank() == 0 else ["all_gather", "all_sum"]
    works = [getattr(group, op)(x, async_op=True) for op in ops + ["all_sum"] * 3]
    return [_outcome(w) for w in works]


def _outcome(work) -> tuple:
    try:
        work.wait(60)
    except Exception as e:
        cause = e.__cause__
        return (type(e).__name__, str(e), getattr(e, "peer", None),
                type(cause).__name__ if cause else None, getattr(cause, "peer", None))
    return ("ok",)


def killed_while_pending(group, victim: int) -> tuple:
    """Ten 800 KB all_sums issued async everywhere; ``victim`` SIGKILLs itself once the first
    completes.  The survivors wait for all ten: (outcomes in issue order, seconds)."""
    r = group.rank()
    works = [group.all_sum(np.full(200_000, r, np.float32), async_op=True) for _ in range(10)]
    if r == victim:
        works[0].wait(60)
        os.kill(os.getpid(), signal.SIGKILL)
    start = time.monotonic()
    outcomes = [_outcome(w) for w in reversed(works)][::-1]  # the last first: out of order
    return outcomes, time.monotonic() - start


def mlx_async(group) -> dict:
    """MLX arrays with async_op: evaluated here, the result a new mx.array; and a blocking
    differentiable all_sum under mx.grad while async work is pending."""
    import mlx.core as mx
    r, n = group.rank(), group.size()
    x = mx.arange(6, dtype=mx.float32) * (r + 1)
    summed = group.all_sum(x, async_op=True)
    gathered = group.all_gather(x, async_op=True)
    got: dict = {}
    if n > 1:
        peer_out, peer_in = (r + 1) % n, (r - 1) % n
        sent = group.send(x.astype(mx.bfloat16), peer_out, async_op=True)
        came = group.recv((6,), mx.bfloat16, peer_in, async_op=True)
        got["sent_is_input_type"] = type(sent.wait(30)).__module__.startswith("mlx")
        got["recv"] = np.array(came.wait(30).astype(mx.float32))
    grad = mx.grad(lambda v: group.all_sum(v * v).sum())(mx.ones(3))  # blocking, differentiable
    got["sum"] = np.array(summed.wait(30))
    got["gather"] = np.array(gathered.wait(30))
    got["grad"] = np.array(grad)
    got["type"] = type(summed.result()).__module__
    return got


def wait_without_limit(group) -> dict:
    """Rank 1 sends 0.3 s late; rank 0 waits with timeouts of inf and 1e300 (no limit), then
    tries timeouts that are no number of seconds."""
    if group.rank() == 1:
        time.sleep(0.3)
        group.send(np.arange(4.0), 0)
        group.send(np.arange(4.0) + 1, 0)
        return {}
    facts = {}
    for timeout in (float("inf"), 1e300):
        work = group.recv(4, np.float64, 1, async_op=True)
        facts[repr(timeout)] = work.wait(timeout)
    for timeout in (-1, float("nan"), True, "1"):
        try:
            work.wait(timeout)
            facts[repr(timeout)] = "no error"
        except Exception as e:
            facts[repr(timeout)] = (type(e).__name__, isinstance(e, ValueError), str(e))
    return facts
