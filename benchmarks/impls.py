"""The implementations a sweep can time (ringcomm, MLX's ring, torch's gloo), behind one
small interface.

``Impl.run`` does one collective and returns only when its result is complete (MLX is lazy,
so its calls evaluate inside ``run``); inputs are converted once by ``prepare``, outside the
timed region.  sendrecv is one step around the ring: even ranks send first, odd ranks receive
first, so no pair waits on the other.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ringcomm.transports import settings
from ringcomm.transports.errors import (CommError, CommTimeoutError, ConfigError,
                                        PeerLostError)
from ringcomm.transports.hostfile import read_hostfile

REDUCTIONS = ("all_sum", "all_max", "all_min")
# What ProcessGroupGloo's collectives take on CPU (its GENERATE_ALL_TYPES, checked on torch
# 2.13): int16 and the unsigned types wider than a byte fail with "Invalid scalar type" (its
# send/recv move any type); complex is summed as pairs of reals, but has no max or min.
GLOO_DTYPES = ("bool", "int8", "uint8", "int32", "int64", "float16", "bfloat16", "float32",
               "float64", "complex64")


class Impl(Protocol):
    name: str
    in_place: bool  # run() overwrites its input: prepare() again before a checked call

    def rank(self) -> int: ...
    def size(self) -> int: ...
    def supports(self, op: str) -> bool: ...
    def prepare(self, x: np.ndarray, op: str) -> Any: ...
    def run(self, op: str, x: Any) -> Any: ...
    def to_numpy(self, result: Any) -> np.ndarray: ...
    def slowest(self, seconds: np.ndarray) -> np.ndarray: ...  # float64, elementwise over ranks
    def total(self, value: int) -> int: ...
    def close(self) -> None: ...


class RingcommImpl:
    """ringcomm over the given transport; results go to one reused ``out=`` buffer per size
    (in place: into the input, or the input is a block of it)."""

    name = "ringcomm"

    def __init__(self, transport: str = "tcp", protocol: str | None = None,
                 in_place: bool = False) -> None:
        import ringcomm
        self.group = ringcomm.init(strict=True, backend=transport, protocol=protocol)
        self.in_place = in_place
        self._out: np.ndarray | None = None

    def rank(self) -> int:
        return self.group.rank()

    def size(self) -> int:
        return self.group.size()

    def supports(self, op: str) -> bool:
        return True

    def prepare(self, x: np.ndarray, op: str) -> np.ndarray:
        n, r = self.size(), self.rank()
        shape = {"all_gather": (x.size * n,), "sum_scatter": (x.size // n,)}.get(op, x.shape)
        if not self.in_place or op == "sendrecv":
            self._out = np.empty(shape, x.dtype)
        elif op == "all_gather":  # the input is this rank's block of the output
            self._out = np.empty(shape, x.dtype)
            self._out[r * x.size:(r + 1) * x.size] = x
            x = self._out[r * x.size:(r + 1) * x.size]
        elif op == "sum_scatter":  # the output is this rank's block of the input
            self._out = x[r * shape[0]:(r + 1) * shape[0]]
        else:  # the reductions write into their input
            self._out = x
        return x

    def run(self, op: str, x: np.ndarray) -> np.ndarray:
        g, out = self.group, self._out
        if op != "sendrecv":
            return getattr(g, op)(x, out=out)
        r, n = g.rank(), g.size()
        if r % 2 == 0:
            g.send(x, (r + 1) % n)
            return g.recv(x.shape, x.dtype, (r - 1) % n, out=out)
        got = g.recv(x.shape, x.dtype, (r - 1) % n, out=out)
        g.send(x, (r + 1) % n)
        return got

    def to_numpy(self, result: np.ndarray) -> np.ndarray:
        return result

    def slowest(self, seconds: np.ndarray) -> np.ndarray:
        return self.group.all_max(np.asarray(seconds, np.float64))

    def total(self, value: int) -> int:
        return int(self.group.all_sum(np.array([value], np.int64))[0])

    def close(self) -> None:
        self.group.close()


class MlxImpl:
    """MLX's ring backend (``mx.distributed.init(strict=True, backend="ring")``)."""

    name = "mlx"
    in_place = False  # MLX's collectives return new arrays

    def __init__(self) -> None:
        import signal

        import mlx.core as mx
        # MLX's ring blocks in C++ where Python never sees SIGINT: let Ctrl-C (and the
        # launcher's stop) end the process at once instead of being ignored.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        self.mx = mx
        self.group = mx.distributed.init(strict=True, backend="ring")

    def rank(self) -> int:
        return self.group.rank()

    def size(self) -> int:
        return self.group.size()

    def supports(self, op: str) -> bool:
        return op != "sum_scatter"  # MLX's ring has no reduce-scatter

    def prepare(self, x: np.ndarray, op: str) -> Any:
        from ringcomm.mlx_arrays import to_mlx
        x = to_mlx(x)  # keeps float64 and bfloat16 as they are
        self.mx.eval(x)
        return x

    def run(self, op: str, x: Any) -> Any:
        mx, d = self.mx, self.mx.distributed
        if op != "sendrecv":
            y = getattr(d, op)(x)
            mx.eval(y)
            return y
        r, n = self.rank(), self.size()
        if r % 2 == 0:
            mx.eval(d.send(x, (r + 1) % n))
            y = d.recv_like(x, (r - 1) % n)
            mx.eval(y)
        else:
            y = d.recv_like(x, (r - 1) % n)
            mx.eval(y)
            mx.eval(d.send(x, (r + 1) % n))
        return y

    def to_numpy(self, result: Any) -> np.ndarray:
        from ringcomm.mlx_arrays import to_numpy
        return to_numpy(result)

    def slowest(self, seconds: np.ndarray) -> np.ndarray:
        mx = self.mx
        y = mx.distributed.all_max(mx.array(list(map(float, seconds)), dtype=mx.float64))
        mx.eval(y)
        return np.array(y.tolist(), np.float64)

    def total(self, value: int) -> int:
        mx = self.mx
        y = mx.distributed.all_sum(mx.array([value], dtype=mx.int64))
        mx.eval(y)
        return int(y[0].item())

    def close(self) -> None:
        pass  # MLX's group has no close: its connections end with the process


