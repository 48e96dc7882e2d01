"""``patch_mlx()``: run an unmodified MLX program's ``mx.distributed`` calls on ringcomm.

    import ringcomm
    group = ringcomm.patch_mlx()           # from here on mx.distributed is ringcomm's
    model.shard(mx.distributed.init())     # mlx-lm, mlx.nn.layers.distributed: unchanged

After ``patch_mlx`` the names ``init``, ``is_available``, ``all_sum``, ``all_max``,
``all_min``, ``all_gather``, ``sum_scatter``, ``send``, ``recv`` and ``recv_like`` of
``mlx.core.distributed`` are the functions below, with MLX's signatures (``group=`` and
``stream=`` accepted).  They resolve the group at call time: ``None`` is the patched group, a
ringcomm ``Group`` runs on ringcomm, and a real ``mx.distributed.Group`` (one made before
patching) still goes to MLX's own function.  MLX's Python code that looks these names up
at call time (``mlx.nn.layers.distributed``, ``mlx.nn.utils``, mlx-lm) follows without
change.  ringcomm's collectives are eager, MLX's are lazy: see docs/mlx-programs.md.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .group import Group
from .mlx_arrays import collective as mlx_collective, require_mlx

NAMES = ("init", "is_available", "all_sum", "all_max", "all_min", "all_gather", "sum_scatter",
         "send", "recv", "recv_like")

_originals: dict[str, Any] | None = None  # MLX's own functions while patched
_group: Group | None = None                # what init() and group=None mean while patched


def patch_mlx(group: Group | None = None) -> Group:
    """Make ``mx.distributed`` ringcomm's; return the group that ``mx.distributed.init()``
    will return (``group``, else ringcomm's default group, joined now from MLX_RANK and
    MLX_HOSTFILE as ``ringcomm.init()`` does).

    Calling it again only changes the group; ``unpatch_mlx()`` puts MLX's functions back.
    """
    global _originals, _group
    mx = require_mlx("patch_mlx")
    from .init import default_group
    if group is not None and not isinstance(group, Group):
        raise TypeError(f"patch_mlx: group must be a ringcomm.Group, not {type(group).__name__}")
    _group = group if group is not None else default_group()
    if _originals is None:
        _originals = {name: getattr(mx.distributed, name) for name in NAMES}
    for name in NAMES:
        setattr(mx.distributed, name, _REPLACEMENTS[name])
    return _group


def unpatch_mlx() -> None:
    """Put MLX's own ``mx.distributed`` functions back (a no-op when not patched)."""
    global _originals, _group
    if _originals is None:
        return
    import mlx.core as mx
    for name, fn in _originals.items():
        setattr(mx.distributed, name, fn)
    _originals, _group = None, None


def is_patched() -> bool:
    """True between ``patch_mlx()`` and ``unpatch_mlx()``."""
    return _originals is not None


def split_group(group: Group, color: int, key: int = -1) -> Group | None:
    """``group.split(color, key)`` as MLX defines it (``ringcomm.split``: a ring of its own
    for each color; a negative color returns ``None``).  Every rank must call it."""
    return group.split(color, key)


# -- the replacements (MLX's signatures) ---------------------------------------------------

def init(strict: bool = False, backend: str = "any", *,
         all_gather_factory: Callable | None = None) -> Group:
    """The patched group (whatever ``backend`` names: the patch means ringcomm serves it)."""
    if all_gather_factory is not None:
        raise ValueError("mx.distributed.init: all_gather_factory is not supported while "
                         "ringcomm.patch_mlx() is in effect")
    group = _current()
    if strict and group.size() == 1:
        from .transports.errors import ConfigError
        raise ConfigError("mx.distributed.init(strict=True) under ringcomm.patch_mlx(): the "
                          "patched group has one rank; set MLX_RANK and MLX_HOSTFILE (ringcomm-"
                          "launch does) before patch_mlx(), or pass it a group")
    return group


def is_available(backend: str = "any") -> bool:
    """ringcomm's TCP ring is always available."""
    return True


def _collective(name: str) -> Callable[..., Any]:
    def collective(x: Any, *, group: Any = None, stream: Any = None) -> Any:
        g = _resolve(group)
        if g is None:
            return _originals[name](x, group=group, stream=stream)  # an MLX group
        return mlx_collective(g, name, _as_mlx(x))
    collective.__name__ = collective.__qualname__ = name
    collective.__doc__ = (f"ringcomm's {name} on the patched group (or ``group``); MLX's "
                          "signature, ``stream`` accepted and unused (the call is eager).")
    return collective


all_sum, all_max, all_min = _collective("all_sum"), _collective("all_max"), _collective("all_min")
all_gather, sum_scatter = _collective("all_gather"), _collective("sum_scatter")


def send(x: Any, dst: int, *, group: Any = None, stream: Any = None) -> Any:
    """Send ``x`` to neighbour ``dst`` now; returns ``x`` (MLX returns a node that sends)."""
    g = _resolve(group)
    if g is None:
        return _originals["send"](x, dst, group=group, stream=stream)
    return g.send(_as_mlx(x), dst)


def recv(shape: Sequence[int], dtype: Any, src: int, *, group: Any = None,
         stream: Any = None) -> Any:
    """Receive an mx.array of ``shape`` and ``dtype`` from neighbour ``src`` now."""
    g = _resolve(group)
    if g is None:
        return _originals["recv"](shape, dtype, src, group=group, stream=stream)
    return g.recv(tuple(shape), dtype, src)


def recv_like(x: Any, src: int, *, group: Any = None, stream: Any = None) -> Any:
    """Receive an mx.array shaped and typed like ``x`` from neighbour ``src`` now."""
    g = _resolve(group)
    if g is None:
        return _originals["recv_like"](x, src, group=group, stream=stream)
    return g.recv(tuple(x.shape), x.dtype, src)


_REPLACEMENTS = {"init": init, "is_available": is_available, "all_sum": all_sum,
                 "all_max": all_max, "all_min": all_min, "all_gather": all_gather,
                 "sum_scatter": sum_scatter, "send": send, "recv": recv, "recv_like": recv_like}


def _current() -> Group:
    if _group is None:
        raise RuntimeError("ringcomm.unpatch_mlx() was called: this function is no longer "
                           "mx.distributed's")
    return _group


def _resolve(group: Any) -> Group | None:
    """The ringcomm group a call runs on, or None for a real MLX group (MLX runs it)."""
    if group is None:
        return _current()
    if isinstance(group, Group):
        return group
    if _originals is not None and type(group).__module__.startswith("mlx"):
        return None
    raise TypeError(f"group must be a ringcomm.Group or an mx.distributed.Group, not "
                    f"{type(group).__name__}")


def _as_mlx(x: Any) -> Any:
    """``x`` as an mx.array (MLX's functions take scalars and array-likes too)."""
    t = type(x)
    if t.__name__ == "array" and t.__module__.startswith("mlx"):
        return x
    import mlx.core as mx
    return mx.array(x)
