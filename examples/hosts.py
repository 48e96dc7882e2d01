"""Check a cluster: each rank says which machine it is on (host name and IP), who its ring
neighbours are, and how fast 64 MiB all_sums run over the links.  Run it first on a new set of
machines:

    ringcomm-launch --hosts mac1,mac2,mac3 examples/hosts.py
    mpirun -np 3 --host node1,node2,node3 -x RINGCOMM_RENDEZVOUS=node1:29500 python examples/hosts.py

The IP is the one the rank listens on for the ring (its hostfile entry, as ringcomm-launch and
mlx.launch write it), else what its host name resolves to.
"""
import json
import os
import socket
import time

import numpy as np

import ringcomm

group = ringcomm.init(strict=True)
rank, size = group.rank(), group.size()



def my_ip() -> str:
    """The address this rank listens on (hostfile), else its host name's."""
    try:
        with open(os.environ["MLX_HOSTFILE"]) as f:
            return json.load(f)[rank][0].rsplit(":", 1)[0].strip("[]")
    except (KeyError, OSError, ValueError, IndexError, TypeError, AttributeError):
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "?"


def gather_text(text: str) -> list[str]:
    """Every rank's ``text`` (at most 64 bytes), gathered over the ring."""
    row = np.zeros(64, np.uint8)
    raw = text.encode()[:64]
    row[:len(raw)] = np.frombuffer(raw, np.uint8)
    return [bytes(r).rstrip(b"\0").decode(errors="replace")
            for r in ringcomm.all_gather(row[None])]


names = [f"{name} ({ip})" for name, ip in zip(gather_text(socket.gethostname()),
                                               gather_text(my_ip()))]

x = np.ones(16 * 1024 * 1024, np.float32)  # 64 MiB
ringcomm.all_sum(x)                          # warm up
start = time.perf_counter()
for _ in range(3):
    total = ringcomm.all_sum(x)
seconds = (time.perf_counter() - start) / 3
assert np.all(total == size), f"rank {rank}: wrong all_sum result"
busbw = x.nbytes * 2 * (size - 1) / size / seconds / 1e9 if size > 1 else 0.0
print(f"rank {rank} of {size} on {names[rank]}: left {names[(rank - 1) % size]}, right "
      f"{names[(rank + 1) % size]}; 64 MiB all_sum {seconds * 1e3:.0f} ms, busbw "
      f"{busbw:.2f} GB/s")
group.close()
