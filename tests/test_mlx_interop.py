"""Mixed rings: ringcomm and MLX processes (MLX's C++ ring backend) share one ring.

Every case runs the same inputs on a mixed ring, a pure-MLX ring and a pure-ringcomm ring of
the same size and connection count, and every rank's output bytes must be identical across
the three: an independent implementation agreeing with ours byte for byte.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from tests import workload
from tests.procs import env
from tests.strategies import cases

mx = pytest.importorskip(
    "mlx.core", reason="MLX is not installed (pip install -e '.[mlx]'): the mixed-ring tests "
    "need MLX's own ring backend to talk to")

MIXES = [("mlx", "ringcomm"), ("ringcomm", "mlx", "ringcomm"),
         ("mlx", "mlx", "ringcomm", "ringcomm")]
OPS = ["all_sum", "all_max", "all_min", "all_gather", "sendrecv"]  # MLX's ring has no sum_scatter


@pytest.mark.parametrize("connections", [1, 2])
@pytest.mark.parametrize("impls", MIXES, ids=["-".join(m) for m in MIXES])
@given(data=st.data())
def test_mixed_ring_gives_the_bytes_of_a_pure_mlx_ring(clusters, impls, connections, data):
    size = len(impls)
    op = data.draw(st.sampled_from(OPS))
    case = data.draw(cases(size, connections, op, special=True))
    results = {kind: clusters.get(size, connections, kinds).run(workload.run_op_any, op, *case)
               for kind, kinds in (("mixed", impls), ("mlx", ("mlx",) * size),
                                   ("ringcomm", ("ringcomm",) * size))}
    for rank in range(size):
        want = results["mlx"][rank]
        for kind in ("mixed", "ringcomm"):
            got = results[kind][rank]
            assert (got.dtype, got.shape) == (want.dtype, want.shape), (kind, rank)
            assert got.tobytes() == want.tobytes(), f"{kind} ring, rank {rank}: bytes differ from MLX's"


MLX_RANK = """
import mlx.core as mx
g = mx.distributed.init(strict=True, backend="ring")
x = mx.arange(1000, dtype=mx.float32) * (g.rank() + 1) / 7
y = mx.distributed.all_sum(x)
mx.eval(y)
mx.eval(mx.distributed.all_sum(mx.zeros((1,), mx.uint8)))  # ringcomm's barrier()
print(bytes(memoryview(__import__("numpy").array(y))).hex())
"""
RINGCOMM_RANK = """
import numpy as np, ringcomm
g = ringcomm.init(strict=True, protocol="mlx", timeout=60)
x = np.arange(1000, dtype=np.float32) * np.float32(g.rank() + 1) / np.float32(7)
y = ringcomm.all_sum(x)
g.barrier()
print(y.tobytes().hex())
"""


def start(code: str, rank: int, hostfile) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=env(MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile)))


def test_a_hand_started_pair_agrees(tmp_path):
    """The README recipe: one `python -c` with MLX, one with ringcomm, one hostfile."""
    from ringcomm.launch import localhost_hostfile
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[str(a) for a in r] for r in localhost_hostfile(2, 1)]))
    procs = [start(MLX_RANK, 0, hostfile), start(RINGCOMM_RANK, 1, hostfile)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0] and len(outs[0][0].strip()) == 8000


MLX_SUM_SCATTER = """
import mlx.core as mx
g = mx.distributed.init(strict=True, backend="ring")
try:
    mx.eval(mx.distributed.sum_scatter(mx.ones((4,)), group=g))
except Exception as e:
    print("mlx:", e)
"""
RINGCOMM_SUM_SCATTER = """
import numpy as np, ringcomm
g = ringcomm.init(strict=True, protocol="mlx", timeout=60)
try:
    ringcomm.sum_scatter(np.ones(4, np.float32))
except ringcomm.PeerLostError as e:
    print("ringcomm:", type(e).__name__, e)
"""


def test_sum_scatter_in_a_mixed_ring_fails_cleanly(tmp_path):
    """MLX's ring raises; when that MLX process exits, ringcomm ranks get PeerLostError."""
    from ringcomm.launch import localhost_hostfile
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[str(a) for a in r] for r in localhost_hostfile(2, 1)]))
    procs = [start(MLX_SUM_SCATTER, 0, hostfile), start(RINGCOMM_SUM_SCATTER, 1, hostfile)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert "sum_scatter not supported" in outs[0], outs
    assert "ringcomm: PeerLostError rank 1: sum_scatter" in outs[1], outs
