"""init(): environment, explicit arguments, the size-1 default, strict mode, bad configuration."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest

import ringcomm
from ringcomm import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("MLX_RANK", "MLX_HOSTFILE", "RINGCOMM_TIMEOUT", "RINGCOMM_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)


def hostfile(tmp_path, entries) -> str:
    path = tmp_path / "hostfile.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return str(path)


def test_nothing_configured_gives_a_group_of_one():
    group = ringcomm.init()
    assert (group.rank(), group.size()) == (0, 1)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for op in (ringcomm.all_sum, ringcomm.all_max, ringcomm.all_min, ringcomm.sum_scatter):
        y = op(x)
        assert y is not x and np.array_equal(y, x)
    assert ringcomm.all_gather(np.float32(2)).shape == (1,)
    group.barrier()


def test_strict_without_configuration_says_what_to_set():
    with pytest.raises(ConfigError, match="MLX_RANK and MLX_HOSTFILE"):
        ringcomm.init(strict=True)


def test_half_a_configuration_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MLX_RANK", "0")
    with pytest.raises(ConfigError, match="MLX_HOSTFILE"):
        ringcomm.init()


def test_env_and_explicit_arguments(monkeypatch, tmp_path):
    path = hostfile(tmp_path, [["127.0.0.1:1"]])
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", path)
    assert ringcomm.init(strict=True).size() == 1
    monkeypatch.setenv("MLX_RANK", "7")  # explicit arguments win over the environment
    assert ringcomm.init(strict=True, rank=0, hostfile=[["127.0.0.1:1"]]).rank() == 0


@pytest.mark.parametrize("rank,match", [("abc", "MLX_RANK must be an integer"),
                                        ("2", "rank 2 is out of range"),
                                        ("-1", "out of range")])
def test_bad_rank(monkeypatch, tmp_path, rank, match):
    monkeypatch.setenv("MLX_RANK", rank)
    monkeypatch.setenv("MLX_HOSTFILE", hostfile(tmp_path, [["127.0.0.1:1"], ["127.0.0.1:2"]]))
    with pytest.raises(ConfigError, match=match):
        ringcomm.init()


@pytest.mark.parametrize("content,match", [
    ("[[\"127.0.0.1:1\"],", "not valid JSON.*line 1"),
    ([], "non-empty JSON list"),
    ({"hosts": []}, "non-empty JSON list"),
    ([["127.0.0.1:1", "127.0.0.1:2"], ["127.0.0.1:3"]], "same number of connections"),
    ([["127.0.0.1"]], "host:port"),
    ([["127.0.0.1:99999"]], "port from 1 to 65535"),
    ([["127.0.0.1:5"], ["127.0.0.1:5"]], "appears twice"),
    ([[]], "non-empty list"),
])
def test_bad_hostfile(tmp_path, content, match):
    with pytest.raises(ConfigError, match=match):
        ringcomm.init(rank=0, hostfile=hostfile(tmp_path, content))


def test_missing_hostfile_is_named(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="nope.json"):
        ringcomm.init(rank=0, hostfile=missing)


def test_unresolvable_host(tmp_path):
    with pytest.raises(ConfigError, match="cannot resolve host"):
        ringcomm.init(rank=0, hostfile=[["no-such-host.invalid:5000"], ["127.0.0.1:5001"]],
                      timeout=5)


def test_port_in_use_fails_fast_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ringcomm.CommError, match=f"cannot listen on 127.0.0.1:{port}"):
            ringcomm.init(rank=0, hostfile=[[f"127.0.0.1:{port}"], ["127.0.0.1:1"]], timeout=5)


@pytest.mark.parametrize("backend", ["any", "tcp", "ring"])
def test_tcp_backend_names(backend):
    assert ringcomm.init(backend=backend).size() == 1


def test_unknown_backend():
    with pytest.raises(ConfigError, match="unknown backend 'mpi'"):
        ringcomm.init(backend="mpi")


@pytest.mark.parametrize("backend", ["rdma", "jaccl"])
def test_rdma_backend_without_configuration(backend):
    assert ringcomm.init(backend=backend).size() == 1
    with pytest.raises(ConfigError, match="no RDMA ring is configured"):
        ringcomm.init(strict=True, backend=backend)


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_bad_timeout(monkeypatch, value):
    monkeypatch.setenv("RINGCOMM_TIMEOUT", value)
    with pytest.raises(ConfigError, match="RINGCOMM_TIMEOUT|positive"):
        ringcomm.init()


def test_timeout_from_env(monkeypatch):
    monkeypatch.setenv("RINGCOMM_TIMEOUT", "12.5")
    assert ringcomm.init().timeout == 12.5


def test_missing_peer_times_out_at_the_deadline(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    # rank 0 accepts first: with nobody to connect, the deadline must end the wait
    with pytest.raises(ringcomm.CommTimeoutError, match="rank 0: init: no connection arrived"):
        ringcomm.init(rank=0, hostfile=[[f"127.0.0.1:{free}"], ["127.0.0.1:1"]], timeout=0.5)


def test_protocol_switch(monkeypatch):
    assert ringcomm.init(protocol="mlx").size() == 1
    monkeypatch.setenv("RINGCOMM_PROTOCOL", "mlx")
    assert ringcomm.init().size() == 1
    monkeypatch.setenv("RINGCOMM_PROTOCOL", "tls")
    with pytest.raises(ConfigError, match="unknown protocol 'tls'.*RINGCOMM_PROTOCOL"):
        ringcomm.init()
