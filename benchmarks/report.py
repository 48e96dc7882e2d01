"""The nccl-tests-style table: one block per op, ringcomm's columns, then each peer's (MLX's
ring, torch's gloo) with the ratio of ringcomm's busbw to it; every time is shown as the
median with the fastest and slowest call beside it, and notes under the table say when the
numbers are not to be compared (``caveats``)."""
from __future__ import annotations

from typing import Sequence, TextIO

from .caveats import Caveats
from .impls import gloo_lacks
from .measure import Record

_BASE = [("size(B)", 12), ("count", 12), ("type", 9), ("op", 12), ("time(us)", 11),
         ("min(us)", 10), ("max(us)", 10), ("algbw(GB/s)", 12), ("busbw(GB/s)", 12),
         ("#wrong", 7)]
_LABELS = {"mlx": "MLX", "gloo": "gloo"}


def header(ranks: int, connections: int | None, transport: str, dtype: str, warmup: int,
           iters: int, vs: Sequence[str] | str | None, in_place: bool = False) -> str:
    """The comment line above the tables: what ran, and how it was timed."""
    peers = _peers(vs)
    k = f"{connections} connection(s) per neighbour" if connections else "connections from hostfile"
    versus = ""
    if len(peers) == 1:
        versus = f"; vs {_version(peers[0])}: ratio = ringcomm busbw / {_LABELS[peers[0]]} busbw"
    elif peers:
        versus = (f"; vs {' and '.join(map(_version, peers))}: PEER ratio = ringcomm busbw / "
                  "PEER busbw")
    place = ", ringcomm in place" if in_place else ""
    return (f"# ringcomm-bench: {ranks} ranks, transport {transport}, {k}, {dtype}{place}, "
            f"{warmup} warm-up + {iters} timed calls per size; a call's time is the slowest "
            f"rank's; time = median over calls, min and max = fastest and slowest call{versus}")


def print_tables(records: list[Record], ops: list[str], vs: Sequence[str] | str | None,
                 check: bool, out: TextIO) -> None:
    """A block per op, rows by size; each peer's row of the same size beside ringcomm's."""
    peers = _peers(vs)
    cols = _columns(peers, check)
    for op in ops:
        ours = {r.bytes: r for r in records if r.impl == "ringcomm" and r.op == op}
        theirs = {p: {r.bytes: r for r in records if r.impl == p and r.op == op} for p in peers}
        sizes = set(ours).union(*theirs.values())
        if not sizes:
            continue
        dtype = next(r.dtype for r in records if r.op == op)
        print(f"#\n# {op}{_notes(op, peers, dtype)}", file=out)
        print("#" + " ".join(f"{name:>{w}}" for name, w in cols)[1:], file=out)
        for size in sorted(sizes):
            r = ours.get(size)
            first = r or next(t[size] for t in theirs.values() if size in t)
            cells = [str(size), str(first.count), first.dtype, op]
            cells += ([*_times(r), f"{r.algbw_gbps:.3f}", f"{r.busbw_gbps:.3f}",
                       _wrong(r.wrong)] if r else ["-"] * 6)
            for p in peers:
                m = theirs[p].get(size)
                cells += [*_times(m), f"{m.busbw_gbps:.3f}"] if m else ["-"] * 4
                if check:
                    cells.append(_wrong(m.wrong) if m else "-")
                cells.append(f"{r.busbw_gbps / m.busbw_gbps:.2f}"
                             if r and m and m.busbw_gbps else "-")
            print(" ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)), file=out, flush=True)


def print_notes(caveats: Caveats, out: TextIO) -> None:
    """Under the table: why its numbers are not to be compared, when they are not."""
    notes = caveats.notes()
    if notes:
        print("#", file=out)
    for line in notes:
        print(f"# note: {line}", file=out, flush=True)


def _times(r: Record) -> list[str]:
    """Median, fastest and slowest call ('-' for the last two where a record lacks them)."""
    spread = [r.time_min_us, r.time_max_us]
    return [f"{r.time_us:.1f}", *("-" if t is None else f"{t:.1f}" for t in spread)]


def _peers(vs: Sequence[str] | str | None) -> list[str]:
    """``--vs``'s peers as a list (a single name is accepted, as callers passed before)."""
    if not vs:
        return []
    return [vs] if isinstance(vs, str) else list(vs)


def _columns(peers: list[str], check: bool) -> list[tuple[str, int]]:
    cols = list(_BASE)
    for p in peers:
        cols += [(f"{p} time(us)", len(p) + 10), (f"{p} min(us)", len(p) + 9),
                 (f"{p} max(us)", len(p) + 9), (f"{p} busbw(GB/s)", len(p) + 13)]
        if check:
            cols.append((f"{p} #wrong", len(p) + 8))
        cols.append(("ratio", 7) if len(peers) == 1 else (f"{p} ratio", len(p) + 7))
    return cols


def _notes(op: str, peers: list[str], dtype: str) -> str:
    """What a peer lacks for ``op`` (its cells are '-'), or does differently."""
    notes = []
    if "mlx" in peers and op == "sum_scatter":
        notes.append("MLX's ring has no reduce-scatter: '-'")
    if "gloo" in peers:
        lacks = gloo_lacks(op, dtype)
        if lacks:
            notes.append(f"{lacks}: '-'")
        elif op == "sum_scatter":
            notes.append("gloo's reduce_scatter is a whole all_reduce, then this rank's slice")
    return f" ({'; '.join(notes)})" if notes else ""


def _wrong(value: int | None) -> str:
    return "N/A" if value is None else str(value)


def _version(peer: str) -> str:
    if peer == "gloo":  # torch's version without importing torch (seconds) in the parent
        from importlib.metadata import PackageNotFoundError, version
        try:
            return f"torch {version('torch')} gloo"
        except PackageNotFoundError:
            return "torch gloo"
    try:
        import mlx.core as mx
        return f"MLX {mx.__version__} ring"
    except ImportError:
        return "MLX ring"
