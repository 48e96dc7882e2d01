"""A localhost ring of N rank processes that lives for the whole test session.

Each rank is a ringcomm process over TCP ("ringcomm"), a ringcomm process over the RDMA
transport on the EMULATED verbs provider ("rdma-emulated": no RDMA hardware is involved), or,
for the interoperability tests, an MLX process running MLX's own ring backend
(``mx.distributed.init(backend="ring")``) on the same hostfile.

Each test sends a function to every rank (by reference: it must live in an importable module)
and gets back what each rank returned, so that a hypothesis example costs one collective,
not a process start-up.  A rank that raises, or a ring that stops answering, marks the
cluster broken; the next ``ClusterCache.get`` starts a fresh one.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import traceback
from typing import Any, Callable

from ringcomm.launch import localhost_devices, localhost_hostfile
from ringcomm.ports import free_ports
from ringcomm.transports.hostfile import write_hostfile

RANK_TIMEOUT = 60.0   # the ranks' group timeout: a hang inside a collective fails here
REPLY_TIMEOUT = 120.0  # the controller's wait for a reply from a rank


class RankError(AssertionError):
    """A rank raised; the message carries its traceback."""


def _join(impl: str, rank: int, ring: dict, timeout: float, protocol: str):
    if impl == "mlx":
        os.environ.update(MLX_RANK=str(rank), MLX_HOSTFILE=ring["hostfile"])
        import mlx.core as mx
        return mx.distributed.init(strict=True, backend="ring")
    import ringcomm
    if impl == "rdma-emulated":
        return ringcomm.init(rank=rank, backend="rdma", verbs="emulated",
                             devices=ring["devices"], coordinator=ring["coordinator"],
                             timeout=timeout)
    return ringcomm.init(rank=rank, hostfile=ring["hostfile"], timeout=timeout,
                         protocol=protocol)


def _serve(impl: str, rank: int, ring: dict, conn, timeout: float, protocol: str) -> None:
    try:
        group = _join(impl, rank, ring, timeout, protocol)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            break
        if job is None:
            break
        fn, args = job
        try:
            conn.send(("ok", fn(group, *args)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
    if impl != "mlx":
        group.close()


class Cluster:
    def __init__(self, size: int, connections: int = 1,
                 impls: tuple[str, ...] | None = None) -> None:
        self.size, self.connections = size, connections
        self.impls = impls or ("ringcomm",) * size
        protocol = "mlx" if "mlx" in self.impls else "ringcomm"  # MLX speaks only its own
        self.broken = False
        self._dir = tempfile.TemporaryDirectory(prefix="ringcomm-cluster-")
        ring = {"hostfile": os.path.join(self._dir.name, "hostfile.json"),
                "devices": localhost_devices(size, connections, "emulated0"),
                "coordinator": f"127.0.0.1:{free_ports(1)[0]}"}
        write_hostfile(ring["hostfile"], localhost_hostfile(size, connections))
        ctx = mp.get_context("spawn")
        self._conns, self._procs = [], []
        for rank in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve,
                               args=(self.impls[rank], rank, ring, child, RANK_TIMEOUT,
                                     protocol),
                               daemon=True, name=f"ringcomm-rank-{rank}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._collect("init")

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """Call ``fn(group, *args)`` on every rank at once; return the results in rank order."""
        return self.run_each(fn, [args] * self.size)

    def run_each(self, fn: Callable[..., Any], per_rank_args: list[tuple]) -> list[Any]:
        """Like ``run`` with different arguments for each rank."""
        if self.broken:
            raise RuntimeError("cluster is broken")
        for conn, args in zip(self._conns, per_rank_args):
            conn.send((fn, args))
        return self._collect(getattr(fn, "__name__", "job"))

    def _collect(self, what: str) -> list[Any]:
        results, errors = [], []
        for rank, conn in enumerate(self._conns):
            if not conn.poll(REPLY_TIMEOUT):
                self.broken = True
                self.close()
                raise TimeoutError(f"rank {rank} did not answer {what} within {REPLY_TIMEOUT} s")
            try:
                status, value = conn.recv()
            except EOFError:
                status, value = "error", f"the rank process died (exit code {self._procs[rank].exitcode})"
            if status == "error":
                errors.append(f"--- rank {rank} ---\n{value}")
            results.append(value)
        if errors:
            self.broken = True
            raise RankError(f"{what} failed on {len(errors)} of {self.size} ranks:\n"
                            + "\n".join(errors))
        return results

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._dir.cleanup()


class ClusterCache:
    """Live clusters by (size, connections, impls): replaced when broken, and the least
    recently used closed when more than ``max_ranks`` rank processes would be alive."""

    def __init__(self, max_ranks: int = 24) -> None:
        self._clusters: dict[tuple, Cluster] = {}  # in order of use, oldest first
        self.max_ranks = max_ranks

    def get(self, size: int, connections: int = 1,
            impls: tuple[str, ...] | None = None) -> Cluster:
        key = (size, connections, impls or ("ringcomm",) * size)
        cluster = self._clusters.pop(key, None)
        if cluster is not None and cluster.broken:
            cluster.close()
            cluster = None
        if cluster is None:
            while self._clusters and sum(c.size for c in self._clusters.values()) + size \
                    > self.max_ranks:
                self._clusters.pop(next(iter(self._clusters))).close()
            cluster = Cluster(size, connections, key[2])
        self._clusters[key] = cluster
        return cluster

    def close(self) -> None:
        for cluster in self._clusters.values():
            cluster.close()
        self._clusters.clear()
