"""Group.split on real localhost rings: subgroups with rings of their own, formed through the
parent, for random colors and keys (everyone alone, everyone together, ranks in no group),
collectives on them against numpy, nested splits, closing and breaking a subgroup while the
parent goes on, RDMA on the EMULATED verbs provider, and protocol='mlx' refused."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests import split_work

SIZES = [1, 2, 3, 4]


def expected_groups(colors, keys):
    """{color: parent ranks in subgroup order}, as MLX and MPI define it."""
    n = len(colors)
    order = {}
    for c in sorted(set(colors)):
        if c >= 0:
            members = [i for i in range(n) if colors[i] == c]
            order[c] = sorted(members, key=lambda i: (i if keys[i] < 0 else keys[i], i))
    return order


def check_split(cluster, colors, keys, seed, rows=2):
    results = cluster.run(split_work.split_and_reduce, colors, keys, seed, rows)
    n = cluster.size
    groups = expected_groups(colors, keys)
    for r, (got, parent_sum) in enumerate(results):
        assert parent_sum == [n * (n + 1) // 2], (r, parent_sum)  # the parent still works
        if colors[r] < 0:
            assert got is None, r
            continue
        members = groups[colors[r]]
        m = len(members)
        assert (got["rank"], got["size"]) == (members.index(r), m), (r, got["rank"], members)
        assert got["members"] == members, r
        xs = [split_work.data(p, seed, (rows * m, 3), "int64") for p in members]
        assert np.array_equal(got["sum"], np.sum(xs, axis=0)), r
        assert np.array_equal(got["max"], np.max(xs, axis=0).astype(np.float32)), r
        assert np.array_equal(got["gather"], np.concatenate(xs)), r
        me = members.index(r)
        assert np.array_equal(got["scatter"], np.sum(xs, axis=0)[me * rows:(me + 1) * rows]), r


def colors_and_keys(n):
    color = st.integers(-2, 3)
    key = st.one_of(st.just(-1), st.integers(-3, 5))
    return st.tuples(st.lists(color, min_size=n, max_size=n), st.lists(key, min_size=n,
                                                                        max_size=n))


@pytest.mark.parametrize("size", SIZES)
@settings(max_examples=6)
@given(data=st.data())
def test_random_colors_and_keys_form_the_subgroups_mpi_and_mlx_define(clusters, size, data):
    colors, keys = data.draw(colors_and_keys(size))
    check_split(clusters.get(size), colors, keys, data.draw(st.integers(0, 1 << 16)))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", ["alone", "together", "reversed", "none", "half-none"])
def test_the_edge_splits(clusters, size, case):
    n = size
    colors, keys = {"alone": (list(range(n)), [-1] * n),
                    "together": ([7] * n, [-1] * n),
                    "reversed": ([0] * n, [n - r for r in range(n)]),
                    "none": ([-1] * n, [-1] * n),
                    "half-none": ([-1 if r % 2 else 0 for r in range(n)], [-1] * n)}[case]
    check_split(clusters.get(size), colors, keys, seed=size)


@settings(max_examples=3)
@given(data=st.data())
def test_random_splits_of_eight_ranks(clusters, data):
    colors, keys = data.draw(colors_and_keys(8))
    check_split(clusters.get(8), colors, keys, data.draw(st.integers(0, 1 << 16)), rows=1)


@pytest.mark.parametrize("size", [4, 8])
def test_nested_splits(clusters, size):
    results = clusters.get(size).run(split_work.nested, 5)
    for r, got in enumerate(results):
        half = [p for p in range(size) if p % 2 == r % 2]
        me = half.index(r)
        quarter = [p for i, p in enumerate(half) if i // 2 == me // 2]
        # keys: the first of each pair keeps -1 (its rank: 0 or 2...), the second -rank (< 0,
        # so its rank too): the order stays the half's
        assert got["half"] == half and got["quarter"] == quarter, (r, got)
        want = np.sum([split_work.data(p, 5, (5,), "float64") for p in quarter], axis=0)
        assert got["quarter_sum"] == want.tolist(), r
        assert got["half_after"] == [sum(half)] and got["parent_after"] == [sum(range(size))]


def test_closing_a_subgroup_leaves_the_parent_working(clusters):
    for after, parent_sum in clusters.get(3).run(split_work.close_one):
        assert after == "GroupBrokenError" and parent_sum == [3]


def test_a_mismatch_inside_a_subgroup_breaks_it_and_nothing_else(clusters):
    results = clusters.get(4).run(split_work.mismatch_in_one)
    for r, ((kind, message), took, later, parent_sum) in enumerate(results):
        assert parent_sum == [6], r
        if r % 2:  # the odd subgroup did nothing wrong
            assert (kind, later) == ("ok", "ok"), (r, kind, message)
            continue
        assert kind in ("MismatchError", "PeerLostError"), (r, kind, message)
        assert "float64" in message and "float32" in message, (r, message)
        assert later == "GroupBrokenError", r
        assert took < 10, (r, took)  # a bound for the error path, not a speed claim
    assert any(kind == "MismatchError" for (kind, _), *_ in results[::2])


@pytest.mark.parametrize("size", [2, 4])
def test_split_over_rdma_on_the_emulated_verbs(clusters, size):
    cluster = clusters.get(size, 1, ("rdma-emulated",) * size)
    check_split(cluster, [r % 2 for r in range(size)], [size - r for r in range(size)], 3)
    check_split(cluster, [0] * size, [-1] * size, 4)


def test_rdma_nested_and_mismatch(clusters):
    cluster = clusters.get(4, 1, ("rdma-emulated",) * 4)
    for r, got in enumerate(cluster.run(split_work.nested, 2)):
        assert got["half"] == [r % 2, r % 2 + 2] and got["parent_after"] == [6], (r, got)
    results = cluster.run(split_work.mismatch_in_one)
    assert [later for *_, later, _ in results] == ["GroupBrokenError", "ok"] * 2
    assert all(parent == [6] for *_, parent in results)


def test_split_of_a_group_under_protocol_mlx_is_a_clear_error(clusters):
    results = clusters.get(2, impls=("ringcomm", "mlx")).run(split_work.split_protocol_mlx)
    assert results[1] == "mlx rank"
    assert "protocol='ringcomm'" in results[0] and "MLX" in results[0], results[0]


@pytest.mark.parametrize("sharding", ["all-to-sharded", "sharded-to-all"])
def test_layers_on_subgroups(clusters, sharding):
    for r, (sub_rank, res, sgd) in enumerate(clusters.get(4).run(split_work.layers_on_subgroup,
                                                                 sharding)):
        assert sub_rank == 1 - r // 2, r  # keys 4 - r: the parent order reversed
        assert res["out"] < 1e-4 and res["dx"] < 1e-3 and res["dw"] < 1e-3, (r, res)
        assert sgd < 1e-5, (r, sgd)


def test_the_benchmark_loop_on_subgroups(clusters):
    for r, records in enumerate(clusters.get(4).run(split_work.bench_on_subgroup)):
        assert len(records) == 12, (r, records)
        assert all(ranks == 2 and wrong == 0 for _, ranks, _, wrong in records), (r, records)
