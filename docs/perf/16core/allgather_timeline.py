"""Where a 2-rank all_gather of 1-8 MiB spends its time: per call, when the lanes start and end.

Run: python3 -m ringcomm.launch -n 2 docs/perf/16core/allgather_timeline.py
Times are microseconds from the call's start, medians over 40 calls, each after a barrier;
"copy own" is a plain copy of this rank's block, for scale.
"""
import collections
import statistics
import threading
import time

import numpy as np

import ringcomm
from ringcomm import lanes

marks: dict = {}
_job, _run = lanes._job, lanes.Lanes.run


def timed_job(*args, **kwargs):
    job = _job(*args, **kwargs)

    def run():
        start = time.perf_counter()
        job()
        marks.setdefault("lanes", []).append((start, time.perf_counter()))
    return run


def timed_run(self, *args, **kwargs):
    marks["run"] = time.perf_counter()
    return _run(self, *args, **kwargs)


lanes._job, lanes.Lanes.run = timed_job, timed_run
group = ringcomm.init(strict=True)
for total in (1 << 20, 2 << 20, 8 << 20):
    x = np.ones(total // 8, np.float32)
    out = np.empty(total // 4, np.float32)
    for _ in range(10):
        group.all_gather(x, out=out)
    rows = collections.defaultdict(list)
    for _ in range(40):
        group.barrier()
        marks.clear()
        t0 = time.perf_counter()
        group.all_gather(x, out=out)
        rows["total"].append(time.perf_counter() - t0)
        if "run" in marks:
            rows["lanes.run"].append(marks["run"] - t0)
            for i, (start, end) in enumerate(sorted(marks["lanes"])):
                rows[f"lane{i} start"].append(start - t0)
                rows[f"lane{i} end"].append(end - t0)
    own = out[group.rank() * x.size:(group.rank() + 1) * x.size]
    t = time.perf_counter()
    for _ in range(20):
        own[...] = x
    rows["copy own"].append((time.perf_counter() - t) / 20)
    print(f"rank {group.rank()} {total >> 20} MiB, {threading.active_count()} threads: " +
          ", ".join(f"{k} {statistics.median(v) * 1e6:.0f}" for k, v in rows.items()), flush=True)
group.close()
