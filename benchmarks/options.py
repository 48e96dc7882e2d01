"""The command line of ``ringcomm-bench``, parsed and checked before any rank starts.

Everything a rank needs travels as one :class:`Config` (JSON on the rank's command line), so
the parent that spawns ranks with ``-n`` and the ranks agree on one definition of the sweep.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Sequence

import ringcomm
from ringcomm.dtypes import SUPPORTED_DTYPES

from .caveats import LOAD_LIMIT, SPREAD_LIMIT

OPS = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter", "sendrecv")
DTYPES = {d.name: d for d in SUPPORTED_DTYPES}
IMPLS = ("ringcomm", "mlx", "gloo")
PEERS = IMPLS[1:]  # what --vs can name, in the table's order
OUTPUT_SUFFIXES = (".json", ".jsonl", ".csv")


@dataclasses.dataclass
class Config:
    """One sweep, as every rank runs it."""

    ops: list[str]
    sizes: list[int]
    dtype: str = "float32"
    warmup: int = 5
    iters: int = 20
    check: bool = False
    in_place: bool = False       # ringcomm's results overwrite their input (nccl-tests' in-place)
    transport: str = "tcp"
    protocol: str | None = None
    impls: list[str] = dataclasses.field(default_factory=lambda: ["ringcomm"])
    results: str | None = None   # rank 0 appends its records here (JSON lines) when set
    progress: float = 1.0        # rank 0 reports on stderr each size that took longer (s)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls(**json.loads(text))


def parse_size(text: str) -> int:
    """``8``, ``64K``, ``16M``, ``1G`` (binary multiples, as nccl-tests) in bytes."""
    m = re.fullmatch(r"(\d+)([KMG]?)B?", text.strip().upper())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 8, 64K, 16M or 1G")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def sizes(minbytes: int, maxbytes: int, factor: int) -> list[int]:
    """``minbytes``, ``minbytes * factor``, ... up to ``maxbytes`` (inclusive)."""
    out, size = [], minbytes
    while size <= maxbytes:
        out.append(size)
        size *= factor
    return out


def build_parser(prog: str = "ringcomm-bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time ringcomm's collectives over a size sweep, in the style of nccl-tests "
                    "(optionally side by side with MLX's ring backend and torch's gloo). "
                    "Start ranks with -n, or run under ringcomm-launch / with MLX_RANK and "
                    "MLX_HOSTFILE set.")
    p.add_argument("-n", "--nproc", type=int, default=None, metavar="N",
                   help="start N ranks on this machine (else join the ring of MLX_RANK and "
                        "MLX_HOSTFILE, as set by ringcomm-launch)")
    p.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("8"),
                   help="smallest size (default 8)")
    p.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"),
                   help="largest size (default 64M)")
    p.add_argument("-f", "--stepfactor", type=int, default=4,
                   help="multiply the size by this between steps (default 4)")
    p.add_argument("--op", default="all_sum",
                   help=f"comma-separated operations, from {', '.join(OPS)} (default all_sum)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), metavar="DTYPE",
                   help=f"element type (default float32): {', '.join(sorted(DTYPES))}")
    p.add_argument("-w", "--warmup", type=int, default=5,
                   help="untimed calls per size (default 5)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per size (default 20)")
    p.add_argument("-c", "--check", action="store_true",
                   help="check every result against numpy, with distinct inputs per rank; "
                        "#wrong counts wrong elements over all ranks")
    p.add_argument("--in-place", action="store_true",
                   help="time ringcomm in place, as nccl-tests' in-place columns: all_sum, "
                        "all_max and all_min write into their input, all_gather's input is "
                        "this rank's block of the output, sum_scatter's output is this rank's "
                        "block of the input (sendrecv and MLX are unchanged)")
    p.add_argument("--connections-per-ip", type=int, default=None, metavar="K",
                   help="connections between neighbours, with -n (default 1; under a launcher "
                        "the hostfile decides)")
    p.add_argument("--transport", default="tcp", choices=["tcp", "rdma"],
                   help="ringcomm's transport (default tcp); rdma uses pyverbs, or the verbs "
                        "emulation with RINGCOMM_VERBS=emulated")
    p.add_argument("--protocol", default=None, choices=["ringcomm", "mlx"],
                   help="ringcomm's wire protocol (default RINGCOMM_PROTOCOL or ringcomm)")
    p.add_argument("--vs", default=None, metavar="PEERS",
                   help="also run the sweep on mlx (MLX's ring backend), gloo (torch."
                        "distributed's gloo backend, when torch is importable) or both "
                        "(mlx,gloo), and compare: each peer's time, busbw and ratio")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="write the results: JSON lines (.json, .jsonl) or CSV (.csv)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="draw busbw and time against size (needs matplotlib: the bench extra)")
    p.add_argument("--time-limit", type=float, default=3600.0, metavar="SECONDS",
                   help="with -n: stop the ranks of a pass that runs longer (default 3600)")
    p.add_argument("--progress", type=float, default=1.0, metavar="SECONDS",
                   help="say on stderr when a size that took longer than this finishes "
                        "(default 1; 0: every size)")
    p.add_argument("--spread-limit", type=float, default=SPREAD_LIMIT, metavar="RATIO",
                   help="warn when, at a size, the slowest call took more than RATIO times "
                        f"the fastest (default {SPREAD_LIMIT:g})")
    p.add_argument("--load-limit", type=float, default=LOAD_LIMIT, metavar="SHARE",
                   help="with -n: warn when other work kept more than this share of the CPUs "
                        f"busy during a pass (default {LOAD_LIMIT:g}; 0 warns always)")
    p.add_argument("--version", action=_Version, help="print ringcomm's version and exit")
    return p


class _Version(argparse.Action):
    """``--version``: ``ringcomm X.Y.Z`` (the version is looked up only when asked for)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args) -> None:
        print(f"ringcomm {ringcomm.__version__}")
        parser.exit()


