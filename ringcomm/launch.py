"""``ringcomm-launch``: start the ranks of a job here, or over ssh on several machines.

``ringcomm-launch -n 4 script.py`` runs 4 ranks on this machine; ``--hosts h1,h2`` or
``--hostfile hosts.json`` (mlx.launch's formats) runs ``-n`` ranks on each host over ssh
(``ringcomm.remote``).  The flags are mlx.launch's, with its meanings.  Every rank gets
``MLX_RANK``, a ring hostfile in ``MLX_HOSTFILE`` and a fresh ``RINGCOMM_JOB_ID``; output
comes back prefixed with the rank; when any rank fails, or on SIGINT, SIGTERM or SIGHUP,
every rank on every host is stopped (``ringcomm.supervise``).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import sys
import tempfile
import shutil
import uuid
from typing import Sequence

from . import hosts as hostspec
from .launch_limits import (MAX_PORT, check_connect_timeout, check_port_range,
                            ensure_open_files)
from .ports import free_ports
from .remote import STARTUP_SECONDS, RemoteRank, ssh_argv
from .supervise import START_LIMIT, STOP_GRACE_SECONDS, LocalRank, Printer, Supervisor, say
from .transports import settings, verbs
from .transports.devicefile import parse_devices
from .transports.errors import ConfigError
from .transports.hostfile import Address, write_hostfile

CONNECT_TIMEOUT = 10.0
BACKENDS = ["ring", "tcp", "any", "rdma", "jaccl", "jaccl-ring"]


def localhost_hostfile(ranks: int, connections: int, starting_port: int | None = None,
                       host: str = "127.0.0.1") -> list[list[Address]]:
    """Addresses for ``ranks`` ranks with ``connections`` ports each on ``host``."""
    total = ranks * connections
    ports = (list(range(starting_port, starting_port + total)) if starting_port
             else free_ports(total, host))
    return [[Address(host, ports[r * connections + c]) for c in range(connections)]
            for r in range(ranks)]


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
    p.add_argument("--backend", default=None, choices=BACKENDS,
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
    p.add_argument("--verbose", action="store_true",
                   help="print the hosts, hostfile and commands (and set MLX_RING_VERBOSE)")
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


def rank_command(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The command every rank runs, and the script it needs (a .py file runs with Python)."""
    command = list(args.command)
    if command[0].endswith(".py"):
        return [args.python or sys.executable, *command], command[0]
    return command, None


def launch(args: argparse.Namespace) -> int:
    """Run the job ``args`` describes; the exit code (2: nothing started, see
    docs/multihost.md)."""
    if args.print_python:
        print(args.python or sys.executable)
        return 0
    try:
        spec = None
        if args.hostfile is not None:
            spec = hostspec.from_file(args.hostfile)
        elif args.hosts is not None:
            spec = hostspec.from_list(args.hosts)
        try:
            extra_ssh = [a for item in args.ssh_arg for a in shlex.split(item)]
        except ValueError as e:
            raise ConfigError(f"--ssh-arg {args.ssh_arg}: {e}") from None
        # before resolving: that may ask ssh -G about every host (counts are checked first)
        ensure_open_files(args.nproc * (len(spec.hosts) if spec else 1),
                          args.connections_per_ip, spec is None or spec.surely_local)
        if spec is not None:
            hostspec.resolve(spec, ["ssh", *extra_ssh])
        backend = args.backend or (spec.backend if spec else "") or "ring"
        if backend in ("mpi", "nccl"):
            raise ConfigError(f"backend {backend!r}: ringcomm-launch starts ring (TCP) or "
                              "rdma jobs; under mpirun, call ringcomm.init() in each rank")
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r} (from {spec.source}): choose one of "
                              f"{', '.join(BACKENDS)}")
        pairs = (spec.envs if spec else []) + list(args.env) + (
            ["MLX_RING_VERBOSE=1"] if args.verbose else [])
        rdma = backend in ("rdma", "jaccl", "jaccl-ring")
        if spec is None or all(h.local for h in spec.hosts):
            ranks = args.nproc * (len(spec.hosts) if spec else 1)
            return launch_local(args, ranks, pairs, rdma)
        return launch_remote(args, spec, pairs, rdma, extra_ssh)
    except ConfigError as e:
        say(str(e))
        return 2


