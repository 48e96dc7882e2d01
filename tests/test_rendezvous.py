"""init() under other launchers: the rank and size from their variables, the addresses from a
rendezvous at one well-known address (ringcomm.rendezvous), on real local processes."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from ringcomm.ports import free_ports
from ringcomm.rendezvous import expand_nodelist, slurm_port
from ringcomm.transports import ConfigError, settings
from tests.procs import env

WORK = """
import numpy as np, ringcomm, sys
g = ringcomm.init(strict=True)
total = ringcomm.all_sum(np.full(1000, g.rank() + 1, np.float32))
assert np.all(total == g.size() * (g.size() + 1) / 2), total[:4]
ringcomm.barrier()
print(f"rank {g.rank()} of {g.size()} ok")
"""


def start(envs: list[dict[str, str]], script: str = WORK) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                             env=env(**{"RINGCOMM_TIMEOUT": "20", **e}), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for e in envs]


def finish(procs: list[subprocess.Popen], timeout: float = 60) -> list[tuple[int, str, str]]:
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_torchrun_variables():
    port = free_ports(1)[0]
    outs = finish(start([dict(RANK=str(r), WORLD_SIZE="3", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port)) for r in (2, 0, 1)]))
    assert sorted(o for _, o, _ in outs) == [f"rank {r} of 3 ok\n" for r in range(3)], outs


def test_slurm_variables_with_a_bracketed_node_list():
    # no Slurm daemons: srun's variables set by hand; the first node is this machine
    job = 4242
    outs = finish(start([dict(SLURM_PROCID=str(r), SLURM_NTASKS="3", SLURM_JOB_ID=str(job),
                              SLURM_STEP_ID="0", SLURM_STEP_NODELIST="127.0.0.[1-3]")
                         for r in range(3)]))
    assert all(code == 0 for code, _, _ in outs), outs
    assert slurm_port((job, 0)) == 15000 + (job * 16) % 15000


def test_open_mpi_variables_with_a_rendezvous_address():
    port = free_ports(1)[0]
    outs = finish(start([dict(OMPI_COMM_WORLD_RANK=str(r), OMPI_COMM_WORLD_SIZE="2",
                              RINGCOMM_RENDEZVOUS=f"127.0.0.1:{port}") for r in range(2)]))
    assert all(code == 0 for code, _, _ in outs), outs


def test_a_rank_that_never_arrives_is_named_by_every_waiting_rank():
    port = free_ports(1)[0]
    started = time.monotonic()
    outs = finish(start([dict(RANK=str(r), WORLD_SIZE="3", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port), RINGCOMM_TIMEOUT="3") for r in (0, 1)]))
    assert time.monotonic() - started < 20
    for code, _, err in outs:
        assert code != 0 and "CommTimeoutError" in err and "[2]" in err, err


def test_a_wrong_token_is_refused_at_once_on_both_sides():
    port = free_ports(1)[0]
    started = time.monotonic()
    outs = finish(start([dict(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port), RINGCOMM_TOKEN=token)
                         for r, token in ((0, "right"), (1, "wrong"))]))
    assert outs[1][0] != 0 and "RINGCOMM_TOKEN" in outs[1][2], outs
    assert outs[0][0] != 0, outs  # rank 0 waits for a rank 1 with the token: its deadline
    assert time.monotonic() - started < 40


def test_a_token_on_both_sides_authenticates_the_rendezvous():
    port = free_ports(1)[0]
    outs = finish(start([dict(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port), RINGCOMM_TOKEN="s3cret")
                         for r in range(2)]))
    assert all(code == 0 for code, _, _ in outs), outs


def test_mpi_without_a_rendezvous_address_says_what_to_set():
    try:
        import mpi4py  # noqa: F401
        pytest.skip("mpi4py is importable: the MPI bootstrap would run instead")
    except ImportError:
        pass
    outs = finish(start([dict(OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2")]))
    code, _, err = outs[0]
    assert code != 0 and "ConfigError" in err and "MASTER_ADDR" in err and \
        "RINGCOMM_RENDEZVOUS" in err, err


def test_world_variables_are_checked():
    with pytest.raises(ConfigError, match="RANK=5 is not a rank of WORLD_SIZE=2"):
        settings.load({"RANK": "5", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="must be integers"):
        settings.load({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"})
    assert settings.load({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0",
                          "SLURM_NTASKS": "1"}).world == ("torchrun", 1, 2)
    with pytest.raises(ConfigError, match="MASTER_PORT"):
        settings.load({"MASTER_PORT": "http"})


def test_slurm_bracket_syntax():
    assert expand_nodelist("gpu[01-03,7],login1") == ["gpu01", "gpu02", "gpu03", "gpu7",
                                                      "login1"]
    assert expand_nodelist("r[1-2]-n[08-09]") == ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]
    with pytest.raises(ConfigError):
        expand_nodelist("gpu[a-b]")


def test_a_world_of_one_needs_no_rendezvous():
    outs = finish(start([dict(RANK="0", WORLD_SIZE="1")]))
    assert outs[0][0] == 0 and "rank 0 of 1 ok" in outs[0][1], outs


def test_under_real_torchrun_whose_agent_holds_master_port(tmp_path):
    """torchrun's own store listens on MASTER_PORT: the rendezvous takes the port above."""
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:
        pytest.skip("torch is not importable here (torchrun comes with torch)")
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(WORK))
    port = free_ports(1)[0]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                             "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
                             str(script)], env=env(RINGCOMM_TIMEOUT="30"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(result.stdout.split("\n")[:-1]) == ["rank 0 of 2 ok", "rank 1 of 2 ok"], result
