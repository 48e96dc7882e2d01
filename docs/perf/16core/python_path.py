"""Pure-Python cost of one 8-byte all_sum and all_gather: a 2-rank group over a transport whose
posts complete at once (python3 python_path.py REPO [--profile])."""
import os
import sys
import time

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(here)),
                os.path.dirname(here)]
import instant  # noqa: E402  (after the checkout to measure is on the path)

g = instant.group()
x = np.ones(2, np.float32)
out = np.empty_like(x)
gathered = np.empty(4, np.float32)


def best_of_7(call) -> float:
    for _ in range(2000):
        call()
    best = 1e9
    for rep in range(7):
        t = time.perf_counter()
        for _ in range(20000):
            call()
        best = min(best, (time.perf_counter() - t) / 20000 * 1e6)
    return best


print(f"python path of an 8-byte all_sum: {best_of_7(lambda: g.all_sum(x, out=out)):.2f} us "
      f"(best of 7); of an 8-byte all_gather (4 bytes a rank): "
      f"{best_of_7(lambda: g.all_gather(x[:1], out=gathered[:2])):.2f} us")
if "--profile" in sys.argv:
    import cProfile
    import pstats
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20000):
        g.all_sum(x, out=out)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(20)
