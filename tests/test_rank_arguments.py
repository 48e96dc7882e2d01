"""A bool is not a rank (issue 29, item 12b).

``send(x, True)`` used to send to rank 1 and ``broadcast(x, True)`` to broadcast from rank 1,
while ``split(True)`` was refused.  On a real 4-rank ring (so that rank 2 is reached over a
direct link), every rank argument (send's ``dst``, recv's and recv_like's ``src``,
broadcast's ``root``, split's ``color`` and ``key``), as a method, a module function and
with ``async_op=True``, must refuse ``True``, ``np.True_``, ``False``, a float and a string
with a ``ConfigError`` naming the call and the argument, at once and without a byte on the
wire: the group stays usable and its next all_sum is exact.
"""
from __future__ import annotations

import json
import time

import pytest

import ringcomm
from ringcomm.ports import free_ports
from tests.procs import start_ranks

RANK = """
import json, time
import numpy as np, ringcomm

g = ringcomm.init(strict=True)
r, n = g.rank(), g.size()
x = np.full(4, r + 1, np.float32)
CALLS = {
    "send": lambda bad: g.send(x, bad),
    "recv": lambda bad: g.recv((4,), np.float32, bad),
    "recv_like": lambda bad: g.recv_like(x, bad),
    "broadcast": lambda bad: g.broadcast(x, bad),
    "split color": lambda bad: g.split(bad),
    "split key": lambda bad: g.split(0, bad),
    "module send": lambda bad: ringcomm.send(x, bad, group=g),
    "module recv": lambda bad: ringcomm.recv((4,), np.float32, bad, group=g),
    "module broadcast": lambda bad: ringcomm.broadcast(x, bad, group=g),
    "async send": lambda bad: g.send(x, bad, async_op=True).wait(),
    "async recv": lambda bad: g.recv((4,), np.float32, bad, async_op=True).wait(),
}
BAD = {"True": True, "np.True_": np.True_, "False": False, "np.False_": np.False_,
       "2.0": 2.0, "'2'": "2"}
results = []
for call, run in CALLS.items():
    for text, bad in BAD.items():
        start = time.monotonic()
        try:
            run(bad)
            got = {"type": None}
        except Exception as e:
            got = {"type": type(e).__name__, "config": isinstance(e, ringcomm.ConfigError),
                   "message": str(e)}
        got.update(call=call, bad=text, seconds=round(time.monotonic() - start, 3))
        results.append(got)
total = g.all_sum(x)  # nothing went on the wire: the group is as it was
print(json.dumps({"results": results, "sum": total.tolist()}), flush=True)
g.close()
"""

ARGUMENT = {"send": "dst", "recv": "src", "recv_like": "src", "broadcast": "root",
            "color": "color", "key": "key"}


def test_bools_and_non_integers_are_refused_as_ranks_everywhere(tmp_path):
    procs = start_ranks(tmp_path, 4, RANK, RINGCOMM_TIMEOUT="3")
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for rank, (out, err) in enumerate(outs):
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, (rank, out, err[-3000:])
        report = json.loads(lines[-1])
        for res in report["results"]:
            assert res["type"] == "ConfigError" and res["config"], (rank, res)
            argument = ARGUMENT[res["call"].split(" ")[-1]]
            assert res["message"].startswith(f"rank {rank}: "), (rank, res)
            assert f"{argument} must be an integer" in res["message"], (rank, res)
            assert res["seconds"] < 0.5, (rank, res)
        assert report["sum"] == [10.0] * 4, (rank, report["sum"])
    print(f"  {len(report['results'])} bad rank arguments refused on each of 4 ranks")


def test_init_refuses_a_bool_as_its_rank():
    """``init(rank=True)`` used to join as rank 1 (and wait for the others to its deadline)."""
    hostfile = [[f"127.0.0.1:{port}"] for port in free_ports(2)]
    for bad in (True, False):
        start = time.monotonic()
        with pytest.raises(ringcomm.ConfigError, match="must be an integer rank; got "
                                                       f"{bad}"):
            ringcomm.init(rank=bad, hostfile=hostfile, timeout=2)
        assert time.monotonic() - start < 1
