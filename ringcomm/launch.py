"""``ringcomm-launch``: start the ranks of a job here, or over ssh on several machines.

``ringcomm-launch -n 4 script.py`` runs 4 ranks on this machine; ``--hosts h1,h2`` or
``--hostfile hosts.json`` (mlx.launch's formats) runs ``-n`` ranks on each host over ssh
(``ringcomm.remote``).  The flags are mlx.launch's, with its meanings.  Every rank gets
``MLX_RANK``, a ring hostfile in ``MLX_HOSTFILE``, a fresh ``RINGCOMM_JOB_ID`` and
``RINGCOMM_LAUNCHED=1`` (``ringcomm.interrupted``: a Ctrl-C is one line per rank); output
comes back as it is written, prefixed with the rank (``ringcomm.rank_output``; the flags are
in ``launch_args``); when any rank fails, or on SIGINT, SIGTERM or SIGHUP, every rank on
every host is stopped (``ringcomm.supervise``).  What can be checked here (the backend, the
hosts, the script and program of a local job) is checked before any rank starts: exit 2.
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
from .interrupted import LAUNCHED
from .launch_args import BACKENDS, parse_args
from .launch_limits import check_port_range, ensure_open_files
from .ports import free_ports
from .remote import STARTUP_SECONDS, RemoteRank, ssh_argv
from .supervise import START_LIMIT, STOP_GRACE_SECONDS, LocalRank, Printer, Supervisor, say
from .transports import settings, verbs
from .transports.devicefile import parse_devices
from .transports.errors import ConfigError
from .transports.hostfile import Address, write_hostfile



def localhost_hostfile(ranks: int, connections: int, starting_port: int | None = None,
                       host: str = "127.0.0.1") -> list[list[Address]]:
    """Addresses for ``ranks`` ranks with ``connections`` ports each on ``host``."""
    total = ranks * connections
    ports = (list(range(starting_port, starting_port + total)) if starting_port
             else free_ports(total, host))
    return [[Address(host, ports[r * connections + c]) for c in range(connections)]
            for r in range(ranks)]


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
        check_backend(args.backend, "--backend")
        spec = None
        if args.hostfile is not None:
            spec = hostspec.from_file(args.hostfile)
        elif args.hosts is not None:
            spec = hostspec.from_list(args.hosts)
        if spec is not None and not args.backend:
            check_backend(spec.backend or None, spec.source)
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
        pairs = (spec.envs if spec else []) + list(args.env) + (
            ["MLX_RING_VERBOSE=1"] if args.verbose else [])
        rdma = backend in ("rdma", "jaccl", "jaccl-ring")
        ranks = args.nproc * (len(spec.hosts) if spec else 1)
        check_output_ranks(args.output_ranks, ranks)
        if spec is None or all(h.local for h in spec.hosts):
            return launch_local(args, ranks, pairs, rdma)
        return launch_remote(args, spec, pairs, rdma, extra_ssh)
    except ConfigError as e:
        say(str(e))
        return 2


def check_backend(backend: str | None, source: str) -> None:
    """A backend ringcomm-launch starts; for MPI's and NCCL's, where to go instead."""
    if backend is None or backend in BACKENDS:
        return
    if backend.lower() in ("mpi", "nccl"):
        raise ConfigError(f"{source}: backend {backend!r}: ringcomm-launch starts ring (TCP) "
                          "or rdma jobs; under mpirun, call ringcomm.init() in each rank "
                          "(it finds the ranks through mpirun's variables: docs/multihost.md)")
    raise ConfigError(f"{source}: backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def check_output_ranks(chosen: Sequence[int] | None, ranks: int) -> None:
    if chosen is not None and max(chosen) >= ranks:
        raise ConfigError(f"--output-ranks {','.join(map(str, chosen))}: the job has ranks 0 "
                          f"to {ranks - 1}")


def check_local_command(command: Sequence[str], script: str | None, cwd: str | None,
                        path: str | None) -> None:
    """What the agent checks on a remote host, here, before any rank starts: the directory,
    the script and the program (``path``: the ranks' PATH)."""
    if cwd is not None and not os.path.isdir(cwd):
        raise ConfigError(f"--cwd {cwd}: no such directory here")
    where = os.path.abspath(cwd or os.getcwd())
    if script is not None and not os.path.isfile(os.path.join(where, script)):
        raise ConfigError(f"no script {script} in {where}; check its name, or give --cwd "
                          "with the directory that has it")
    program = command[0]
    if os.sep in program:
        found = os.access(os.path.join(where, program), os.X_OK)
    else:
        found = shutil.which(program, path=path) is not None
    if not found:
        hint = ("; give --python with the path of a Python on this machine" if script
                else "" if os.sep in program else " (not on PATH)")
        raise ConfigError(f"no program {program} here{hint}")


def launch_local(args: argparse.Namespace, ranks: int, pairs: list[str], rdma: bool) -> int:
    """Every rank on this machine, on 127.0.0.1."""
    command, script = rank_command(args)
    ranks_path = dict(os.environ, **dict(item.split("=", 1) for item in pairs)).get("PATH")
    check_local_command(command, script, args.cwd, ranks_path)
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
        base_env = dict(os.environ, MLX_HOSTFILE=hostfile, PYTHONUNBUFFERED="1",
                        **{LAUNCHED: "1"})
        base_env.setdefault("RINGCOMM_JOB_ID", uuid.uuid4().hex)  # tells this job from others
        base_env.update(item.split("=", 1) for item in pairs)
        knobs = settings.load(base_env)  # every rank would fail on a bad setting: say it once
        if rdma:
            base_env.update(rdma_env(workdir, ranks, args.connections_per_ip,
                                     args.verbs or knobs.verbs))
        printer = Printer(args.tag_output, args.output_ranks)
        with Supervisor(printer) as sup:
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
    env[LAUNCHED] = "1"
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
    printer = Printer(args.tag_output, args.output_ranks)
    with Supervisor(printer) as sup:
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
                                    printer, sup.post))
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
