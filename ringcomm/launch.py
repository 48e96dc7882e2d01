"""Start N ranks of a script on this machine: ``python -m ringcomm.launch -n 4 script.py``.

Picks free localhost ports (or consecutive ones from ``-p``), writes an MLX ring hostfile,
starts every rank with ``MLX_RANK``/``MLX_HOSTFILE`` (and a fresh ``RINGCOMM_JOB_ID``) set, prefixes each output line with its
rank, and when any rank fails stops all the others and exits with that rank's code.
Flag names follow ``mlx.launch`` where they apply.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from typing import IO, Sequence

from .transports import settings, verbs
from .transports.errors import ConfigError
from .transports.hostfile import Address, write_hostfile

STOP_GRACE_SECONDS = 5.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the kernel reports free right now."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
        prog="ringcomm-launch", description="Run a script on N localhost ranks of a ring.")
    p.add_argument("-n", "--nproc", type=int, required=True, help="number of ranks")
    p.add_argument("--backend", default="ring", choices=["ring", "tcp", "any", "rdma", "jaccl"],
                   help="transport: ring/tcp/any (TCP), or rdma/jaccl (RDMA verbs: writes a "
                        "device file and picks a coordinator port)")
    p.add_argument("--verbs", choices=list(verbs.PROVIDERS), default=None,
                   help="with --backend rdma: the verbs provider (default RINGCOMM_VERBS or "
                        "pyverbs); 'emulated' is an emulation of RDMA for machines without it")
    p.add_argument("--connections-per-ip", type=int, default=1, metavar="K",
                   help="connections between each pair of neighbours (default 1)")
    p.add_argument("-p", "--starting-port", type=int, default=None,
                   help="use consecutive ports from this one instead of free ones")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable for every rank (repeatable)")
    p.add_argument("--verbose", action="store_true", help="print the hostfile and commands")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="script.py [args...] (a .py file runs with this Python) or any command")
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("give a script or command to run")
    if args.nproc < 1 or args.connections_per_ip < 1:
        p.error("-n and --connections-per-ip must be at least 1")
    for item in args.env:
        if "=" not in item:
            p.error(f"--env takes KEY=VALUE; got {item!r}")
    return args


class _Printer:
    """Copies a rank's output to ours line by line with a ``[rank]`` prefix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def pump(self, rank: int, source: IO[bytes], sink: IO[bytes]) -> threading.Thread:
        def run() -> None:
            prefix = f"[{rank}] ".encode()
            for line in iter(source.readline, b""):
                with self._lock:
                    sink.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))
                    sink.flush()
            source.close()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


def launch(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[0].endswith(".py"):
        command.insert(0, sys.executable)
    workdir = tempfile.mkdtemp(prefix="ringcomm-launch-")
    try:
        hostfile = os.path.join(workdir, "hostfile.json")
        write_hostfile(hostfile, localhost_hostfile(args.nproc, args.connections_per_ip,
                                                    args.starting_port))
        if args.verbose:
            with open(hostfile) as f:
                print(f"ringcomm-launch: hostfile {hostfile}: {f.read()}", file=sys.stderr)
            print(f"ringcomm-launch: command {command}", file=sys.stderr)
        base_env = dict(os.environ, MLX_HOSTFILE=hostfile, PYTHONUNBUFFERED="1")
        base_env.setdefault("RINGCOMM_JOB_ID", uuid.uuid4().hex)  # tells this job from others
        base_env.update(item.split("=", 1) for item in args.env)
        try:  # every rank would fail on a bad setting: say so once, before starting any
            knobs = settings.load(base_env)
            if args.backend in ("rdma", "jaccl"):
                base_env.update(rdma_env(workdir, args.nproc, args.connections_per_ip,
                                         args.verbs or knobs.verbs))
        except ConfigError as e:
            print(f"ringcomm-launch: {e}", file=sys.stderr)
            return 2
        return _supervise(command, base_env, args.nproc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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


def _supervise(command: list[str], base_env: dict[str, str], ranks: int) -> int:
    printer = _Printer()
    exits: queue.Queue[tuple[int, int]] = queue.Queue()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []

    def stop_all(sig: int) -> None:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, sig)  # each rank leads its own process group
                except ProcessLookupError:
                    pass

    previous = signal.signal(signal.SIGINT, lambda *_: stop_all(signal.SIGINT))
    try:
        for rank in range(ranks):
            try:
                p = subprocess.Popen(command, env=dict(base_env, MLX_RANK=str(rank)),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
            except OSError as e:
                print(f"ringcomm-launch: cannot start rank {rank}: {e}", file=sys.stderr)
                stop_all(signal.SIGKILL)
                return 127
            procs.append(p)
            pumps.append(printer.pump(rank, p.stdout, sys.stdout.buffer))
            pumps.append(printer.pump(rank, p.stderr, sys.stderr.buffer))
            threading.Thread(target=lambda r=rank, p=p: exits.put((r, p.wait())),
                             daemon=True).start()
        status = 0
        for _ in range(ranks):
            rank, code = exits.get()
            if code != 0 and status == 0:
                status = code if code > 0 else 128 - code
                print(f"ringcomm-launch: rank {rank} failed first (exit code {code}); "
                      "stopping the other ranks", file=sys.stderr)
                stop_all(signal.SIGTERM)
                killer = threading.Timer(STOP_GRACE_SECONDS, stop_all, (signal.SIGKILL,))
                killer.daemon = True
                killer.start()
        for t in pumps:
            t.join()
        return status
    finally:
        signal.signal(signal.SIGINT, previous)
        stop_all(signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(launch(parse_args(argv)))


if __name__ == "__main__":
    main()
