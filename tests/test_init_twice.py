"""init() twice (issue 31 item 1), on real ranks: the same arguments give the default group
back, different ones a ConfigError naming each difference; is_initialized(); a closed or
broken default group gives way to a new one on the same ports."""
from __future__ import annotations

import json

from tests.procs import start_ranks

TWICE = """
import json, os, numpy as np, ringcomm
rank = int(os.environ["MLX_RANK"])
before = ringcomm.is_initialized()
g = ringcomm.init()
again = [ringcomm.init(), ringcomm.init(rank=rank, hostfile=os.environ["MLX_HOSTFILE"]),
         ringcomm.init(timeout=float(os.environ.get("RINGCOMM_TIMEOUT", 300)))]
errors = []
for kw in ({"timeout": 7}, {"rank": 1 - rank, "protocol": "mlx"}, {"token": "secret"}):
    try:
        ringcomm.init(**kw)
    except ringcomm.ConfigError as e:
        errors.append(str(e))
total = ringcomm.all_sum(np.full(3, rank + 1.0)).tolist()
print(json.dumps({"before": before, "same": [x is g for x in again], "errors": errors,
                  "total": total, "initialized": ringcomm.is_initialized()}))
"""


def results(procs, timeout=60):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_init_twice_returns_the_group_or_names_what_differs(tmp_path):
    got = results(start_ranks(tmp_path, 2, TWICE, RINGCOMM_TIMEOUT="30"))
    for rank, r in enumerate(got):
        assert r["before"] is False and r["initialized"] is True
        assert r["same"] == [True, True, True], r
        assert r["total"] == [3.0, 3.0, 3.0]  # the group still works after the refusals
        timeout, rank_and_protocol, token = r["errors"]
        for e in r["errors"]:
            assert e.startswith("ringcomm.init(): already initialized, with different "
                                "arguments: "), e
        assert "timeout=7 s (the default group's: 30 s)" in timeout
        assert f"rank={1 - rank} (the default group's: {rank})" in rank_and_protocol
        assert "protocol='mlx' (the default group's: 'ringcomm')" in rank_and_protocol
        assert "token (the default group has none)" in token and "secret" not in token


CLOSED = """
import json, os, numpy as np, ringcomm
rank = int(os.environ["MLX_RANK"])
g = ringcomm.init()
ringcomm.barrier()
g.close()
closed = ringcomm.is_initialized()
g2 = ringcomm.init()  # the same ports again: the closed group released them
total = ringcomm.all_sum(np.ones(2)).tolist()
broken = None
if rank == 1:
    g2.close()  # rank 0's next call finds its neighbour gone: its group breaks
else:
    try:
        ringcomm.all_sum(np.ones(2))
    except ringcomm.CommError as e:
        broken = type(e).__name__
state = ringcomm.is_initialized()
g3 = ringcomm.init()  # rank 0: closes the broken group, forms anew with rank 1
print(json.dumps({"closed": closed, "new": g2 is not g, "total": total, "broken": broken,
                  "after_break": state, "third": g3 is not g2,
                  "works": ringcomm.all_sum(np.ones(2)).tolist()}))
"""


def test_a_closed_or_broken_default_group_gives_way_to_a_new_one(tmp_path):
    got = results(start_ranks(tmp_path, 2, CLOSED, RINGCOMM_TIMEOUT="30"))
    for r in got:
        assert r["closed"] is False and r["new"] and r["third"], r
        assert r["total"] == [2.0, 2.0] and r["works"] == [2.0, 2.0], r
        assert r["after_break"] is False, r
    assert got[0]["broken"] in ("PeerLostError", "CommError"), got[0]