def gloo_lacks(op: str, dtype: str) -> str | None:
    """Why gloo cannot run ``op`` on ``dtype`` (for the table's note), or None when it can."""
    if op != "sendrecv" and dtype not in GLOO_DTYPES:
        return f"gloo has no {dtype} collectives"
    if op in ("all_max", "all_min") and dtype.startswith("complex"):
        return "gloo has no max or min of complex numbers"
    return None


class GlooImpl:
    """torch.distributed's gloo backend on the ranks of MLX_RANK/MLX_HOSTFILE.

    The rendezvous (``tcp://``, torch's TCPStore) listens on rank 0's first hostfile address:
    ``-n`` gives each pass a fresh hostfile, and under a launcher ringcomm's group is closed
    before, and MLX's (which cannot close) started after, this one.  RINGCOMM_TIMEOUT bounds
    the rendezvous and every collective.  all_reduce works in place, so the reductions are
    timed in place (``in_place`` tells ``measure`` to check them on a fresh input)."""

    name = "gloo"

    def __init__(self, dtype: str = "float32") -> None:
        import datetime
        import signal

        knobs = settings.load()
        hosts = read_hostfile(_need(knobs.hostfile, "MLX_HOSTFILE"))
        self._rank, self._size = _rank_in(_need(knobs.rank, "MLX_RANK"), len(hosts)), len(hosts)
        self.dtype, self.in_place = dtype, False
        try:
            import torch
            import torch.distributed as dist
        except ImportError as e:
            raise ConfigError(f"--vs gloo needs torch ({e}): pip install torch") from None
        if not (dist.is_available() and dist.is_gloo_available()):
            raise ConfigError(f"torch {torch.__version__} was built without gloo; "
                              "--vs gloo needs torch.distributed with the gloo backend")
        self.torch, self.dist = torch, dist
        self._ops = {"all_sum": dist.ReduceOp.SUM, "all_max": dist.ReduceOp.MAX,
                     "all_min": dist.ReduceOp.MIN}
        # newer torch (2.13) calls the *_tensor names deprecated in favour of *_single
        self._gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._scatter = (getattr(dist, "reduce_scatter_single", None)
                         or dist.reduce_scatter_tensor)
        self._out: Any = None
        self._np_dtype = np.dtype(np.float32)
        # gloo waits in C++, where Python never sees SIGINT (as MLX's ring): let Ctrl-C and
        # the launcher's stop end the process at once
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        master = hosts[0][0]
        try:
            dist.init_process_group(
                "gloo", init_method=f"tcp://{master}", rank=self._rank,
                world_size=self._size, timeout=datetime.timedelta(seconds=knobs.timeout))
        except RuntimeError as e:  # rank 0 waits for the others; they connect to rank 0
            raise _gloo_error(e, self._rank, f"gloo rendezvous at tcp://{master}",
                              peer=0 if self._rank else None,
                              address=str(master) if self._rank else None) from e

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def supports(self, op: str) -> bool:
        return gloo_lacks(op, self.dtype) is None

    def prepare(self, x: np.ndarray, op: str) -> Any:
        torch, n = self.torch, self._size
        self._np_dtype = x.dtype
        t = _to_torch(torch, x)
        self.in_place = op in REDUCTIONS
        if op == "all_gather":
            self._out = torch.empty(t.numel() * n, dtype=t.dtype)
        elif op == "sum_scatter":
            self._out = torch.empty(t.numel() // n, dtype=t.dtype)
        else:
            self._out = t if self.in_place else torch.empty_like(t)
        return t

    def run(self, op: str, x: Any) -> Any:
        d, out = self.dist, self._out
        try:
            if op in self._ops:
                d.all_reduce(x, op=self._ops[op])
            elif op == "all_gather":
                self._gather(out, x)
            elif op == "sum_scatter":  # gloo: an all_reduce of x, then this rank's slice
                self._scatter(out, x)
            elif self._rank % 2 == 0:
                d.isend(x, (self._rank + 1) % self._size).wait()
                d.irecv(out, (self._rank - 1) % self._size).wait()
            else:
                d.irecv(out, (self._rank - 1) % self._size).wait()
                d.isend(x, (self._rank + 1) % self._size).wait()
        except RuntimeError as e:
            raise _gloo_error(e, self._rank, f"gloo {op}") from e
        return out

    def to_numpy(self, result: Any) -> np.ndarray:
        if result.dtype == self.torch.bfloat16:  # numpy has no bfloat16: go through int16
            return result.view(self.torch.int16).numpy().view(self._np_dtype)
        return result.numpy()

    def slowest(self, seconds: np.ndarray) -> np.ndarray:
        t = self.torch.tensor(np.asarray(seconds, np.float64))
        self.run("all_max", t)
        return t.numpy()

    def total(self, value: int) -> int:
        t = self.torch.tensor([value], dtype=self.torch.int64)
        self.run("all_sum", t)
        return int(t[0])

    def close(self) -> None:
        self.dist.destroy_process_group()  # also frees rank 0's rendezvous port


def _to_torch(torch: Any, x: np.ndarray) -> Any:
    """``x`` as a CPU tensor sharing its memory (bfloat16 through its int16 view)."""
    x = np.ascontiguousarray(x)
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def _need(value: str | None, variable: str) -> str:
    if value is None:
        raise ConfigError(f"--vs gloo needs {variable}: its rendezvous is rank 0's hostfile "
                          "address (ringcomm-launch and -n set it)")
    return value


def _rank_in(value: str, size: int) -> int:
    try:
        rank = int(value.strip())
    except ValueError:
        raise ConfigError(f"MLX_RANK must be an integer rank; got {value!r}") from None
    if not 0 <= rank < size:
        raise ConfigError(f"rank {rank} is out of range: the hostfile describes {size} ranks")
    return rank


def _gloo_error(e: RuntimeError, rank: int, op: str, peer: int | None = None,
                address: str | None = None) -> CommError:
    """gloo's exception as ringcomm's typed error, naming this rank and the call; gloo's own
    text (which names the peer's address) is kept."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()),
                type(e).__name__)
    low = text.lower()
    if "timed out" in low or "timeout" in low:
        kind: type[CommError] = CommTimeoutError
    elif any(w in low for w in ("closed", "reset", "broken pipe", "connection", "refused")):
        kind = PeerLostError
    else:
        kind = CommError
    return kind(f"gloo: {text}", rank=rank, peer=peer, address=address, op=op)


def create(name: str, transport: str = "tcp", protocol: str | None = None,
           in_place: bool = False, dtype: str = "float32") -> Impl:
    """The implementation called ``name``, joined to the ring of MLX_RANK/MLX_HOSTFILE."""
    if name == "ringcomm":
        return RingcommImpl(transport, protocol, in_place)
    return GlooImpl(dtype) if name == "gloo" else MlxImpl()


def connections_per_neighbour() -> int | None:
    """K of the ring in MLX_HOSTFILE, for the report's header (None when unreadable)."""
    try:
        return len(read_hostfile(settings.load().hostfile)[0])
    except Exception:
        return None
