"""The nccl-tests-style table: one block per op, ringcomm's columns, then MLX's and the ratio."""
from __future__ import annotations

from typing import TextIO

from .measure import Record

_BASE = [("size(B)", 12), ("count", 12), ("type", 9), ("op", 12), ("time(us)", 11),
         ("algbw(GB/s)", 12), ("busbw(GB/s)", 12), ("#wrong", 7)]
_MLX = [("mlx time(us)", 13), ("mlx busbw(GB/s)", 16)]


def header(ranks: int, connections: int | None, transport: str, dtype: str, warmup: int,
           iters: int, vs: str | None, in_place: bool = False) -> str:
    """The comment line above the tables: what ran, and how it was timed."""
    k = f"{connections} connection(s) per neighbour" if connections else "connections from hostfile"
    versus = (f"; vs {_mlx_version()}: ratio = ringcomm busbw / MLX busbw" if vs == "mlx"
              else "")
    place = ", ringcomm in place" if in_place else ""
    return (f"# ringcomm-bench: {ranks} ranks, transport {transport}, {k}, {dtype}{place}, "
            f"{warmup} warm-up + {iters} timed calls per size, time = median over calls of the "
            f"slowest rank{versus}")


def print_tables(records: list[Record], ops: list[str], vs: str | None, check: bool,
                 out: TextIO) -> None:
    """A block per op, rows by size; MLX's row of the same size beside ringcomm's."""
    cols = _BASE + (_MLX + ([("mlx #wrong", 11)] if check else []) + [("ratio", 7)]
                    if vs == "mlx" else [])
    for op in ops:
        ours = {r.bytes: r for r in records if r.impl == "ringcomm" and r.op == op}
        theirs = {r.bytes: r for r in records if r.impl == "mlx" and r.op == op}
        if not ours and not theirs:
            continue
        print(f"#\n# {op}" + (" (MLX's ring has no reduce-scatter: '-')"
                              if vs == "mlx" and op == "sum_scatter" else ""), file=out)
        print("#" + " ".join(f"{name:>{w}}" for name, w in cols)[1:], file=out)
        for size in sorted(set(ours) | set(theirs)):
            r, m = ours.get(size), theirs.get(size)
            first = r or m
            cells = [str(size), str(first.count), first.dtype, op]
            cells += ([f"{r.time_us:.1f}", f"{r.algbw_gbps:.3f}", f"{r.busbw_gbps:.3f}",
                       _wrong(r.wrong)] if r else ["-"] * 4)
            if vs == "mlx":
                cells += [f"{m.time_us:.1f}", f"{m.busbw_gbps:.3f}"] if m else ["-", "-"]
                if check:
                    cells.append(_wrong(m.wrong) if m else "-")
                cells.append(f"{r.busbw_gbps / m.busbw_gbps:.2f}"
                             if r and m and m.busbw_gbps else "-")
            print(" ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)), file=out, flush=True)


def _wrong(value: int | None) -> str:
    return "N/A" if value is None else str(value)


def _mlx_version() -> str:
    try:
        import mlx.core as mx
        return f"MLX {mx.__version__} ring"
    except ImportError:
        return "MLX ring"
