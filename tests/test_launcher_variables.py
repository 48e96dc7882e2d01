"""Issue 29 item 4: the launchers' variables are checked (ranges and syntax) before anything
is built or bound, and nothing larger than the job needs is materialised.  Real rank processes
started with those variables; every rank must end in a ConfigError at once."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from ringcomm.ports import free_ports
from ringcomm.transports import ConfigError, settings
from tests.procs import env
from tests.rendezvous_helpers import Launched, started, torchrun_env

AT_ONCE = 1.0  # seconds from init() to the ConfigError (the deadline is 20 s)


def slurm_env(rank: int, nodes: str) -> dict[str, str]:
    return dict(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_JOB_ID="4242",
                SLURM_STEP_ID="0", SLURM_STEP_NODELIST=nodes)


CASES = {
    "WORLD_SIZE=1000000000": (lambda r, port: torchrun_env(r, 1_000_000_000, port),
                              "WORLD_SIZE=1000000000 (set by torchrun) is not a number of ranks "
                              "from 1 to 65536"),
    "SLURM_STEP_NODELIST=node[1-100000000000]": (
        lambda r, port: slurm_env(r, "node[1-100000000000]"),
        "names 100000000000 nodes, more than the 2 tasks"),
    "SLURM_STEP_NODELIST=n[1-": (lambda r, port: slurm_env(r, "n[1-"),
                                 "the '[' at 1 is never closed"),
    "torchrun with MASTER_PORT=65535": (
        lambda r, port: torchrun_env(r, 2, 65535, TORCHELASTIC_RUN_ID="none"),
        "65536 is not a port"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_launcher_variable_out_of_range_is_a_config_error_on_every_rank_at_once(case):
    make, says = CASES[case]
    port = free_ports(1)[0]
    ranks = started(*(Launched(**make(r, port), RINGCOMM_TIMEOUT="20") for r in (0, 1)))
    try:
        for r in ranks:
            r.go()
        got = [r.result(30) for r in ranks]
    finally:
        for r in ranks:
            r.kill()
    for rank, result in enumerate(got):
        print(f"{case}: rank {rank} after {result.get('after', 0) * 1000:.1f} ms: "
              f"{result.get('message')}")
        assert result.get("error") == "ConfigError" and says in result["message"], result
        assert result["after"] < AT_ONCE, result


BIND_WATCH = """
import json, socket, sys
import ringcomm
bound = []
real_bind = socket.socket.bind
def bind(self, address):
    bound.append(str(address))
    return real_bind(self, address)
socket.socket.bind = bind
try:
    ringcomm.init(strict=True)
    print(json.dumps({"bound": bound}))
except ringcomm.RingcommError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e), "bound": bound}))
"""


@pytest.mark.parametrize("extra,says", [
    ({"MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is not"),
    ({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RINGCOMM_IFNAME": "no-such-if0"},
     "RINGCOMM_IFNAME"),
    ({"RINGCOMM_RENDEZVOUS": "127.0.0.1:port"}, "RINGCOMM_RENDEZVOUS must be host:port"),
], ids=["no-master-port", "no-such-interface", "rendezvous-without-a-port"])
def test_find_peers_checks_its_settings_before_it_binds_a_socket(extra, says):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(BIND_WATCH)],
                            env=env(RANK="1", WORLD_SIZE="2", RINGCOMM_TIMEOUT="5", **extra),
                            capture_output=True, text=True, timeout=60)
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got.get("error") == "ConfigError" and says in got["message"], (got, result.stderr)
    assert got["bound"] == [], got


@pytest.mark.parametrize("variables,says", [
    ({"MASTER_PORT": "\u00b2"}, "MASTER_PORT must be a port"),      # int("²") raised ValueError
    ({"RANK": "\u0661", "WORLD_SIZE": "2"}, "must be integers"),    # an Arabic-Indic one
    ({"MASTER_ADDR": "h\u00e9te"}, "MASTER_ADDR='h\u00e9te' is not a host name"),
    ({"MASTER_ADDR": "a b"}, "is not a host name"),
    ({"RINGCOMM_THREADS": "\u00b2"}, "RINGCOMM_THREADS must be"),
])
def test_launcher_values_in_other_scripts_are_config_errors(variables, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        settings.load(variables)
