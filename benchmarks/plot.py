"""``--plot out.png``: busbw and time against size, log axes, one line per implementation and op.

matplotlib comes from the ``bench`` extra and is imported only here, only when asked for.
"""
from __future__ import annotations

import textwrap

from .measure import Record


def draw(path: str, records: list[Record], title: str) -> None:
    """Save a two-panel figure of ``records`` to ``path`` (the format follows the suffix)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(f"ringcomm-bench: --plot needs matplotlib ({e}): "
                         "pip install 'ringcomm[bench]'") from None
    fig, (bw, tm) = plt.subplots(1, 2, figsize=(12, 4.8))
    lines: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        lines.setdefault((r.impl, r.op), []).append(r)
    ops = sorted({op for _, op in lines})
    for (impl, op), rows in lines.items():  # colour by op, solid ringcomm, dashed MLX
        rows.sort(key=lambda r: r.bytes)
        look = dict(color=f"C{ops.index(op)}", ls="-" if impl == "ringcomm" else "--",
                    marker="o" if impl == "ringcomm" else "s", ms=3, label=f"{impl} {op}")
        sizes = [r.bytes for r in rows]
        bw.plot(sizes, [r.busbw_gbps for r in rows], **look)
        tm.plot(sizes, [r.time_us for r in rows], **look)
    for ax, ylabel in ((bw, "busbw (GB/s)"), (tm, "time (us)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(textwrap.fill(title, 140), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
