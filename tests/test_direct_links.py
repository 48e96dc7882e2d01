"""Direct links between non-neighbours keep the ring's promises (issue 29, items 3, 5, 6, 7).

Real rank processes and sockets on localhost: a ring neighbour SIGKILLed while ranks wait on
direct links; neighbours that close their group, end, or crash during such a wait; ranks that
all send first, blocking or with torch's isend/irecv/wait idiom, between neighbours and
non-neighbours; an accept() that fails with EMFILE on a rank's direct-link acceptor; a
peer that dribbles the direct link's handshake, or a control message.
"""
from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest

import ringcomm
from ringcomm.launch import localhost_hostfile
from ringcomm.transports import notices
from ringcomm.transports.direct import DirectLinks
from tests import direct_work as w
from tests.procs import start_ranks

MiB = 1 << 20

# -- 5. failures reach a direct wait ----------------------------------------------------------

# Ranks 0 and 2 (not neighbours) open their direct links, then wait on each other; rank 3
# waits in a ring recv from rank 0; rank 1, a neighbour of 0 and 2, is then SIGKILLed.
KILLED_NEIGHBOUR = """
import json, time, numpy as np, ringcomm
g = ringcomm.init(strict=True, timeout=10)
r = g.rank()
far = (r + 2) % 4
if r in (0, 2):
    g.send(np.arange(4.0), far)
    g.recv(4, np.float64, far)
g.barrier()
print("ready", flush=True)
if r == 1:
    time.sleep(60)
try:
    g.recv(4, np.float64, far if r in (0, 2) else 0)
    print(json.dumps({"type": None}), flush=True)
except ringcomm.RingcommError as e:
    print(json.dumps({"at": time.time(), "type": type(e).__name__, "peer": e.peer,
                      "message": str(e)}), flush=True)
"""


def test_a_neighbour_killed_during_direct_waits_is_named_by_every_rank_at_once(tmp_path):
    ranks = start_ranks(tmp_path, 4, KILLED_NEIGHBOUR)
    try:
        for p in ranks:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        time.sleep(0.3)  # every survivor is in its wait
        killed_at = time.time()
        ranks[1].send_signal(signal.SIGKILL)
        outcomes = {r: json.loads(ranks[r].stdout.readline()) for r in (0, 2, 3)}
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    delays = {r: round(o["at"] - killed_at, 3) for r, o in outcomes.items() if "at" in o}
    print("time from the SIGKILL to the error (s):", delays)
    for r, o in outcomes.items():
        assert o["type"] == "PeerLostError" and o["peer"] == 1, (r, o)
        assert "rank 1" in o["message"], (r, o)
    assert max(delays.values()) < 1.0, delays


# A neighbour of rank 0 (rank 1) closes its group, ends without closing it, or crashes, while
# rank 0 waits for a direct message from rank 2, which comes 1 s later.
NEIGHBOUR_ENDS = """
import json, sys, time, numpy as np, ringcomm
how = sys.argv[1]
g = ringcomm.init(strict=True, timeout=10)
r = g.rank()
g.barrier()
if r in (1, 3):
    if how == "crash" and r == 1:
        raise RuntimeError("a bug in the user's program")
    if how == "close":
        g.close()
    sys.exit(0)
if r == 2:
    time.sleep(1.0)
    g.send(np.arange(4.0), 0)
    sys.exit(0)
try:
    got = g.recv(4, np.float64, 2)
    print(json.dumps({"got": got.tolist()}), flush=True)
except ringcomm.RingcommError as e:
    print(json.dumps({"type": type(e).__name__, "peer": e.peer, "message": str(e)}),
          flush=True)
"""


@pytest.mark.parametrize("how", ["close", "end", "crash"])
def test_a_neighbour_that_ends_during_a_direct_wait(tmp_path, how):
    """Closing the group, or a program that ends without closing it, says goodbye: the wait
    goes on.  A crash (an unhandled exception) does not: the neighbour is named at once."""
    script = f"import sys; sys.argv = ['rank', {how!r}]\n" + NEIGHBOUR_ENDS
    ranks = start_ranks(tmp_path, 4, script)
    outs = [p.communicate(timeout=60) for p in ranks]
    outcome = json.loads(outs[0][0])
    if how == "crash":
        assert outcome.get("type") == "PeerLostError" and outcome["peer"] == 1, outcome
    else:
        assert outcome == {"got": [0.0, 1.0, 2.0, 3.0]}, (outcome, outs[0][1])


# -- 6. ranks that all send first --------------------------------------------------------------

