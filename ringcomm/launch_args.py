"""``ringcomm-launch``'s command line: mlx.launch's flags, and mpirun's for output.

Parsing checks what can be checked without the job (counts, ports, ``--env`` pairs);
``launch.launch`` checks the rest (hosts, backend, script) before any rank starts.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from . import hosts as hostspec
from ._version import version   # looks the version up only when called
from .launch_limits import MAX_PORT, check_connect_timeout
from .transports import verbs
from .transports.errors import ConfigError

CONNECT_TIMEOUT = 10.0
BACKENDS = ["ring", "tcp", "any", "rdma", "jaccl", "jaccl-ring"]


class Version(argparse.Action):
    """``--version``: ``ringcomm-launch (ringcomm X.Y.Z)``, looked up only when asked for
    (importlib.metadata costs ~0.1 s)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"ringcomm-launch (ringcomm {version()})")
        parser.exit()


def rank_list(text: str) -> list[int]:
    """``0`` or ``0,2``: ranks, checked against the job's size once it is known."""
    try:
        ranks = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give ranks as 0 or 0,2") from None
    if any(r < 0 for r in ranks):
        raise argparse.ArgumentTypeError(f"{text!r}: ranks count from 0")
    return ranks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ringcomm-launch",
        description="Run a script on the ranks of a ring: here (-n N), or over ssh on "
                    "several machines (--hosts, --hostfile).")
    p.add_argument("--hosts", default=None,
                   help="comma-separated hosts to ssh to (names or IPs; 127.0.0.1 and "
                        "localhost run here)")
    p.add_argument("-n", "--repeat-hosts", "--nproc", dest="nproc", type=int, default=1,
                   help="ranks per host (with no --hosts/--hostfile: ranks on this machine)")
    p.add_argument("--hostfile", default=None,
                   help="mlx.launch's hostfile: [{\"ssh\": ..., \"ips\": [...]}, ...] or "
                        "{\"backend\", \"envs\", \"hosts\"}")
    # no argparse choices: "mpi" and "nccl" get a hint (launch.check_backend), not a list
    p.add_argument("--backend", default=None, metavar="{" + ",".join(BACKENDS) + "}",
                   help="transport: ring/tcp/any (TCP, the default), or rdma/jaccl (RDMA "
                        "verbs); default: the hostfile's \"backend\", else ring")
    p.add_argument("--verbs", choices=list(verbs.PROVIDERS), default=None,
                   help="with --backend rdma: the verbs provider (default RINGCOMM_VERBS or "
                        "pyverbs); 'emulated' is an emulation of RDMA for machines without it")
    p.add_argument("--connections-per-ip", type=int, default=1, metavar="K",
                   help="connections between each pair of neighbours per IP (default 1)")
    p.add_argument("-p", "--starting-port", type=int, default=None,
                   help="consecutive ports from this one (per rank, IP and connection) "
                        "instead of free ones")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable for every rank (repeatable)")
    p.add_argument("--cwd", default=None,
                   help="working directory of every rank (default: this one, where it exists)")
    p.add_argument("--python", default=None,
                   help="the Python that runs a .py script (on remote hosts: its path "
                        "there); default: this launcher's")
    p.add_argument("--print-python", action="store_true",
                   help="print the Python a .py script would run with, and exit")
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT, metavar="S",
                   help=f"ssh's connect time-out, seconds (default {CONNECT_TIMEOUT:g})")
    p.add_argument("--ssh-arg", action="append", default=[], metavar="ARGS",
                   help="extra ssh arguments, split as a shell does (repeatable), e.g. "
                        "--ssh-arg '-F ./ssh_config'")
    p.add_argument("--tag-output", action=argparse.BooleanOptionalAction, default=True,
                   help="put [rank] before every line (and every \\r) of a rank's output "
                        "(default; mpirun's --tag-output); --no-tag-output: the output as "
                        "the ranks write it, still one rank per line")
    p.add_argument("--output-ranks", type=rank_list, default=None, metavar="R[,R...]",
                   help="show only these ranks' output, e.g. 0 (torchrun's "
                        "--local-ranks-filter, with global ranks); a hidden rank that fails "
                        "has the end of its output shown")
    p.add_argument("--verbose", action="store_true",
                   help="print the hosts, hostfile and commands (and set MLX_RING_VERBOSE)")
    p.add_argument("--version", action=Version, help="print ringcomm's version and exit")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="script.py [args...] (a .py file runs with --python) or any command")
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if args.print_python:
        return args
    if not args.command:
        p.error("give a script or command to run")
    if args.nproc < 1 or args.connections_per_ip < 1:
        p.error("-n and --connections-per-ip must be at least 1")
    if problem := check_connect_timeout(args.connect_timeout):
        p.error(problem)
    if args.starting_port is not None and not 0 < args.starting_port <= MAX_PORT:
        p.error(f"-p must be a port from 1 to {MAX_PORT}; got {args.starting_port}")
    if args.hosts is not None and args.hostfile is not None:
        p.error("give --hosts or --hostfile, not both")
    for item in args.env:
        try:
            hostspec.check_env_pair(item, "--env")
        except ConfigError as e:
            p.error(str(e))
    return args