def launch_local(args: argparse.Namespace, ranks: int, pairs: list[str], rdma: bool) -> int:
    """Every rank on this machine, on 127.0.0.1."""
    command, _ = rank_command(args)
    check_port_range(args.starting_port, ranks * args.connections_per_ip)
    workdir = tempfile.mkdtemp(prefix="ringcomm-launch-")
    try:
        hostfile = os.path.join(workdir, "hostfile.json")
        write_hostfile(hostfile, localhost_hostfile(ranks, args.connections_per_ip,
                                                    args.starting_port))
        if args.verbose:
            with open(hostfile) as f:
                say(f"hostfile {hostfile}: {f.read()}")
            say(f"command {shlex.join(command)}")
        base_env = dict(os.environ, MLX_HOSTFILE=hostfile, PYTHONUNBUFFERED="1")
        base_env.setdefault("RINGCOMM_JOB_ID", uuid.uuid4().hex)  # tells this job from others
        base_env.update(item.split("=", 1) for item in pairs)
        knobs = settings.load(base_env)  # every rank would fail on a bad setting: say it once
        if rdma:
            base_env.update(rdma_env(workdir, ranks, args.connections_per_ip,
                                     args.verbs or knobs.verbs))
        printer = Printer()
        with Supervisor() as sup:
            started = []
            for rank in range(ranks):
                r = LocalRank(rank, command, dict(base_env, MLX_RANK=str(rank)), args.cwd,
                              printer, sup.post)
                try:
                    r.start()
                except (OSError, RuntimeError) as e:   # RuntimeError: no thread to spare
                    say(f"cannot start rank {rank}: {e}")
                    for s in started:
                        s.kill()
                    return 127
                started.append(r)
            return sup.run(started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def remote_env(pairs: list[str]) -> dict[str, str]:
    """The variables every remote rank gets: ringcomm's settings from this environment, the
    pairs, PYTHONUNBUFFERED, a fresh job id and (with ringcomm's protocol) a fresh token."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith("RINGCOMM_") and (k in settings.KNOWN or k in settings.ALIASES)}
    env.update(item.split("=", 1) for item in pairs)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RINGCOMM_JOB_ID", uuid.uuid4().hex)
    knobs = settings.load(env)
    if knobs.protocol == "ringcomm" and knobs.token is None:
        env["RINGCOMM_TOKEN"] = secrets.token_hex(16)   # the ring listens on the network
    return env


def launch_remote(args: argparse.Namespace, spec: hostspec.HostSpec, pairs: list[str],
                  rdma: bool, extra_ssh: list[str]) -> int:
    """Ranks over ssh: start an agent per rank, check every host, then start the job."""
    hosts = hostspec.repeat(spec.hosts, args.nproc)
    n, k = len(hosts), args.connections_per_ip
    if rdma:
        check_rdma(spec, hosts, args.nproc)
    check_port_range(args.starting_port, 1 if rdma else sum(k * len(h.ips) for h in hosts))
    env = remote_env(pairs)
    if rdma and args.verbs:
        env["RINGCOMM_VERBS"] = args.verbs
    command, script = rank_command(args)
    python = args.python or sys.executable
    wait = args.connect_timeout + STARTUP_SECONDS
    port = args.starting_port
    printer = Printer()
    with Supervisor() as sup:
        ranks = []
        for rank, h in enumerate(hosts):
            ports = None
            if port and not rdma:
                ports, port = list(range(port, port + k * len(h.ips))), port + k * len(h.ips)
            config = {"rank": rank, "host": h.ssh, "cwd": args.cwd, "launcher_cwd": os.getcwd(),
                      "command": command, "script": script, "python": python,
                      "python_for_agent": python, "ips": h.ips[:1] if rdma else h.ips,
                      "connections": 1 if rdma else k, "ports": ports,
                      "extra_ports": 1 if rdma and rank == 0 and not port else 0,
                      "env": dict(env, MLX_RANK=str(rank)),
                      "go_seconds": wait * (n // START_LIMIT + 2), "boot_seconds": wait,
                      "grace_seconds": STOP_GRACE_SECONDS}
            ranks.append(RemoteRank(rank, h, config, ssh_argv(args.connect_timeout, extra_ssh),
                                    printer.write, sup.post))
        if args.verbose:
            say("hosts: " + ", ".join(f"rank {r.rank} on {r.describe()}" for r in ranks))
            say(f"ssh: {shlex.join(ranks[0].argv)}")
            say(f"command: {shlex.join(command)}")
        failures = sup.start_remote(ranks, wait)
        if failures or sup.signalled:
            for line in failures:
                say(line)
            sup.abort(ranks)
            if sup.signalled:
                return 128 + sup.signalled
            say("no rank was started")
            return 2
        files = ring_files(ranks, hosts, k, rdma, args.starting_port)
        if args.verbose:
            for name, content in files["files"].items():
                say(f"{name}: {content}")
        for r in ranks:
            r.go(files["files"], files["env"])
        return sup.run(ranks)


def ring_files(ranks: Sequence[RemoteRank], hosts: Sequence[hostspec.Host], k: int, rdma: bool,
               starting_port: int | None) -> dict:
    """The ring hostfile from the ports the hosts reported (or the RDMA device file and the
    coordinator), as files and variables for ``RemoteRank.go``."""
    if rdma:
        port = starting_port or ranks[0].report["ports"][-1]
        return {"files": {"MLX_IBV_DEVICES": json.dumps([h.rdma for h in hosts])},
                "env": {"MLX_JACCL_COORDINATOR": str(Address(hosts[0].ips[0], port)),
                        "RINGCOMM_BACKEND": "rdma"}}
    ring = []
    for r, h in zip(ranks, hosts):
        ports = r.report["ports"]
        ring.append([str(Address(ip, ports[i * k + c])) for i, ip in enumerate(h.ips)
                     for c in range(k)])
    return {"files": {"MLX_HOSTFILE": json.dumps(ring)}, "env": {}}


def check_rdma(spec: hostspec.HostSpec, hosts: Sequence[hostspec.Host], repeats: int) -> None:
    """JACCL's hostfile rules: one rank per host, an ``rdma`` row per host, null for itself."""
    n = len(hosts)
    if repeats != 1:
        raise ConfigError("--backend rdma over ssh: one rank per host (leave out -n), as "
                          "MLX's jaccl")
    for i, h in enumerate(hosts):
        if len(h.rdma) != n or h.rdma[i] is not None:
            raise ConfigError(f"{spec.source}: host {i} ({h.ssh}) needs \"rdma\": a list of "
                              f"{n} devices (one per host, the device linking it to that "
                              f"host), null at its own place {i}")
    parse_devices([h.rdma for h in hosts], f"{spec.source}: the hosts' \"rdma\" lists")


def localhost_devices(ranks: int, connections: int, device: str) -> list[list]:
    """A device file (MLX_IBV_DEVICES) linking every pair of ranks through ``device``,
    ``connections`` times."""
    entry = device if connections == 1 else [device] * connections
    return [[None if i == j else entry for j in range(ranks)] for i in range(ranks)]


def rdma_env(workdir: str, ranks: int, connections: int,
             provider: str | None) -> dict[str, str]:
    """A device file linking every pair of local ranks through this machine's first verbs
    device (K times), and a coordinator port: the JACCL-style environment for ``init``."""
    names = verbs.device_names(verbs.load(provider))
    if not names:
        raise ConfigError("--backend rdma: pyverbs lists no RDMA device on this machine; "
                          "add --verbs emulated to run over the verbs emulation instead")
    path = os.path.join(workdir, "devices.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(localhost_devices(ranks, connections, names[0]), f)
    env = {"MLX_IBV_DEVICES": path,
           "MLX_JACCL_COORDINATOR": f"127.0.0.1:{free_ports(1)[0]}",
           "RINGCOMM_BACKEND": "rdma"}
    if provider:
        env["RINGCOMM_VERBS"] = provider
    return env


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(launch(parse_args(argv)))


if __name__ == "__main__":
    main()