@pytest.mark.parametrize("size,peer_of,nbytes,async_op", [
    (4, {0: 2, 2: 0, 1: 3, 3: 1}, 32 * MiB, False),  # two pairs of non-neighbours
    (6, {0: 2, 2: 4, 4: 0}, 8 * MiB, False),          # a cycle of direct links
    (4, {0: 2, 2: 3, 3: 1, 1: 0}, 32 * MiB, False),   # direct, ring, direct, ring
    (4, {0: 2, 2: 0}, 8 * MiB, True),                 # isend/irecv/wait, non-neighbours
    (4, {0: 2, 2: 0}, 32 * MiB, True),
    (4, {0: 1, 1: 0}, 8 * MiB, True),                 # ... and neighbours
    (4, {0: 1, 1: 0}, 32 * MiB, True),
], ids=["pairs-32MiB", "cycle-8MiB", "mixed-cycle-32MiB", "async-far-8MiB", "async-far-32MiB", "async-near-8MiB",
        "async-near-32MiB"])
def test_ranks_that_all_send_first_complete(clusters, size, peer_of, nbytes, async_op):
    got = clusters.get(size).run(w.all_send_first, peer_of, nbytes, 7, async_op)
    print("seconds per rank:", [round(s, 3) for _, s in got])
    assert all(right for right, _ in got), got


def test_messages_read_ahead_arrive_whole_and_in_order(clusters):
    got = clusters.get(4).run(w.messages_read_ahead_in_order, 0, 2, 8 * MiB, 3)
    assert got == [True] * 4, got


# -- 7. an accept() error does not end the direct-link acceptor --------------------------------

# Rank 2 sits at its file-descriptor limit for a second while rank 0 opens a direct link to
# it (its accept() fails with EMFILE), then restores the limit; rank 4 opens one later.
EMFILE = """
import errno, json, os, resource, time, numpy as np, ringcomm
g = ringcomm.init(strict=True, timeout=6)
r = g.rank()
g.barrier()
if r == 2:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.dup(0)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        os.close(os.dup(0))
        limited = False
    except OSError as e:
        limited = e.errno == errno.EMFILE
    time.sleep(1.0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    first, later = g.recv(4, np.float64, 0), g.recv(4, np.float64, 4)
    print(json.dumps({"limited": limited, "first": first.tolist(), "later": later.tolist()}))
elif r in (0, 4):
    time.sleep(0.3 if r == 0 else 1.5)
    g.send(np.full(4, float(r)), 2)
g.barrier()
print(json.dumps({"done": True}), flush=True)
"""


def test_an_accept_that_fails_with_emfile_is_retried(tmp_path):
    ranks = start_ranks(tmp_path, 5, EMFILE)
    outs = [p.communicate(timeout=60) for p in ranks]
    for r, (out, err) in enumerate(outs):
        assert out.strip().endswith('{"done": true}'), (r, out, err)
    facts = json.loads(outs[2][0].splitlines()[0])
    assert facts == {"limited": True, "first": [0.0] * 4, "later": [4.0] * 4}, facts


# -- 3. nothing a peer dribbles stretches a direct link's deadline ----------------------------

def _dribble(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    try:
        for byte in data:
            if stop.wait(every):
                return
            sock.send(bytes([byte]))
    except OSError:
        pass


def test_a_peer_that_dribbles_the_direct_handshake_cannot_stretch_the_deadline():
    """Rank 0 opens a direct link to 'rank 2', whose port answers a byte every 0.3 s."""
    hostfile = [addrs[0] for addrs in localhost_hostfile(4, 1)]
    stop = threading.Event()
    with socket.create_server((hostfile[2].host, hostfile[2].port)) as fake, \
            socket.create_server((hostfile[0].host, hostfile[0].port)) as own:
        links = DirectLinks(0, 4, hostfile, own, job_id="dribble", token=None)
        fake.settimeout(10)
        opened = threading.Thread(target=lambda: _dribble(fake.accept()[0], b"RCMH" + bytes(80),
                                                          0.3, stop), daemon=True)
        opened.start()
        start = time.monotonic()
        try:
            with pytest.raises(ringcomm.CommTimeoutError) as caught:
                links.exchange((2, bytes(32), memoryview(b"")), None, start + 1.5, "send")
            elapsed = time.monotonic() - start
        finally:
            stop.set()
            links.close()
    print(f"failed after {elapsed:.2f} s: {caught.value}")
    assert caught.value.peer == 2 and elapsed < 2.0, (elapsed, caught.value)


def test_a_control_message_dribbled_a_byte_at_a_time_is_cut_off_at_its_deadline():
    """What a direct wait reads from the ring's control connections (notices.read)."""
    mine, theirs = socket.socketpair()
    stop = threading.Event()
    notice = notices.pack(0, 1, 1, "x" * 40)
    dribbler = threading.Thread(target=_dribble, args=(theirs, notice, 0.05, stop), daemon=True)
    dribbler.start()
    start = time.monotonic()
    try:
        got = notices.read(mine, seconds=0.5)
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        dribbler.join(5)
        mine.close()
        theirs.close()
    assert got is None and elapsed < 0.9, (got, elapsed)
