"""``python -m ringcomm.bench.links``: busbw over links shaped with ``tc tbf``, as a share of
the link rate, for ringcomm and (``--vs mlx``) MLX's ring on the same hostfile.

For each rate, one network namespace per rank is built on a bridge (``ringcomm.netns``'s
``NetnsHosts``: the builder that the multi-host tests and ``python -m ringcomm.cluster`` use
too), every host's link shaped at the rate in both directions; each implementation's ranks are
started in the hosts with ``ip netns exec`` (no sshd), one pass after the other on a fresh
port, on one hostfile of the hosts' addresses, and run ``ringcomm.bench.rank`` (the sweep of
``ringcomm-bench``).  The namespaces, and every rank in them, go at the end of each rate, also
on Ctrl-C or a failure.  Needs root, ``ip`` and ``tc`` (PATH, or ``--iproute DIR``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

from ringcomm.lanes import auto_threads
from ringcomm.launch import remote_env
from ringcomm.supervise import exit_code

from . import options, spawn
from .measure import Record
from ringcomm.netns import Iproute, NetnsHosts, NetnsUnavailable, die_with_parent

PREFIX = "rclk"
FIRST_PORT = 29500
EXIT_UNAVAILABLE = 3


@dataclasses.dataclass
class LinkRecord:
    """One implementation, op and size at one link rate: a row of the table, a JSON line."""

    rate_gbit: float     # 0: unshaped (what the cores can feed through veth and the bridge)
    mtu: int
    burst: int
    record: Record

    @property
    def busbw_gbit(self) -> float:
        return self.record.busbw_gbps * 8

    @property
    def share(self) -> float | None:
        """busbw / link rate: 1.0 fills the link with payload (headers count against it)."""
        return self.busbw_gbit / self.rate_gbit if self.rate_gbit else None

    def to_json(self) -> dict:
        return dict(dataclasses.asdict(self.record), rate_gbit=self.rate_gbit, mtu=self.mtu,
                    burst=self.burst, busbw_gbit=round(self.busbw_gbit, 4),
                    share=None if self.share is None else round(self.share, 4))


def payload_ceiling(mtu: int) -> float:
    """The most of a tbf rate that TCP payload can be: tbf counts each frame's Ethernet (14),
    IPv4 (20) and TCP-with-timestamps (32) header bytes."""
    return (mtu - 52) / (mtu + 14)


def run_pass(hosts: NetnsHosts, nranks: int, impl: str, config: options.Config, port: int,
             time_limit: float, threads: int) -> tuple[int, list[Record]]:
    """``impl``'s sweep on the first ``nranks`` hosts; (exit code, rank 0's records)."""
    names = hosts.hosts[:nranks]
    hostfile = hosts.tmp / f"hostfile-{impl}-{nranks}-{port}.json"
    hostfile.write_text(json.dumps([[f"{hosts.ips[h]}:{port}"] for h in names]))
    results = hosts.tmp / f"records-{impl}-{nranks}-{port}.jsonl"
    rank_config = dataclasses.replace(config, impls=[impl], results=str(results))
    env = dict(spawn.child_env(), **remote_env([]), MLX_HOSTFILE=str(hostfile),
               RINGCOMM_THREADS=str(threads))
    argv = [sys.executable, "-m", "ringcomm.bench.rank", rank_config.to_json()]
    procs = [hosts.popen(h, argv, env=dict(env, MLX_RANK=str(r)), cwd=spawn.ROOT,
                         stdout=spawn.stderr_fd(), stdin=subprocess.DEVNULL,
                         preexec_fn=die_with_parent)
             for r, h in enumerate(names)]
    try:
        code = _wait(procs, time_limit, f"the {impl} pass on {nranks} ranks")
    finally:
        _stop(procs)
    return code, spawn.read_records(str(results))


def _wait(procs: list[subprocess.Popen], time_limit: float, what: str) -> int:
    """The first non-zero exit code (0 when all succeed); the limit ends the pass."""
    deadline = time.monotonic() + time_limit
    while True:
        codes = [p.poll() for p in procs]
        bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            rank, code = bad[0]
            print(f"ringcomm-bench links: {what}: rank {rank} exited {code}; stopping the "
                  "others (their messages are above)", file=sys.stderr)
            return exit_code(code)
        if all(c == 0 for c in codes):
            return 0
        if time.monotonic() > deadline:
            print(f"ringcomm-bench links: {what} ran past --time-limit {time_limit:g} s; "
                  "stopping its ranks", file=sys.stderr)
            return spawn.EXIT_TIME_LIMIT
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()  # (NetnsHosts.close kills whatever is left in the namespaces)


def measure(args: argparse.Namespace, config: options.Config, iproute: Iproute,
            rows: list[LinkRecord], out: TextIO = sys.stdout) -> int:
    """Every rate, rank count and implementation, appended to ``rows`` as each pass ends (a
    failure or Ctrl-C keeps what was measured); prints the rows of each rank count."""
    port = FIRST_PORT
    print(header(args, config), file=out, flush=True)
    print(columns(config.impls), file=out, flush=True)
    for rate in args.rates:
        with NetnsHosts(max(args.ranks), rate_mbit=rate * 1000 or None, prefix=PREFIX,
                        mtu=args.mtu, burst=args.burst, iproute=iproute) as hosts:
            for nranks in args.ranks:
                found: list[LinkRecord] = []
                threads = args.threads or auto_threads(nranks)
                for impl in config.impls:
                    print(f"ringcomm-bench links: {impl} on {nranks} ranks over "
                          f"{_rate(rate)} links", file=sys.stderr, flush=True)
                    code, records = run_pass(hosts, nranks, impl, config, port,
                                             args.time_limit, threads)
                    port += 10
                    new = [LinkRecord(rate, args.mtu, hosts.burst, r) for r in records]
                    found += new
                    rows += new
                    if code != 0:
                        print_rows(found, config.impls, out)
                        return code
                print_rows(found, config.impls, out)
    return 0


def _rate(rate: float) -> str:
    return f"{rate:g} Gbit/s" if rate else "unshaped"


def header(args: argparse.Namespace, config: options.Config) -> str:
    return (f"# ringcomm-bench links: one network namespace per rank on a bridge, each link "
            f"shaped with tc tbf in both directions (rate none: unshaped; burst "
            f"{args.burst or 'rate x 4 ms'}, "
            f"MTU {args.mtu}: TCP payload can fill at most {payload_ceiling(args.mtu):.1%} of "
            f"the rate); {config.warmup} warm-up + {config.iters} timed calls per size, time = "
            "median over calls of the slowest rank; busbw in Gbit/s, share = busbw / rate")


def _names(impls: Sequence[str]) -> list[str]:
    return ["rate(Gb/s)", "ranks", "op", "size(B)"] + [
        f"{i} {c}" for i in impls for c in ("busbw", "share")]


def _line(cells: Sequence[str], impls: Sequence[str]) -> str:
    """Right-aligned cells under the names; the first column leaves room for a '#'."""
    widths = [max(len(n), 10) + (i == 0) for i, n in enumerate(_names(impls))]
    return " ".join(f"{c:>{w}}" for c, w in zip(cells, widths))


def columns(impls: Sequence[str]) -> str:
    return "#" + _line(_names(impls), impls)[1:]


def print_rows(rows: list[LinkRecord], impls: Sequence[str], out: TextIO) -> None:
    """One line per op and size, each implementation's busbw and share side by side."""
    keys = sorted({(r.rate_gbit, r.record.ranks, r.record.op, r.record.bytes) for r in rows},
                  key=lambda k: (k[0], k[1], options.OPS.index(k[2]), k[3]))
    for key in keys:
        cells = [f"{key[0]:g}" if key[0] else "none", str(key[1]), key[2], str(key[3])]
        for impl in impls:
            got = next((r for r in rows if r.record.impl == impl and
                        (r.rate_gbit, r.record.ranks, r.record.op, r.record.bytes) == key), None)
            cells += [f"{got.busbw_gbit:.3f}", "-" if got.share is None else f"{got.share:.1%}"
                      ] if got else ["-", "-"]
        print(_line(cells, impls), file=out, flush=True)


