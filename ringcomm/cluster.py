"""``python -m ringcomm.cluster``: several machines on this one, to try a multi-host job.

    sudo python -m ringcomm.cluster up 3       # h0, h1, h2, each with its own sshd
    (run the ringcomm-launch command it prints)
    sudo python -m ringcomm.cluster run h1 -- hostname -I     # any command "on" a host
    sudo python -m ringcomm.cluster down

``up N`` builds N hosts ``h0 .. h{N-1}`` (``ringcomm.netns_ssh``, on ``ringcomm.netns``: the
builder of the multi-host tests): network namespaces joined by a bridge, addresses
``10.77.0.10``, ``10.77.0.11``, ... (``--subnet``), links optionally shaped (``--rate-mbit``),
and a real sshd in each, with a key and an ssh config made for them.  Nothing is added to the
machine's own network: the hosts reach each other but not the machine, so a job is launched
from inside h0 (``ip netns exec``), and reaches every host, h0 too, over ssh, as on a real
cluster.  The filesystem is shared, so every host has this Python and ringcomm.  It prints
the exact ``ringcomm-launch`` command to run, and leaves the hosts up; their keys, ssh config
and logs live in ``/run/<name>-cluster``.  ``down`` stops every process in the hosts and
removes the namespaces, their /etc/netns entries and that folder, including what a cluster
interrupted half-way left, and the leftovers of test clusters whose process is gone.

Linux, as root (``ip netns``, sshd), with iproute2 and OpenSSH's server and client.
Exit codes: 0, 1 (a cluster is up already, or building failed: nothing is left), 2 (this
machine cannot: not root, a tool missing).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .netns import NetnsUnavailable, cleanup_stale, remove
from .netns_ssh import PREFIX, NetnsCluster, iproute, tool, unavailable_reason

NAME = "ringcomm"
RUN_DIR = Path("/run")
STATE = "cluster.json"


def say(message: str) -> None:
    print(f"ringcomm.cluster: {message}", file=sys.stderr, flush=True)


def state_dir(name: str) -> Path:
    return RUN_DIR / f"{name}-cluster"


def launcher() -> list[str]:
    """ringcomm-launch as an absolute path (sudo resets PATH), else this Python's module."""
    script = Path(sys.executable).with_name("ringcomm-launch")
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m",
                                                              "ringcomm.launch"]


def launch_command(state: dict, script: str = "examples/hosts.py") -> str:
    """The command that runs ``script`` on one rank per host, from h0."""
    return shlex.join(["ip", "netns", "exec", state["namespaces"]["h0"], *launcher(),
                       "--hosts", ",".join(state["hosts"]),
                       "--ssh-arg", f"-F {state['ssh_config']}", script])


def up(n_hosts: int, name: str, rate_mbit: float | None, subnet: str) -> int:
    if reason := unavailable_reason():
        say(f"cannot build hosts here: {reason}")
        return 2
    where = state_dir(name)
    if where.exists() or any(ns.startswith(f"{name}-") for ns in iproute().namespaces()):
        say(f"a cluster named {name} is up already ({where}); `python -m ringcomm.cluster "
            f"down{'' if name == NAME else ' --name ' + name}` removes it")
        return 1
    cluster = NetnsCluster(n_hosts, rate_mbit, subnet=subnet, keep=True, tag=name,
                           state_dir=where)
    try:
        cluster.start()     # tears down what it built when it fails
    except NetnsUnavailable as e:
        say(f"cannot build hosts here: {e}")
        return 2
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        say(f"building the hosts failed (nothing is left of them): {e}")
        return 1
    state = {"hosts": cluster.hosts, "ips": cluster.ips, "namespaces": cluster.namespaces,
             "ssh_config": str(cluster.ssh_config), "bin_dir": str(cluster.bin_dir)}
    (where / STATE).write_text(json.dumps(state, indent=1))
    cluster.detach()
    print(f"{n_hosts} hosts up in {cluster.setup_s:.1f} s (network namespaces on a bridge, "
          f"an sshd in each{f', links at {rate_mbit:g} Mbit/s' if rate_mbit else ''}):")
    for h in cluster.hosts:
        print(f"  {h}  {cluster.ips[h]}  (namespace {cluster.namespaces[h]})")
    print("Run a job on them (from h0, which reaches every host over ssh):")
    print(f"  {launch_command(state)}")
    print("Any command on a host:")
    named = [] if name == NAME else ["--name", name]
    this = [sys.executable, "-m", "ringcomm.cluster"]
    print(f"  {shlex.join([*this, 'run', *named, 'h1', '--', 'hostname', '-I'])}")
    print("Remove them:")
    print(f"  {shlex.join([*this, 'down', *named])}")
    return 0


