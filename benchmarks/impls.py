"""The two implementations a sweep can time, behind one small interface.

``Impl.run`` does one collective and returns only when its result is complete (MLX is lazy,
so its calls evaluate inside ``run``); inputs are converted once by ``prepare``, outside the
timed region.  sendrecv is one step around the ring: even ranks send first, odd ranks receive
first, so no pair waits on the other.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ringcomm.transports import settings
from ringcomm.transports.hostfile import read_hostfile


class Impl(Protocol):
    name: str
    in_place: bool  # run() overwrites its input: prepare() again before a checked call

    def rank(self) -> int: ...
    def size(self) -> int: ...
    def supports(self, op: str) -> bool: ...
    def prepare(self, x: np.ndarray, op: str) -> Any: ...
    def run(self, op: str, x: Any) -> Any: ...
    def to_numpy(self, result: Any) -> np.ndarray: ...
    def slowest(self, seconds: float) -> float: ...
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

    def slowest(self, seconds: float) -> float:
        return float(self.group.all_max(np.array([seconds]))[0])

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

    def slowest(self, seconds: float) -> float:
        mx = self.mx
        y = mx.distributed.all_max(mx.array([seconds], dtype=mx.float64))
        mx.eval(y)
        return float(y[0].item())

    def total(self, value: int) -> int:
        mx = self.mx
        y = mx.distributed.all_sum(mx.array([value], dtype=mx.int64))
        mx.eval(y)
        return int(y[0].item())

    def close(self) -> None:
        pass  # MLX's group has no close: its connections end with the process


def create(name: str, transport: str = "tcp", protocol: str | None = None,
           in_place: bool = False) -> Impl:
    """The implementation called ``name``, joined to the ring of MLX_RANK/MLX_HOSTFILE."""
    return RingcommImpl(transport, protocol, in_place) if name == "ringcomm" else MlxImpl()


def connections_per_neighbour() -> int | None:
    """K of the ring in MLX_HOSTFILE, for the report's header (None when unreadable)."""
    try:
        return len(read_hostfile(settings.load().hostfile)[0])
    except Exception:
        return None
