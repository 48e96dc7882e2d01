"""What plain Python reaches on a 2-rank all_gather's exchange, by thread pattern (no ringcomm).

Two processes, two loopback TCP connections (reno), each rank sending B bytes and receiving B
bytes on each (the 2-rank ring in both directions: an all_gather of 4B in total) and copying
its own 2B block into the output.  Patterns: poll1 (one thread, non-blocking, one poll set),
lanes2 (a thread per connection, each its send and receive), cross2 (a thread per direction:
send on one connection, receive on the other, as ringcomm's lanes), block4 (a blocking thread
per send and per receive), block3m/recv1thr/lanes2r/send2 (mixes).  The median of ITERS calls,
rank 0's clock.  Run: python3 raw_allgather.py B1,B2,... ITERS OUTFILE
"""
import os, socket, sys, threading, time, select, queue, statistics
import numpy as np

DW = socket.MSG_DONTWAIT
TCP_CONG = getattr(socket, "TCP_CONGESTION", 13)


def connect_pair(rank, port):
    if rank == 0:
        ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port)); ls.listen(4)
        a = socket.create_connection(("127.0.0.1", port + 1))
        b, _ = ls.accept()
    else:
        ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port + 1)); ls.listen(4)
        b, _ = ls.accept()
        time.sleep(0.2)
        a = socket.create_connection(("127.0.0.1", port))
    conns = [a, b] if rank == 0 else [b, a]  # conns[0]: rank0's a == rank1's b
    for s in conns:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_CONG, b"reno")
        except OSError:
            pass
    return conns


def sync(conns):
    conns[0].setblocking(True)
    conns[0].sendall(b"s"); conns[0].recv(1)


def poll_loop(jobs):
    """jobs: list of (sock, 'send'|'recv', memoryview); nonblocking, one poll set."""
    p = select.poll(); state = {}
    for s, kind, mv in jobs:
        pos = 0
        try:
            pos = s.send(mv, DW) if kind == "send" else s.recv_into(mv, 0, DW)
        except BlockingIOError:
            pass
        if pos < len(mv):
            state.setdefault(s.fileno(), {})[kind] = [s, mv, pos]
    fds = {}
    for fd, d in state.items():
        ev = (select.POLLOUT if "send" in d else 0) | (select.POLLIN if "recv" in d else 0)
        p.register(fd, ev); fds[fd] = ev
    left = sum(len(d) for d in state.values())
    while left:
        for fd, ev in p.poll(10000):
            d = state[fd]
            if ev & select.POLLIN and "recv" in d:
                s, mv, pos = d["recv"]
                try:
                    n = s.recv_into(mv[pos:], 0, DW)
                except BlockingIOError:
                    n = 0
                d["recv"][2] += n
                if d["recv"][2] == len(mv):
                    del d["recv"]; left -= 1
            if ev & select.POLLOUT and "send" in d:
                s, mv, pos = d["send"]
                try:
                    n = s.send(mv[pos:], DW)
                except BlockingIOError:
                    n = 0
                d["send"][2] += n
                if d["send"][2] == len(mv):
                    del d["send"]; left -= 1
            ev2 = (select.POLLOUT if "send" in d else 0) | (select.POLLIN if "recv" in d else 0)
            if ev2 != fds[fd]:
                if ev2:
                    p.modify(fd, ev2)
                else:
                    p.unregister(fd)
                fds[fd] = ev2


class Pool:
    def __init__(self, n):
        self.q = [queue.SimpleQueue() for _ in range(n)]
        self.done = queue.SimpleQueue()
        self.t = [threading.Thread(target=self.serve, args=(q,), daemon=True) for q in self.q]
        for t in self.t:
            t.start()

    def serve(self, q):
        while True:
            f = q.get()
            if f is None:
                return
            f(); self.done.put(1)

    def run(self, fs, main=None):
        for q, f in zip(self.q, fs):
            q.put(f)
        if main:
            main()
        for _ in fs:
            self.done.get()


def blocking_send(s, mv):
    s.sendall(mv)


def blocking_recv(s, mv):
    pos = 0
    while pos < len(mv):
        n = s.recv_into(mv[pos:], 0, socket.MSG_WAITALL)
        if n == 0:
            raise EOFError
        pos += n


def patterns(conns, sv, rv, own, pools):
    """Each pattern as a callable: the sends of ``sv`` and receives into ``rv`` on ``conns``,
    and ``own`` (the copy of this rank's block), spread over the calling thread and a pool."""
    def snd(i):
        return conns[i], "send", sv[i]

    def rcv(i):
        return conns[i], "recv", rv[i]

    def bsend(i):
        return lambda: blocking_send(conns[i], sv[i])

    def brecv(i):
        return lambda: blocking_recv(conns[i], rv[i])

    def loop(*jobs):
        return lambda: poll_loop(list(jobs))

    def then(*fs):
        return lambda: [f() for f in fs]

    return {
        "poll1": then(own, loop(snd(0), rcv(0), snd(1), rcv(1))),
        "lanes2": lambda: pools[1].run([loop(snd(1), rcv(1))], then(own, loop(snd(0), rcv(0)))),
        "block4": lambda: pools[4].run([bsend(0), bsend(1), brecv(0), brecv(1)], own),
        "block3m": lambda: pools[2].run([brecv(0), brecv(1)], then(loop(snd(0), snd(1)), own)),
        "recv1thr": lambda: pools[1].run([then(brecv(0), brecv(1))],
                                         then(loop(snd(0), snd(1)), own)),
        "cross2": lambda: pools[1].run([loop(snd(1), rcv(0))], then(own, loop(snd(0), rcv(1)))),
        "send2": lambda: pools[2].run([bsend(0), bsend(1)], then(own, loop(rcv(0), rcv(1)))),
        "lanes2r": lambda: pools[2].run([brecv(0), brecv(1)], then(own, loop(snd(0), snd(1)))),
    }


def main(rank, port, sizes, iters, out):
    conns = connect_pair(rank, port)
    pools = {n: Pool(n) for n in (1, 2, 4)}
    res = {}
    for B in sizes:
        src = np.ones(2 * B, np.uint8)
        dst = np.empty(4 * B, np.uint8)
        mine = dst[rank * 2 * B:(rank + 1) * 2 * B]
        other = dst[(1 - rank) * 2 * B:(2 - rank) * 2 * B]
        sv = [memoryview(src[:B]), memoryview(src[B:])]
        rv = [memoryview(other[:B]), memoryview(other[B:])]
        pats = patterns(conns, sv, rv, lambda: np.copyto(mine, src), pools)
        for name, f in pats.items():
            ts = []
            for i in range(iters + 5):
                for c in conns:
                    c.setblocking(True)
                sync(conns)
                t = time.perf_counter(); f(); dt = time.perf_counter() - t
                if i >= 5:
                    ts.append(dt * 1e6)
                assert other[0] == 1 and other[-1] == 1
            other[:] = 0
            res[(B, name)] = statistics.median(ts)
    if rank == 0:
        with open(out, "w") as fh:
            for (B, name), t in res.items():
                fh.write(f"{4 * B:>10} {name:>9} {t:9.1f} us  busbw {2 * B / t / 1e3:6.2f} GB/s\n")
    os._exit(0)


if __name__ == "__main__":
    sizes = [int(s) for s in sys.argv[1].split(",")]
    iters = int(sys.argv[2]); out = sys.argv[3]
    port = 23000 + os.getpid() % 1000 * 2
    pid = os.fork()
    if pid == 0:
        main(1, port, sizes, iters, out)
    main(0, port, sizes, iters, out)
