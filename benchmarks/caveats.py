"""When a run's numbers cannot be compared: the machine was busy with other work during a
pass, or the calls at a size took widely different times.

Either makes a median (and a ratio of two medians) say more about the machine than about the
implementations: under load, ratios to MLX swung from 0.16 to 28 between back-to-back runs.
:func:`judge` turns the records and each pass's load into notes for under the table and one
warning line for stderr.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .load import PassLoad
from .measure import Record

SPREAD_LIMIT = 5.0  # slowest call / fastest call at one size
LOAD_LIMIT = 0.2    # share of the CPUs other work kept busy during a pass
LISTED_SIZES = 6    # sizes named in the spread note; more are counted


@dataclasses.dataclass
class Caveats:
    """What the table's reader must know before comparing its numbers."""

    busy: list[PassLoad]
    wide: list[Record]
    load_limit: float
    spread_limit: float
    sizes: int

    def notes(self) -> list[str]:
        """One line per problem, for under the table."""
        lines = [f"busy machine: {load.describe()} ({100 * load.share:.0f}%, over --load-limit "
                 f"{self.load_limit:g}): its times, and ratios to them, are not comparable"
                 for load in self.busy]
        if self.wide:
            named = ", ".join(f"{r.impl} {r.op} {r.bytes} B ({r.spread:.1f}x)"
                              for r in self.wide[:LISTED_SIZES])
            more = f" and {len(self.wide) - LISTED_SIZES} more" if len(self.wide) > LISTED_SIZES else ""
            lines.append(f"wide spread: the slowest call took over {self.spread_limit:g}x the "
                         f"fastest (--spread-limit) at {len(self.wide)} of {self.sizes} sizes: "
                         f"{named}{more}; their medians, and ratios of them, are not comparable")
        return lines

    def warning(self) -> str | None:
        """The one stderr line (None when there is nothing to say)."""
        said = []
        if self.busy:
            said.append("other work kept " + ", ".join(
                f"{load.other_cpus:.1f} of {load.cpus} CPUs busy during the {load.impl} pass"
                for load in self.busy))
        if self.wide:
            said.append(f"the slowest call took over {self.spread_limit:g}x the fastest at "
                        f"{len(self.wide)} of {self.sizes} sizes")
        if not said:
            return None
        return (f"ringcomm-bench: warning: {'; '.join(said)}: these numbers are not meaningful "
                "to compare (see the notes under the table)")


def judge(records: Sequence[Record], loads: Sequence[PassLoad], load_limit: float = LOAD_LIMIT,
          spread_limit: float = SPREAD_LIMIT) -> Caveats:
    """The passes over ``load_limit`` and the records over ``spread_limit``."""
    busy = [load for load in loads if load.share >= load_limit]
    wide = [r for r in records if r.spread is not None and r.spread > spread_limit]
    return Caveats(busy, wide, load_limit, spread_limit, len(records))
