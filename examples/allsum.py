"""Every rank sums a 16 MiB float32 array over the ring and checks the result.

    python -m ringcomm.launch -n 4 examples/allsum.py
"""
import time

import numpy as np

import ringcomm

group = ringcomm.init(strict=True)
rank, size = group.rank(), group.size()

x = np.full(4 * 1024 * 1024, rank + 1, dtype=np.float32)  # 16 MiB
group.barrier()
start = time.perf_counter()
total = ringcomm.all_sum(x)
elapsed = time.perf_counter() - start

expected = size * (size + 1) / 2
assert np.all(total == expected), f"rank {rank}: wrong all_sum result"
print(f"rank {rank} of {size}: all_sum of 16 MiB float32 = {total[0]:g} "
      f"(expected {expected:g}) in {elapsed * 1e3:.1f} ms")
group.close()