SWEEP_DEFAULTS = ["-b", "8M", "-e", "32M", "-f", "2", "--op", "all_sum,all_gather"]


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Run ringcomm-bench's sweep on one network namespace per rank with every "
                    "link shaped by tc tbf, and report busbw as a share of the link rate "
                    "(needs root, ip and tc).",
        epilog="The sweep takes ringcomm-bench's options (-b, -e, -f, --op, --dtype, -w, "
               "--iters, -c, --vs, --in-place, --protocol); here the defaults are "
               + " ".join(SWEEP_DEFAULTS) + ".")
    p.add_argument("--ranks", default="2", help="comma-separated rank counts (default 2)")
    p.add_argument("--rates", default="2,5,8",
                   help="comma-separated link rates in Gbit/s (default 2,5,8); 'none': "
                        "unshaped links, what the cores can feed")
    p.add_argument("--mtu", type=int, default=9000, help="MTU of every link (default 9000)")
    p.add_argument("--burst", type=options.parse_size, default=None,
                   help="tbf bucket in bytes (default 4 ms at the rate, at least 32K)")
    p.add_argument("--threads", type=int, default=None,
                   help="RINGCOMM_THREADS of every rank (default: cores / ranks, as if each "
                        "host had its share of this machine's cores)")
    p.add_argument("--iproute", default=None, metavar="DIR",
                   help="an unpacked iproute2 (DIR/bin/ip, DIR/sbin/tc and its libraries, "
                        "found through LD_LIBRARY_PATH for ip and tc only); default "
                        "$RINGCOMM_IPROUTE, else ip and tc from PATH")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="also write every row as a JSON line to FILE")
    p.add_argument("--time-limit", type=float, default=900.0, metavar="SECONDS",
                   help="stop a pass (one implementation on one rank count) after this long")
    return p