def parse(argv: Sequence[str] | None, prog: str = "ringcomm-bench") -> argparse.Namespace:
    """Parse and check the command line; usage errors exit 2 with a message saying what to fix."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    args.prog = prog
    args.ops = [op.strip() for op in args.op.split(",") if op.strip()]
    unknown = [op for op in args.ops if op not in OPS]
    if unknown or not args.ops:
        p.error(f"unknown op {', '.join(map(repr, unknown)) or repr(args.op)}; "
                f"choose from {', '.join(OPS)}")
    if len(set(args.ops)) != len(args.ops):
        p.error(f"--op names an operation twice: {args.op}")
    if args.minbytes > args.maxbytes:
        p.error(f"-b/--minbytes ({args.minbytes} bytes) is larger than -e/--maxbytes "
                f"({args.maxbytes} bytes); swap them")
    if args.stepfactor < 2:
        p.error(f"-f/--stepfactor must be at least 2; got {args.stepfactor}")
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be at least 1 and -w/--warmup at least 0")
    if args.nproc is not None and args.nproc < 2:
        p.error(f"-n must be at least 2 (a ring needs two ranks); got {args.nproc}")
    if args.connections_per_ip is not None:
        if args.nproc is None:
            p.error("--connections-per-ip goes with -n; under a launcher the hostfile sets "
                    "the connections (ringcomm-launch --connections-per-ip K)")
        if args.connections_per_ip < 1:
            p.error("--connections-per-ip must be at least 1")
    if args.output and not args.output.lower().endswith(OUTPUT_SUFFIXES):
        p.error(f"--output {args.output!r}: the name must end in .json or .jsonl (JSON lines) "
                "or .csv")
    if args.time_limit <= 0:
        p.error("--time-limit must be a positive number of seconds")
    if not args.progress >= 0:
        p.error(f"--progress must be 0 or more seconds; got {args.progress:g}")
    if not args.spread_limit >= 1:
        p.error(f"--spread-limit is a ratio of the slowest call to the fastest: at least 1; "
                f"got {args.spread_limit:g}")
    if not args.load_limit >= 0:
        p.error(f"--load-limit is a share of the CPUs: at least 0; got {args.load_limit:g}")
    args.vs = _peers(p, args.vs)
    if "mlx" in args.vs and not _importable("mlx.core"):
        p.error("--vs mlx needs MLX: pip install 'ringcomm[mlx]' (mlx[cpu] on Linux)")
    if "gloo" in args.vs and not _importable("torch"):
        p.error("--vs gloo needs torch (torch.distributed with gloo): pip install torch")
    if args.plot and not _importable("matplotlib"):
        p.error("--plot needs matplotlib: pip install 'ringcomm[bench]'")
    return args


def config_from(args: argparse.Namespace) -> Config:
    """The sweep that ``args`` asks for."""
    return Config(ops=args.ops, sizes=sizes(args.minbytes, args.maxbytes, args.stepfactor),
                  dtype=args.dtype, warmup=args.warmup, iters=args.iters, check=args.check,
                  in_place=args.in_place,
                  transport=args.transport, protocol=args.protocol,
                  impls=["ringcomm", *args.vs], progress=args.progress)


def _peers(p: argparse.ArgumentParser, text: str | None) -> list[str]:
    """``--vs mlx,gloo`` as a list in the table's order (empty without --vs)."""
    if text is None:
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown or not names:
        p.error(f"--vs: unknown peer {', '.join(map(repr, unknown)) or repr(text)}; choose "
                f"from {', '.join(PEERS)}, or both comma-separated (mlx,gloo)")
    if len(set(names)) != len(names):
        p.error(f"--vs names a peer twice: {text}")
    return [peer for peer in PEERS if peer in names]


def _importable(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
