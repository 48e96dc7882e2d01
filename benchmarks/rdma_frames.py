"""The RDMA transport's own cost per frame, and the largest rate its Python data path can feed.

    python -m ringcomm.bench.rdma_frames --output docs/perf/rdma-frames-<N>core.txt

Two ranks run as two threads of this process over NULL verbs (``benchmarks/rdma_null.py``: a
provider written for this measurement, whose posts cost nothing but the one ``memmove`` a
NIC's DMA would make), each joining through ``ringcomm.init(backend="rdma")`` as any rank
does: whatever the transport's protocol (frame size, credits, acknowledgements, checksums),
its whole Python path runs, and only the wire is gone.  Measured for a one-way stream
(send/recv) and all_sum: wall time, the frames posted (every send the provider saw: data,
and acknowledgements or credits where the protocol sends them apart), and each
rank thread's CPU time (``time.thread_time``) per frame.  The two threads share one
interpreter lock, so the wall-clock rate is a floor (both ranks' work on one core) and the
busier thread's CPU per frame gives the ceiling (each rank on a core of its own, as on two
machines).  Compared with what Thunderbolt 5 needs: 75 Gbit/s raw UC SEND (9.4 GB/s) and
JACCL's 12.2 GB/s all-reduce.  Writes one text file (``--output``), also printed.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import sys
import threading
import time

import numpy as np

import ringcomm
from ringcomm.ports import free_ports
from ringcomm.transports import verbs

from . import rdma_null

TB5_RAW = 75e9 / 8   # bytes/s, UC SEND of 64 KiB on one queue pair (hellas-ai figures)
JACCL_ALLREDUCE = 12.2e9


def use_null_verbs() -> None:
    """``verbs="null"`` loads NULL verbs (a measurement provider, not offered to users)."""
    plain = verbs.load
    verbs.load = lambda p=None: rdma_null if p == "null" else plain(p)


def run_pair(work, seconds: float) -> dict:
    """Run ``work(group, count)`` on ranks 0 and 1 (threads), ``count`` chosen from a warm-up
    to last about ``seconds``; each returns the bytes it moved."""
    port = free_ports(1)[0]
    out: dict = {}
    ready = threading.Barrier(2)

    def rank(r: int) -> None:
        g = ringcomm.init(backend="rdma", rank=r, devices=[[None, "null0"], ["null1", None]],
                          coordinator=f"127.0.0.1:{port}", verbs="null", timeout=120,
                          job_id="rdma-frames")
        try:
            work(g, 2)  # warm-up: queue pairs, buffers, first calls
            t = time.perf_counter()
            work(g, 3)
            ready.wait()
            if r == 0:
                out["count"] = max(3, int(seconds / ((time.perf_counter() - t) / 3)))
                rdma_null.stats.clear()
            ready.wait()
            if r == 0:
                out["start"] = time.perf_counter()
            cpu = time.thread_time()
            moved = work(g, out["count"])
            out[r] = {"cpu": time.thread_time() - cpu, "bytes": moved}
            g.barrier()
            if r == 0:
                out["wall"] = time.perf_counter() - out["start"]
                out["stats"] = dict(rdma_null.stats)
        finally:
            g.close()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def stream(nbytes: int):
    """Rank 0 sends ``nbytes`` to rank 1, again and again until the stop time."""
    data = np.ones(nbytes, np.uint8)
    into = np.empty(nbytes, np.uint8)

    def work(g, count: int) -> int:
        for _ in range(count):
            if g.rank() == 0:
                g.send(data, 1)
            else:
                g.recv(nbytes, np.uint8, 0, out=into)
        return count * nbytes
    return work


def all_sum(nbytes: int):
    x = np.ones(nbytes // 4, np.float32)

    def work(g, count: int) -> int:
        for _ in range(count):
            g.all_sum(x)
        return count * x.nbytes
    return work


def memmove_rate(nbytes: int = 256 << 10, repeat: int = 2000) -> float:
    """Bytes/s of one core's memmove at ``nbytes`` (what NULL verbs spends per frame)."""
    a, b = ctypes.create_string_buffer(nbytes), ctypes.create_string_buffer(nbytes)
    t = time.perf_counter()
    for _ in range(repeat):
        ctypes.memmove(a, b, nbytes)
    return nbytes * repeat / (time.perf_counter() - t)


def measure(name: str, work, seconds: float) -> str:
    r = run_pair(work, seconds)
    frames = r["stats"].get("send", 0) + r["stats"].get("write_imm", 0)
    moved = r[0]["bytes"]
    busier = max(r[0]["cpu"], r[1]["cpu"])
    per_frame = busier / frames if frames else float("nan")
    frame_bytes = moved / frames if frames else 0
    return (f"| {name} | {moved / 2**20:.0f} | {frames} | {frame_bytes / 1024:.1f} | "
            f"{r['wall']:.2f} | {moved / r['wall'] / 1e9:.2f} | {r[0]['cpu'] / frames * 1e6:.1f} "
            f"| {r[1]['cpu'] / frames * 1e6:.1f} | {1 / per_frame:,.0f} | "
            f"{frame_bytes / per_frame / 1e9:.2f} | {r['stats']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ringcomm.bench.rdma_frames",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--output", help="the result file to write (also printed)")
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    args = p.parse_args(argv)
    use_null_verbs()
    lines = [
        "# RDMA data path over NULL verbs (posts cost nothing; not RDMA)",
        "", f"command: python -m ringcomm.bench.rdma_frames {' '.join(argv or sys.argv[1:])}",
        f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at start",
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"memmove of 256 KiB on one core: {memmove_rate() / 1e9:.1f} GB/s (NULL verbs' copy)",
        "", "| what | MiB moved | frames sent (data and control) | KiB moved per frame | wall s | "
        "wall GB/s (both ranks on "
        "one core) | rank 0 CPU us/frame | rank 1 CPU us/frame | frames/s ceiling (busier "
        "rank) | GB/s ceiling | posts |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, work in (("send/recv 64 MiB", stream(64 << 20)),
                       ("send/recv 1 MiB", stream(1 << 20)),
                       ("send/recv 4 KiB", stream(4 << 10)),
                       ("all_sum 64 MiB float32", all_sum(64 << 20))):
        lines.append(measure(name, work, args.seconds))
        print(lines[-1], file=sys.stderr)
    lines += ["", f"Thunderbolt 5 needs: {TB5_RAW / 1e9:.1f} GB/s raw (75 Gbit/s UC SEND), "
              f"JACCL's all-reduce {JACCL_ALLREDUCE / 1e9:.1f} GB/s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
