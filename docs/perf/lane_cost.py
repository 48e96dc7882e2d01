"""The Python a lane runs before and around its transfers: engine.run of each half of a 2-rank
all_gather's plan (1 MiB a rank, one stream a lane), over docs/perf/instant.py's transport.
Run: python3 docs/perf/lane_cost.py REPO   (REPO: a checkout; best of 5 loops, us per run)."""
import os
import sys
import time

sys.path[:0] = [sys.argv[1], os.path.dirname(os.path.abspath(__file__))]
import numpy as np  # noqa: E402
import instant  # noqa: E402  (after the checkout to measure is on the path)
from ringcomm import engine, plans  # noqa: E402

transport = instant.Instant()
plan = plans.all_gather(1 << 20, 2, 0, 1)
work = np.empty(2 << 20, np.uint8)
pool = engine.ScratchPool()
header = bytes(32)
for lane, part in enumerate((plan[0:1], plan[1:2])):
    def loop(n):
        for _ in range(n):
            engine.run(transport, part, work, None, time.monotonic() + 60, pool, header, None,
                       None)
    loop(2000)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        loop(20000)
        best = min(best, (time.perf_counter() - start) / 20000 * 1e6)
    print(f"{sys.argv[1]}: lane {lane}: {best:.1f} us per engine.run")
