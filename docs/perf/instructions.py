"""Python path of one 8-byte all_sum, for callgrind: REPO N runs N calls over a transport whose posts
complete at once (docs/perf/instructions.sh takes the difference of two N for a per-call count)."""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from ringcomm.group import Group
from ringcomm.transports import Transport, Channel, Kind, Side
class Instant(Transport):
    rank, size, connections = 0, 2, 1
    def __init__(self):
        self.done = []
        self.ch = {(s, k): Channel(s, 0, k) for s in Side for k in Kind}
    def peer(self, side): return 1
    def post_send(self, side, conn, data, head=None): self.done.append(self.ch[side, Kind.SEND])
    def post_recv(self, side, conn, into, head=None): self.done.append(self.ch[side, Kind.RECV])
    def wait(self, deadline):
        d, self.done = self.done, []
        return d
    def vet_idle(self, *a): pass
    def discard(self, *a): pass
    def read_ahead(self, *a): pass
    def close(self): pass
g = Group(Instant(), 60.0, headers=True)
x = np.ones(2, np.float32); out = np.empty_like(x)
N = int(sys.argv[2])
for _ in range(N): g.all_sum(x, out=out)
