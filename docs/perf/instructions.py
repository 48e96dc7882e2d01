"""Python path of one 8-byte all_sum, for callgrind: REPO N runs N calls over a transport whose
posts complete at once (docs/perf/instructions.sh takes the difference of two N for a per-call
count)."""
import os
import sys

import numpy as np

sys.path[:0] = [sys.argv[1], os.path.dirname(os.path.abspath(__file__))]
import instant  # noqa: E402  (after the checkout to measure is on the path)

g = instant.group()
x = np.ones(2, np.float32)
out = np.empty_like(x)
for _ in range(int(sys.argv[2])):
    g.all_sum(x, out=out)
