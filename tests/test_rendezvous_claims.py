"""Issue 29 item 2: without a token an outsider must not take a rank.  Rank 0 listens only on
the address the ranks are told to reach, refuses two claims of one rank loudly (naming both),
derives a token from a launcher's per-job secret where there is one, and otherwise says in one
warning line that anyone who reaches the port can join.  Real rank processes with launchers'
variables; the outsider is a plain socket that speaks the rendezvous' frames."""
from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from ringcomm.ports import free_ports
from ringcomm.transports import settings
from tests.rendezvous_helpers import (Launched, dial, read_frame, send_frame, started,
                                      torchrun_env)


def claim(sock: socket.socket, rank: int, size: int) -> None:
    """Join as ``rank`` with a frame that is right in every way but a token."""
    assert isinstance(read_frame(sock), dict)
    send_frame(sock, {"rank": rank, "size": size, "port": 40000,
                      "nonce": os.urandom(16).hex(), "mac": ""})


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "RINGCOMM_TOKEN" in line]


def test_rank_0_listens_only_on_master_addr_and_warns_once_without_a_token():
    """MASTER_ADDR=127.0.0.1: another loopback address of this machine (127.0.0.2) must not
    reach the rendezvous, as it did on 0.0.0.0; and rank 0, with nothing to authenticate
    the ranks, says so in one line."""
    port = free_ports(1)[0]
    rank0, rank1 = started(*(Launched(**torchrun_env(r, 2, port)) for r in (0, 1)))
    try:
        rank0.go()
        dial("127.0.0.1", port).close()  # listening
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
        rank1.go()
        got = [rank0.result(60), rank1.result(60)]
    finally:
        rank0.kill()
        rank1.kill()
    assert [g.get("sum") for g in got] == [3.0, 3.0], got
    lines = warnings_in(got[0]["stderr"])
    print(lines)
    assert len(lines) == 1 and "anyone who can reach" in lines[0], got[0]["stderr"]
    assert warnings_in(got[1]["stderr"]) == [], got[1]["stderr"]


def test_two_claims_of_one_rank_fail_the_rendezvous_naming_both():
    """An outsider joins first as rank 1; then the real rank 1 arrives: rank 0 cannot tell
    which is real, so it fails at once naming both addresses, and tells both claimants."""
    port = free_ports(1)[0]
    rank0, rank1 = started(*(Launched(**torchrun_env(r, 3, port, RINGCOMM_TIMEOUT="20"))
                             for r in (0, 1)))
    try:
        rank0.go()
        with dial("127.0.0.1", port) as outsider:
            claim(outsider, 1, 3)
            time.sleep(0.3)  # rank 0 has taken the outsider as rank 1
            outsider_address = "%s:%d" % outsider.getsockname()
            rank1.go()
            told = read_frame(outsider, 20)
            got = [rank0.result(30), rank1.result(30)]
    finally:
        rank0.kill()
        rank1.kill()
    print(got[0]["message"], f"(rank 0 after {got[0]['after']:.3f} s, rank 1 after "
          f"{got[1]['after']:.3f} s)")
    assert got[0].get("error") == "CommError" and got[0]["peer"] == 1, got[0]
    assert "rank 1 is claimed by two processes" in got[0]["message"], got[0]
    assert outsider_address in got[0]["message"], (outsider_address, got[0])
    assert got[1].get("error") == "CommError", got[1]
    assert "claimed by two processes" in got[1]["message"] and outsider_address in \
        got[1]["message"], got[1]
    assert got[1]["after"] < 2, got[1]
    assert told is not None and told.get("claimed") == 1, told


LAUNCHERS = {
    "torchrun --standalone": lambda r, port: dict(
        torchrun_env(r, 2, port - 1), TORCHELASTIC_RUN_ID=RUN_ID),  # (its agent holds port - 1)
    "mpirun": lambda r, port: dict(
        OMPI_COMM_WORLD_RANK=str(r), OMPI_COMM_WORLD_SIZE="2",
        RINGCOMM_RENDEZVOUS=f"127.0.0.1:{port}", OMPI_MCA_orte_precondition_transports=OMPI_KEY),
    "srun --mpi=cray_shasta": lambda r, port: dict(
        PMI_RANK=str(r), PMI_SIZE="2", RINGCOMM_RENDEZVOUS=f"127.0.0.1:{port}",
        PMI_SHARED_SECRET=CRAY_SECRET),
}
RUN_ID = str(uuid.uuid4())
OMPI_KEY = f"{os.urandom(8).hex()}-{os.urandom(8).hex()}".replace("00", "11")
CRAY_SECRET = str(int.from_bytes(os.urandom(8), "big") | 1 << 63)


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_launchers_per_job_secret_keeps_an_outsider_out(launcher):
    """Where the launcher hands every rank a per-job random value, the ranks derive a token
    from it: an outsider that claims rank 1 first is refused, the real rank 1 joins, and no
    warning is printed."""
    port = free_ports(1)[0]
    rank0, rank1 = started(*(Launched(**LAUNCHERS[launcher](r, port)) for r in (0, 1)))
    try:
        rank0.go()
        with dial("127.0.0.1", port) as outsider:
            claim(outsider, 1, 2)
            answer = read_frame(outsider)
        rank1.go()
        got = [rank0.result(60), rank1.result(60)]
    finally:
        rank0.kill()
        rank1.kill()
    assert answer is not None and "RINGCOMM_TOKEN" in answer.get("error", ""), answer
    assert [g.get("sum") for g in got] == [3.0, 3.0], got
    assert warnings_in(got[0]["stderr"]) == [], got[0]["stderr"]


@pytest.mark.parametrize("name,value,secret", [
    ("TORCHELASTIC_RUN_ID", RUN_ID, True),
    ("TORCHELASTIC_RUN_ID", "none", False),     # torchrun's default --rdzv-id
    ("TORCHELASTIC_RUN_ID", "456", False),      # a user's own id
    ("TORCHELASTIC_RUN_ID", str(uuid.uuid1()), False),  # time-based
    ("OMPI_MCA_orte_precondition_transports", OMPI_KEY, True),
    ("OMPI_MCA_orte_precondition_transports", "0000000000000000-0000000000000000", False),
    ("OMPI_MCA_orte_precondition_transports", "012cc14200000000-012cc14200000000", False),
    ("OMPI_MCA_orte_precondition_transports", "0000123400000001-0000001a0000001a", False),
    ("PMI_SHARED_SECRET", CRAY_SECRET, True),
    ("PMI_SHARED_SECRET", "", False),
    ("PMI_SHARED_SECRET", "12345", False),
    ("SLURM_JOB_ID", "4242", False),            # sequential: anyone can guess it
])
def test_which_launcher_values_count_as_secrets(name, value, secret):
    got = settings.load({name: value}).launcher_token
    assert (got is not None) == secret, (name, value)
    if secret:
        token, source = got
        assert source == name and len(token) == 64 and value.encode() not in token
        assert settings.load({name: value}).launcher_token == got  # alike on every rank