def parse(argv: Sequence[str] | None, prog: str) -> tuple[argparse.Namespace, options.Config]:
    """The command line, checked (the sweep's part by ringcomm-bench's own parser), and the
    sweep every rank runs."""
    p = build_parser(prog)
    args, rest = p.parse_known_args(argv)
    try:
        args.ranks = [int(x) for x in args.ranks.split(",") if x.strip()]
        args.rates = [0.0 if x.strip() == "none" else float(x) or -1.0
                      for x in args.rates.split(",") if x.strip()]
    except ValueError as e:
        p.error(f"--ranks takes whole numbers and --rates numbers of Gbit/s: {e}")
    if not args.ranks or min(args.ranks) < 2 or max(args.ranks) > 200:
        p.error("--ranks: each count from 2 to 200")
    if not args.rates or min(args.rates) < 0:
        p.error("--rates: positive Gbit/s, e.g. 2,5,8 or 0.5, or none (unshaped)")
    if not 576 <= args.mtu <= 65535:
        p.error(f"--mtu must be 576..65535; got {args.mtu}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    sweep = options.parse(SWEEP_DEFAULTS + rest, prog)
    # judged on the parsed sweep, so that an abbreviation (--out, --trans) cannot slip by
    if bad := [name for name, given in (
            ("-n/--nproc", sweep.nproc is not None), ("--plot", sweep.plot is not None),
            ("--output", sweep.output is not None), ("--transport", sweep.transport != "tcp"),
            ("--connections-per-ip", sweep.connections_per_ip is not None)) if given]:
        p.error(f"{', '.join(bad)}: not with the links benchmark (it starts one rank per "
                "host over TCP, and writes its own --output before the sweep's options)")
    return args, options.config_from(sweep)


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second one must not cut the teardown
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, prog: str = "python -m ringcomm.bench.links") -> None:
    args, config = parse(argv, prog)
    signal.signal(signal.SIGTERM, _interrupt)     # timeout(1), kill: tear down as on Ctrl-C
    rows: list[LinkRecord] = []
    try:
        code = measure(args, config, Iproute.find(args.iproute), rows)
    except NetnsUnavailable as e:
        print(f"{prog}: cannot build the hosts: {e}", file=sys.stderr)
        code = EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the namespaces were removed", file=sys.stderr)
        code = 130
    if args.output:
        Path(args.output).write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
        print(f"{prog}: wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
