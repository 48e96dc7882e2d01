"""``ringcomm-bench`` / ``python -m ringcomm.bench``: the nccl-tests-style benchmark command.

With ``-n N`` this process starts the ranks itself (one pass per implementation, see
``spawn``) and prints the combined table; without it, it is one rank of a ring started by
ringcomm-launch (or configured by MLX_RANK and MLX_HOSTFILE), and rank 0 prints the table.
Ctrl-C (or SIGTERM, SIGHUP) stops the ranks, and what finished is still printed and written
(``--output``) before the exit with 128 + the signal's number (130 for Ctrl-C).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ringcomm.transports import settings
from ringcomm.transports.errors import ConfigError, RingcommError

from . import caveats, options, output, rank, report, spawn
from .impls import connections_per_neighbour
from .interrupts import Interrupts
from .load import LoadMeter, PassLoad
from .measure import Record


def main(argv: Sequence[str] | None = None, prog: str = "ringcomm-bench") -> None:
    """Parse, run the sweep(s), report; exits 2 on usage or configuration errors, and 128 +
    the signal (130 for Ctrl-C) when stopped, after reporting what finished."""
    try:
        args = options.parse(argv, prog)
        config = options.config_from(args)
    except KeyboardInterrupt:  # before anything ran: nothing to keep
        print(f"{prog}: stopped by SIGINT while starting; nothing was measured",
              file=sys.stderr)
        sys.exit(rank.EXIT_INTERRUPTED)
    sys.exit(_spawn_ranks(args, config) if args.nproc is not None else _be_a_rank(args, config))


def _spawn_ranks(args: argparse.Namespace, config: options.Config) -> int:
    connections = args.connections_per_ip or 1
    records: list[Record] = []
    loads: list[PassLoad] = []
    status, stopped = 0, ""
    with Interrupts() as interrupts:
        for impl in config.impls:
            if interrupts.signalled is not None:
                break
            print(f"ringcomm-bench: {impl} pass on {args.nproc} local ranks", file=sys.stderr,
                  flush=True)
            meter = LoadMeter(impl)
            result = spawn.run_pass(impl, config, args.nproc, connections, args.time_limit,
                                    interrupts)
            loads.append(meter.finish())
            records += result.records
            if interrupts.signalled is not None:
                stopped = f" during the {impl} pass"
            elif result.exit_code != 0:
                print(f"ringcomm-bench: the {impl} pass failed (exit code {result.exit_code}); "
                      "the ranks' messages are above", file=sys.stderr)
                status = result.exit_code
                break
        if records:
            _report(args, records, args.nproc, connections, loads,
                    say_written=interrupts.signalled is None)
        if interrupts.signalled is not None:
            print(f"ringcomm-bench: stopped by {interrupts.name}{stopped}; "
                  f"{_kept(records, args.output)}", file=sys.stderr, flush=True)
            status = 128 + interrupts.signalled
    return status


def _be_a_rank(args: argparse.Namespace, config: options.Config) -> int:
    knobs = settings.load()
    if knobs.rank is None and knobs.hostfile is None:
        print(f"{args.prog}: error: no ring to join: give -n N to start N local ranks, or run "
              "under ringcomm-launch (or set MLX_RANK and MLX_HOSTFILE)", file=sys.stderr)
        return 2
    records: list[Record] = []
    status, stopped = 0, ""
    try:
        rank.run(config, records)
    except ConfigError as e:
        print(f"{args.prog}: {e}", file=sys.stderr)
        return rank.EXIT_CONFIG
    except KeyboardInterrupt:  # the sizes that finished are still reported
        status, stopped = rank.EXIT_INTERRUPTED, "stopped by SIGINT"
    except RingcommError as e:  # e.g. a peer stopped first: it names the rank, peer and call
        print(f"{args.prog}: {type(e).__name__}: {e}", file=sys.stderr)
        status, stopped = rank.EXIT_FAILED, "stopped by that error"
    first = (knobs.rank or "0").strip() == "0"
    if first and records:
        _report(args, records, records[0].ranks, connections_per_neighbour(), [],
                say_written=not status)
    if status and first:
        print(f"{args.prog}: {stopped}; {_kept(records, args.output)}", file=sys.stderr)
    return status


def _kept(records: list[Record], path: str | None) -> str:
    """What an interrupted run kept, for its last line."""
    if not records:
        return "no size had finished"
    where = f" and written to {path}" if path else ""
    return f"the {len(records)} result(s) that finished are in the table above{where}"


def _report(args: argparse.Namespace, records: list[Record], ranks: int,
            connections: int | None, loads: list[PassLoad], say_written: bool = True) -> None:
    transport = args.transport
    if transport == "rdma" and settings.load().verbs == "emulated":
        transport = "rdma on EMULATED verbs (Unix sockets, not RDMA hardware)"
    title = report.header(ranks, connections, transport, args.dtype, args.warmup,
                          args.iters, args.vs, args.in_place)
    print(title)
    report.print_tables(records, args.ops, args.vs, args.check, sys.stdout)
    found = caveats.judge(records, loads, args.load_limit, args.spread_limit)
    report.print_notes(found, sys.stdout)
    warning = found.warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if args.output:
        output.write(args.output, records)
        if say_written:  # (an interrupted run says it in its last line)
            print(f"ringcomm-bench: wrote {len(records)} records to {args.output}", file=sys.stderr)
    if args.plot:
        from . import plot
        plot.draw(args.plot, records, title.lstrip("# "))
        print(f"ringcomm-bench: wrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
