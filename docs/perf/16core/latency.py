"""8-byte all_sum on 2 ranks against a raw Python 8-byte round trip over the same data
connection (python3 -m ringcomm.launch -n 2 latency.py [profile]: an argument adds a cProfile)."""
import time, socket, numpy as np, ringcomm, sys, cProfile, pstats
g = ringcomm.init(strict=True)
r = g.rank()
x = np.ones(2, np.float32); out = np.empty_like(x)
for _ in range(200): g.all_sum(x, out=out)
N = 3000
def loop():
    for _ in range(N): g.all_sum(x, out=out)
ts=[]
for rep in range(3):
    g.barrier(); t=time.perf_counter(); loop(); ts.append((time.perf_counter()-t)/N*1e6)
# raw round trip over the ring's own data socket (connection right[0] / left[0])
t0 = g._transport
c = t0._conns[1][0] if r == 0 else t0._conns[0][0]
s = c.sock; s.setblocking(True)
buf = bytearray(8); msg = b"12345678"
g.barrier() if False else None
rt=[]
for rep in range(3):
    t=time.perf_counter()
    for _ in range(N):
        if r == 0:
            s.sendall(msg); s.recv_into(buf, 8, socket.MSG_WAITALL)
        else:
            s.recv_into(buf, 8, socket.MSG_WAITALL); s.sendall(msg)
    rt.append((time.perf_counter()-t)/N*1e6)
s.setblocking(False)
print(f"rank {r}: all_sum 8B {['%.1f'%v for v in ts]} us; raw 8B round trip {['%.1f'%v for v in rt]} us", flush=True)
if r == 0 and len(sys.argv) > 1:
    pr = cProfile.Profile(); pr.enable(); 
    for _ in range(2000): g.all_sum(x, out=out)
    pr.disable(); pstats.Stats(pr).sort_stats('tottime').print_stats(18)
elif len(sys.argv) > 1:
    for _ in range(2000): g.all_sum(x, out=out)
g.close()
