"""``python -m ringcomm.bench.sweep``: the original name of the benchmark command, kept as an alias.

    python -m ringcomm.launch -n 2 -- python -m ringcomm.bench.sweep -b 8 -e 64M -f 8 --op all_sum

is ``ringcomm-bench`` run as one rank of a launched ring; ``python -m ringcomm.bench -n 2 ...``
starts the ranks itself.  The helpers that lived here moved to ``options`` and ``measure``.
"""
from __future__ import annotations

from .cli import main
from .measure import bus_factor, input_count, measure
from .options import DTYPES, OPS, parse_size, sizes

__all__ = ["DTYPES", "OPS", "bus_factor", "input_count", "main", "measure", "parse_size", "sizes"]

if __name__ == "__main__":
    main(prog="python -m ringcomm.bench.sweep")
