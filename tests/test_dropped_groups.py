"""Subgroups dropped without close() release their threads and sockets (issue 29, item 12a).

Real rank processes split their group 60 times and drop each subgroup after using it, without
``close()``.  What a subgroup starts that would outlive the ``Group`` object (the direct
links' acceptor thread and listener on 4 ranks, the lanes' worker threads with
``RINGCOMM_THREADS=2``, the progress thread of ``async_op=True``) must be released when it is
garbage-collected: the counts of file descriptors and threads after the loop (and
``gc.collect()``) equal those before, and each dropped subgroup gave one ``ResourceWarning``
naming it, as an unclosed file does.
"""
from __future__ import annotations

import json

import pytest

from tests.procs import start_ranks

DROPS = 60

RANK = """
import gc, json, os, threading, time, warnings
import numpy as np, ringcomm

g = ringcomm.init(strict=True)
elements, use = int(os.environ["ELEMENTS"]), os.environ["USE"]

def counts():
    gc.collect()
    return len(os.listdir("/proc/self/fd")), threading.active_count()

def use_and_drop():
    sub = g.split(0)
    x = np.ones(elements, np.float32)
    if use == "async":
        sub.all_sum(x, async_op=True).wait()
    else:
        sub.all_sum(x)
    if use == "direct":  # 0 <-> 2 and 1 <-> 3 are not ring neighbours: direct links
        r, peer = sub.rank(), (sub.rank() + 2) % 4
        first, then = (sub.send, sub.recv_like) if r < 2 else (sub.recv_like, sub.send)
        first(x, peer)
        then(x, peer)

use_and_drop()  # the first one: whatever is made once per process (imports, caches)
g.barrier()
before = counts()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", ResourceWarning)
    for _ in range(int(os.environ["DROPS"])):
        use_and_drop()
    g.barrier()
    time.sleep(0.2)  # the peers' closed connections reach this rank
    after = counts()
named = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
         and "ringcomm.Group" in str(w.message) and "without close()" in str(w.message)]
print(json.dumps({"before": before, "after": after, "warned": len(named),
                  "threads": sorted(t.name for t in threading.enumerate())}), flush=True)
g.close()
"""


@pytest.mark.parametrize("size, use, elements, extra", [
    (4, "direct", 4, {}),                                # direct links' acceptor and sockets
    (3, "lanes", 1 << 20, {"RINGCOMM_THREADS": "2"}),    # the lanes' worker threads
    (4, "async", 4, {}),                                 # the progress thread, and the above
], ids=["direct-links", "lanes", "async"])
def test_dropped_subgroups_leave_no_thread_nor_socket(tmp_path, size, use, elements, extra):
    procs = start_ranks(tmp_path, size, RANK, RINGCOMM_TIMEOUT="20", USE=use,
                        ELEMENTS=str(elements), DROPS=str(DROPS), **extra)
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for rank, (out, err) in enumerate(outs):
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, (rank, out, err[-3000:])
        res = json.loads(lines[-1])
        print(f"  rank {rank}: fds and threads {res['before']} -> {res['after']} after "
              f"{DROPS} dropped subgroups; {res['warned']} ResourceWarnings")
        assert res["after"] == res["before"], (rank, res)
        assert res["warned"] == DROPS, (rank, res)
