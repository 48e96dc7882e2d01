"""A training step's collectives: an 8-byte all_sum (a loss), then a large all_sum (gradients)
and a large all_gather, as an application calls them (python3 -m ringcomm.launch -n 2
mixed_loop.py).  Medians over 30 steps, each after the small call; with and without it."""
import statistics
import time

import numpy as np

import ringcomm

group = ringcomm.init(strict=True)
loss = np.ones(2, np.float32)
for total in (2 << 20, 8 << 20, 32 << 20):
    grads = np.ones(total // 4, np.float32)
    block = np.ones(total // 4 // group.size(), np.float32)
    gathered = np.empty(total // 4, np.float32)
    row = []
    for small in (True, False):
        times = {"all_sum": [], "all_gather": []}
        for step in range(35):
            for op, run in (("all_sum", lambda: group.all_sum(grads, out=grads)),
                            ("all_gather", lambda: group.all_gather(block, out=gathered))):
                if small:
                    group.all_sum(loss)
                start = time.perf_counter()
                run()
                if step >= 5:
                    times[op].append(time.perf_counter() - start)
        row += [f"{op} {'after a small call' if small else 'alone'} "
                f"{statistics.median(t) * 1e6:.0f} us" for op, t in times.items()]
    print(f"rank {group.rank()} {total >> 20} MiB: " + ", ".join(row), flush=True)
group.close()
