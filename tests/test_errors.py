"""Bad calls get clear errors on every rank before any byte moves (failing peers: test_reliability)."""
from __future__ import annotations

import numpy as np
import pytest

import ringcomm


def attempt(group, call: str):
    """Rank side: run ``call`` and return the error it raised (type name, message)."""
    x = np.arange(10, dtype=np.float32)
    try:
        eval(call, {"ringcomm": ringcomm, "np": np, "x": x, "g": group, "r": group.rank(),
                    "n": group.size()})
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return type(e).__name__, str(e)
    return None


@pytest.mark.parametrize("call,error,match", [
    ("ringcomm.sum_scatter(np.zeros((5, 2)), group=g)", "ValueError", "must divide by the group size 4"),
    ("ringcomm.sum_scatter(np.float32(1), group=g)", "ValueError", "must divide"),
    ("ringcomm.send(x, (r + 2) % n, group=g)", "ValueError", "not a ring neighbour"),
    ("ringcomm.recv((3,), np.float32, (r + 2) % n, group=g)", "ValueError", "not a ring neighbour"),
    ("ringcomm.send(x, r, group=g)", "ValueError", "to itself"),
    ("ringcomm.send(x, 9, group=g)", "ValueError", "not a rank of this group"),
    ("ringcomm.all_sum(np.zeros(3, np.complex128), group=g)", "TypeError", "not supported"),
    ("ringcomm.all_sum(np.array(['a']), group=g)", "TypeError", "not supported"),
    ("ringcomm.all_sum(x, group=g, out=np.zeros(3, np.float32))", "ValueError", "out= must be"),
    ("ringcomm.all_gather(x, group=g, out=np.zeros(40, np.float64))", "ValueError", "out= must be"),
])
def test_bad_calls_raise_on_every_rank_before_any_byte_moves(clusters, call, error, match):
    cluster = clusters.get(4, 1)
    results = cluster.run(attempt, call)
    for rank, result in enumerate(results):
        assert result is not None, f"rank {rank} raised nothing"
        assert result[0] == error and match in result[1], result
    # the ring still works afterwards: nothing was half-sent
    assert all(r is None for r in cluster.run(attempt, "ringcomm.all_sum(x, group=g)"))


def test_out_is_filled_in_place(clusters):
    results = clusters.get(2, 1).run(attempt, "np.testing.assert_array_equal("
                                     "ringcomm.all_sum(x, group=g, out=x), 2 * np.arange(10))")
    assert results == [None, None]
