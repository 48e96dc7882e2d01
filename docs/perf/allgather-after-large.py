"""512 KiB all_gathers (one stream) after 20 all_sums of 32 MiB ("big") or without them ("fresh"):

    python -m ringcomm.launch -n 2 docs/perf/allgather-after-large.py fresh|big [rcv|snd BYTES]

rcv/snd fix SO_RCVBUF/SO_SNDBUF of the data connections after the large transfers; set
DUMP=1 for rank 0 to print `ss -tin` for its connections in the middle of the loop."""
import numpy as np, ringcomm, time, subprocess, sys, os
g = ringcomm.init(strict=True)
r = g.rank()
big = np.ones(8 << 20, np.float32)
import socket
if sys.argv[1].startswith("big"):
    for _ in range(20): g.all_sum(big)
if sys.argv[1].startswith("big") and len(sys.argv) > 2:
    for cs in g._transport._conns:
        for c in cs:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF if sys.argv[2] == "rcv" else socket.SO_SNDBUF, int(sys.argv[3]))
small = np.ones(256 << 10 >> 2, np.float32)  # 256 KiB per rank: all_gather of 512 KiB
tiny = np.ones(2, np.float32)
for _ in range(200): g.all_gather(tiny)
ts = []
for i in range(60):
    t = time.perf_counter(); g.all_gather(small); ts.append(time.perf_counter() - t)
    if i == 30 and r == 0 and os.environ.get("DUMP"):
        out = subprocess.run(["ss", "-tin", "state", "established", "( sport >= :1024 )"], capture_output=True, text=True).stdout
        pid_ports = {c.sock.getsockname()[1] for cs in g._transport._conns for c in cs} | {c.sock.getpeername()[1] for cs in g._transport._conns for c in cs}
        lines = out.splitlines()
        for j, l in enumerate(lines):
            if any(f":{p} " in l + " " for p in pid_ports) and j + 1 < len(lines):
                print(l.split()[2:4], lines[j+1].strip()[:400])
print(f"rank {r} {sys.argv[1]}: 512K all_gather median {np.median(ts)*1e6:.0f} us, min {min(ts)*1e6:.0f}")
g.close()
