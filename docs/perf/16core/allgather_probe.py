"""How a 2-rank all_gather of 1-8 MiB spends its time: transport calls and time in wait() per call."""
import sys, time, collections, numpy as np, ringcomm
from ringcomm.transports import tcp
counts = collections.Counter()
for name in ("_on_readable", "_on_writable", "_on_events", "post_send", "post_recv"):
    real = getattr(tcp.TcpTransport, name)
    def wrap(self, *a, _real=real, _name=name, **k):
        counts[_name] += 1
        return _real(self, *a, **k)
    setattr(tcp.TcpTransport, name, wrap)
realwait = tcp.TcpTransport.wait
def wait(self, deadline):
    t = time.perf_counter(); d = realwait(self, deadline); counts["wait_us"] += (time.perf_counter() - t) * 1e6
    counts["wait"] += 1
    return d
tcp.TcpTransport.wait = wait
g = ringcomm.init(strict=True)
for total in (1 << 20, 2 << 20, 8 << 20):
    x = np.ones(total // 8, np.float32); out = np.empty(total // 4, np.float32)
    for _ in range(10): g.all_gather(x, out=out)
    counts.clear(); N = 50
    g.barrier(); t = time.perf_counter()
    for _ in range(N): g.all_gather(x, out=out)
    dt = (time.perf_counter() - t) / N * 1e6
    print(f"rank {g.rank()} all_gather {total>>20} MiB: {dt:.0f} us/call; per call: " +
          ", ".join(f"{k} {v / N:.1f}" for k, v in sorted(counts.items())), flush=True)
g.close()
