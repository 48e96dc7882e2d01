"""Group.describe() and repr(group) (issue 31, item 3): the transport, verbs provider (the
emulation named as such), protocol, connections, addresses, direct links, threads, timeout,
job id and whether a token is set, on real TCP and RDMA-emulated rings; the token itself
never shows (tests/test_objects.py checks has_token with a token)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

import ringcomm
from ringcomm.launch import localhost_hostfile
from tests import rooted_work as w
from tests.cluster import RANK_TIMEOUT
from tests.procs import ROOT, env


def test_tcp_group_description(clusters):
    size, k = 3, 2
    got = clusters.get(size, k).run(w.info)
    hostfile = localhost_hostfile(size, k)
    for rank, res in enumerate(got):
        info = res["info"]
        left, right = (rank - 1) % size, (rank + 1) % size
        assert info == {
            "rank": rank, "size": size, "transport": "tcp", "verbs": None, "emulated": False,
            "protocol": "ringcomm", "connections": k,
            "address": info["address"], "left": left, "right": right,
            "left_address": info["left_address"], "right_address": info["right_address"],
            "devices": (), "direct_links": (), "threads": info["threads"],
            "timeout": RANK_TIMEOUT, "job_id": info["job_id"], "has_token": False}, info
        assert len(info["address"]) == k and all(a.startswith("127.0.0.1:")
                                                 for a in info["address"]), info
        assert len(set(info["address"])) == k == len(hostfile[rank])
        assert info["left_address"] == got[left]["info"]["address"]
        assert info["right_address"] == got[right]["info"]["address"]
        assert info["threads"] >= 1 and info["job_id"] == got[0]["info"]["job_id"] != ""
        assert res["repr"].startswith(f"<ringcomm.Group rank {rank} of {size}, tcp, ringcomm "
                                      f"protocol, {k} connections per neighbour")
        assert f"left {left} at {', '.join(info['left_address'])}" in res["repr"], res
        assert "no token" in res["repr"] and res["str"] in res["repr"]


def test_rdma_emulated_group_description_names_the_emulation(clusters):
    size = 3
    got = clusters.get(size, 1, ("rdma-emulated",) * size).run(w.info)
    for rank, res in enumerate(got):
        info = res["info"]
        assert (info["transport"], info["verbs"], info["emulated"]) == ("rdma", "emulated", True)
        assert info["protocol"] == "ringcomm" and info["connections"] == 1
        assert info["devices"] == ("emulated0", "emulated0"), info
        assert info["address"] and info["left_address"] == got[(rank - 1) % size]["info"][
            "address"]
        assert "rdma on the emulated verbs provider (no RDMA hardware)" in res["repr"], res


def test_direct_links_show_once_opened(clusters):
    got = clusters.get(5).run(w.info_after_direct)
    assert [info["direct_links"] for info in got] == [(2,), (), (0,), (), ()]


def test_a_group_of_one():
    info = ringcomm.init().describe()
    assert isinstance(info, ringcomm.GroupInfo)
    assert (info.rank, info.size, info.transport, info.protocol, info.address) == \
        (0, 1, "local", None, ())
    assert repr(ringcomm.init()) == f"<ringcomm.Group rank 0 of 1, local, timeout {info.timeout:g} s>"
    with pytest.raises(AttributeError):
        info.rank = 3  # frozen


def test_python_m_ringcomm_shows_the_self_test_group():
    done = subprocess.run([sys.executable, "-m", "ringcomm"], env=env(RINGCOMM_TOKEN="tok31"),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("group: "))
    assert re.fullmatch(r"  group: rank 0 of 2, tcp, ringcomm protocol, 1 connection per "
                        r"neighbour, at 127\.0\.0\.1:\d+, left 1 at 127\.0\.0\.1:\d+, right 1 "
                        r"at 127\.0\.0\.1:\d+, \d+ threads?, timeout 30 s, a token", line), line
    assert "tok31" not in done.stdout
