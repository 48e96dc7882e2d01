"""broadcast_object and all_gather_object (issue 31, item 10) on real rings, over TCP and
RDMA on the EMULATED verbs provider: objects of many kinds from every root; objects that
cannot go (unpicklable, over the maximum) are an ObjectError on every rank and the group goes
on; a group without a token warns once, one with a token does not."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests import rooted_work as w
from tests.procs import start_ranks


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("impl,size", [("ringcomm", 1), ("ringcomm", 2), ("ringcomm", 5),
                                       ("rdma-emulated", 3)])
def test_objects_from_every_root_and_gathered(clusters, impl, size):
    got = clusters.get(size, 1, (impl,) * size).run(w.objects)
    for rank, (casts, gathered, seen) in enumerate(got):
        for root in range(size):
            assert all(same(g, want) for g, want in zip(casts[root], w.objects_of(root),
                                                        strict=True)), (rank, root)
        for i, row in enumerate(gathered):
            assert all(same(row[j], w.objects_of(j)[i]) for j in range(size)), (rank, i)
        assert len(seen) <= 1 and all("no token" in s for s in seen), seen  # once a process


@pytest.mark.parametrize("impl", ["ringcomm", "rdma-emulated"])
def test_objects_that_cannot_go_fail_on_every_rank_and_the_group_goes_on(clusters, impl):
    size = 3
    got = clusters.get(size, 1, (impl,) * size).run(w.object_failures)
    for rank, (unpicklable, one_unpicklable, too_big, padded_too_big, after) in enumerate(got):
        assert unpicklable.startswith("ObjectError") and "could not pickle" in unpicklable
        assert ("this rank" if rank == 0 else "rank 0") in unpicklable, unpicklable
        assert one_unpicklable.startswith("ObjectError"), one_unpicklable
        assert ("this rank" if rank == 1 else "rank 1") in one_unpicklable, one_unpicklable
        assert too_big.startswith("ObjectError") and "MAX_OBJECT_BYTES" in too_big, too_big
        assert padded_too_big.startswith("ObjectError") and "padded" in padded_too_big
        assert after == repr(list(range(size))), after


TOKEN_SCRIPT = """
import json, sys, warnings, ringcomm, dataclasses
g = ringcomm.init()
for _ in range(3):
    got = ringcomm.all_gather_object({"rank": g.rank()})
print(json.dumps([got, dataclasses.asdict(g.describe()), repr(g)]))
g.close()
"""


@pytest.mark.parametrize("token", [None, "s3cret-token-31"])
def test_without_a_token_the_object_collectives_warn_once(tmp_path, token):
    extra = {"RINGCOMM_TOKEN": token} if token else {}
    procs = start_ranks(tmp_path, 2, TOKEN_SCRIPT, RINGCOMM_TIMEOUT="30", **extra)
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        got, info, text = json.loads(out)
        assert got == [{"rank": 0}, {"rank": 1}]
        assert info["has_token"] is (token is not None), info
        if token:
            assert token not in out and "no token" not in err, (out, err)
        else:
            assert err.count("no token authenticates") == 1, err
