"""Work.get_future() and ringcomm.wait_all (issue 31, item 10) on real ranks: results in
order, a callback, a Future made after completion, wait_all's timeout, and a failure (the
first one raised; the Futures carry each operation's exception)."""
from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

import ringcomm
from tests import rooted_work as w


@pytest.mark.parametrize("impl", ["ringcomm", "rdma-emulated"])
def test_get_future_and_wait_all(clusters, impl):
    size = 3
    cluster = clusters.get(size, 1, (impl,) * size)
    got = cluster.run(w.future_and_wait_all)
    cluster.broken = True  # the mismatch broke every group
    total = sum(range(1, size + 1))
    for rank, res in enumerate(got):
        summed, gathered, barrier = res["results"]
        assert summed == [float(total)] * 4 and barrier is None, res
        assert gathered == [float(j + 1) for j in range(size) for _ in range(4)], res
        assert res["callback"] == [summed] and res["future"] == summed and res["same"], res
        assert res["late"] and res["late_result"] == gathered, res
        assert res["failure"] == ("MismatchError", "MismatchError", "GroupBrokenError"), res
        if rank == 0:
            text, seconds, received = res["timed_out"]
            assert "still running" in text and 0.25 < seconds < 5, res["timed_out"]
            assert received == [2.0] * 4


def test_wait_all_checks_its_arguments_and_a_size_one_group():
    group = ringcomm.init()
    works = [group.all_sum(np.ones(2), async_op=True), group.barrier(async_op=True)]
    assert [None if r is None else r.tolist() for r in ringcomm.wait_all(works)] == \
        [[1.0, 1.0], None]
    assert ringcomm.wait_all([]) == []
    with pytest.raises(TypeError, match="not a ringcomm.Work"):
        ringcomm.wait_all([np.ones(2)])
    with pytest.raises(ringcomm.ConfigError):
        ringcomm.wait_all(works, timeout=-1)
    future = works[0].get_future()
    assert isinstance(future, concurrent.futures.Future) and not future.cancel()
    assert future.result(0).tolist() == [1.0, 1.0]
