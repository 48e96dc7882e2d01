"""``ringcomm.wait_all``: the results of several ``Work`` handles, under one timeout."""
from __future__ import annotations

import math
import time
from typing import Any, Iterable

from .work import WaitTimeoutError, Work, _limit


def wait_all(works: Iterable[Work], timeout: float | None = None) -> list[Any]:
    """The results of ``works``, in their order, once all have completed (torch's
    ``Work.wait`` on each, as one call).  The first failure in that order is raised, at the
    latest when that operation completes (ops issued on one group after a failure fail with
    ``GroupBrokenError`` chained from it).  ``timeout`` covers the whole wait: past it,
    ``WaitTimeoutError`` names the first operation still running, which keeps running;
    ``None`` (or inf) waits until all complete, each within its group's own deadline."""
    works = list(works)
    for work in works:
        if not isinstance(work, Work):
            raise TypeError(f"wait_all: {work!r} is not a ringcomm.Work (an async_op=True "
                            "call's result)")
    limit = _limit(timeout)  # a negative or NaN timeout is a ConfigError before any wait
    deadline = math.inf if limit is None else time.monotonic() + limit
    results = []
    for work in works:
        left = max(deadline - time.monotonic(), 0.0)
        try:
            results.append(work.wait(None if left == math.inf else left))
        except WaitTimeoutError:
            raise WaitTimeoutError(f"wait_all: {work._label} is still running after waiting "
                                   f"{timeout:g} s for {len(works)} operations; it keeps the "
                                   "group's deadline: wait again") from None
    return results
