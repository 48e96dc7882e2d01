"""Pure-Python cost of one 8-byte all_sum: a 2-rank group over a transport whose posts complete at once (python3 python_path.py REPO [--profile])."""
import time, numpy as np, sys
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "/work/main")
import ringcomm
from ringcomm.group import Group
from ringcomm.transports import Transport, Channel, Kind, Side

class Instant(Transport):
    rank, size, connections = 0, 2, 1
    def __init__(self): self.done = []
    def peer(self, side): return 1
    def post_send(self, side, conn, data, head=None): self.done.append(Channel(side, conn, Kind.SEND))
    def post_recv(self, side, conn, into, head=None):
        self.done.append(Channel(side, conn, Kind.RECV))  # head keeps what the engine put there: ours
    def wait(self, deadline):
        d, self.done = self.done, []
        return d
    def vet_idle(self, *a): pass
    def discard(self, *a): pass
    def read_ahead(self, *a): pass
    def close(self): pass

g = Group(Instant(), 60.0, headers=True)
x = np.ones(2, np.float32); out = np.empty_like(x)
for _ in range(2000): g.all_sum(x, out=out)
best = 1e9
for rep in range(7):
    t = time.perf_counter()
    for _ in range(20000): g.all_sum(x, out=out)
    best = min(best, (time.perf_counter() - t) / 20000 * 1e6)
print(f"python path of an 8-byte all_sum: {best:.2f} us (best of 7)")
if "--profile" in sys.argv:
    import cProfile, pstats
    pr = cProfile.Profile(); pr.enable()
    for _ in range(20000): g.all_sum(x, out=out)
    pr.disable(); pstats.Stats(pr).sort_stats('tottime').print_stats(20)