def down(name: str) -> int:
    if reason := unavailable_reason(("ip",)):
        say(f"cannot remove hosts here: {reason}")
        return 2
    try:
        removed = remove(name, state_dir(name), iproute())
    except RuntimeError as e:
        say(f"some of the cluster is left: {e}")
        return 1
    stale = cleanup_stale(PREFIX)
    hosts = sorted(ns for ns in removed if not ns.endswith("-br"))
    print(f"removed {len(hosts)} hosts ({', '.join(hosts)})" if hosts
          else f"no cluster named {name} was up")
    if stale:
        print(f"and {len(stale)} namespaces left by test runs that are gone")
    return 0


def run(name: str, host: str, command: Sequence[str]) -> int:
    """Run ``command`` on ``host``: in its namespace, with its host name, the cluster's ssh
    first on PATH (plain ``ssh h2`` works); its exit code."""
    try:
        state = json.loads((state_dir(name) / STATE).read_text())
    except (OSError, ValueError):
        say(f"no cluster named {name} is up; `python -m ringcomm.cluster up N` first")
        return 2
    if host not in state["namespaces"]:
        say(f"no host {host} (the hosts: {', '.join(state['hosts'])})")
        return 2
    if not command:
        say("give a command after the host, e.g. run h0 -- bash")
        return 2
    env = dict(os.environ, PATH=os.pathsep.join([state["bin_dir"],
                                                 os.environ.get("PATH", os.defpath)]))
    argv = [tool("ip") or "ip", "netns", "exec", state["namespaces"][host],
            tool("unshare") or "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
            host, *command]
    try:
        return subprocess.call(argv, env=env)
    except KeyboardInterrupt:   # the command had the Ctrl-C too
        return 130


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ringcomm.cluster",
        description="Hosts on this machine (network namespaces with an sshd each) to try a "
                    "multi-host ringcomm job on; Linux, as root.")
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("--name", default=NAME, type=_name,
                       help=f"the cluster's name: its namespaces are NAME-h0, ... (default "
                            f"{NAME})")
    sub = p.add_subparsers(dest="action", required=True)
    u = sub.add_parser("up", parents=[named],
                       help="build N hosts and print the command to run a job on them")
    u.add_argument("hosts", type=int, metavar="N", help="how many hosts (1 to 200)")
    u.add_argument("--rate-mbit", type=float, default=None,
                   help="shape every host's link to this rate (tc tbf), in Mbit/s")
    u.add_argument("--subnet", default="10.77.0",
                   help="the hosts' /24: SUBNET.10, SUBNET.11, ... (default 10.77.0)")
    sub.add_parser("down", parents=[named], help="remove the hosts and everything in them")
    r = sub.add_parser("run", parents=[named], help="run a command on one host")
    r.add_argument("host")
    r.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.action == "up" and not 1 <= args.hosts <= 200:
        p.error(f"N must be 1 to 200 hosts; got {args.hosts}")
    if args.action == "up" and args.rate_mbit is not None and not args.rate_mbit > 0:
        p.error("--rate-mbit must be a positive rate")
    if args.action == "up" and not _is_subnet(args.subnet):
        p.error(f"--subnet {args.subnet!r}: three numbers 0-255, as 10.77.0")
    if args.action == "run" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return args


def _name(text: str) -> str:
    if not (text[:1].isascii() and text[:1].isalpha() and text.islower() and text.isalnum()
            and text.isascii() and len(text) <= 12):
        raise argparse.ArgumentTypeError("a lower-case letter, then up to 11 letters or digits")
    return text


def _is_subnet(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 3 and all(p.isdigit() and int(p) < 256 for p in parts)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.action == "up":
        sys.exit(up(args.hosts, args.name, args.rate_mbit, args.subnet))
    if args.action == "down":
        sys.exit(down(args.name))
    sys.exit(run(args.name, args.host, args.command))


if __name__ == "__main__":
    main()
