"""Choose the verbs provider the RDMA transport runs on: real pyverbs, or the emulation.

Both are returned as one namespace with the same names (``Context``, ``PD``, ``MR``, ``CQ``,
``QP``, ``QPCap``, ``QPInitAttr``, ``QPAttr``, ``AHAttr``, ``GlobalRoute``, ``GID``, ``SGE``,
``SendWR``, ``RecvWR``, ``get_device_list``, ``enums``, ``PyverbsError``, ``EMULATED``), so
``transports.rdma`` never knows which one it drives.  ``RINGCOMM_VERBS`` picks: ``pyverbs``,
``ctypes`` (``transports.verbs_ctypes``: the verbs C library through ctypes, for macOS),
``emulated`` (``transports.emulated_verbs``: no RDMA, for tests), or ``auto`` (the default:
pyverbs if it imports, else ctypes if the verbs library loads and lists a device).

What the transport uses of a provider (``docs/rdma-protocol.md``): UC queue pairs
(``enums.IBV_QPT_UC``) and ``IBV_WR_SEND`` only, memory with ``IBV_ACCESS_LOCAL_WRITE``;
``Context.query_port(1)`` with ``lid``, ``active_mtu`` and ``gid_tbl_len``;
``Context.query_gid(1, index)`` whose ``.gid`` is eight colon-separated groups of four hex
digits, raising ``PyverbsError`` for an index the table does not have; completions with
``wr_id``, ``status`` and ``byte_len``.
"""
from __future__ import annotations

from types import ModuleType, SimpleNamespace

from . import settings
from .errors import ConfigError

PROVIDERS = settings.VERBS_PROVIDERS


def load(provider: str | None = None) -> SimpleNamespace | ModuleType:
    provider = provider or settings.load().verbs
    if provider == "emulated":
        from . import emulated_verbs
        return emulated_verbs
    if provider == "auto":  # the default: pyverbs, else ctypes where it lists a device
        try:
            return load("pyverbs")
        except ConfigError as no_pyverbs:
            try:
                api = load("ctypes")
            except ConfigError:
                raise no_pyverbs from None
            if device_names(api):
                return api
            raise ConfigError(f"{no_pyverbs} (The verbs library loads for RINGCOMM_VERBS="
                              "ctypes, but lists no RDMA device.)") from None
    if provider == "ctypes":
        try:
            from . import verbs_ctypes
        except ImportError as e:
            raise ConfigError(
                f"RINGCOMM_VERBS=ctypes needs the verbs C library, which does not load here "
                f"({e}). On Linux: apt install libibverbs1 ibverbs-providers; on macOS 26.2 "
                "or later Apple's librdma.dylib is part of the system. To run the RDMA "
                "protocol without RDMA, set RINGCOMM_VERBS=emulated.") from None
        return verbs_ctypes
    if provider != "pyverbs":
        raise ConfigError(f"unknown verbs provider {provider!r} (from RINGCOMM_VERBS or "
                          f"verbs=); choose one of: {', '.join(PROVIDERS)}")
    try:
        from pyverbs import addr, cq, device, mr, pd, qp, wr
        from pyverbs.pyverbs_error import PyverbsError, PyverbsRDMAError
    except ImportError as e:
        raise ConfigError(
            f"the RDMA transport needs pyverbs, which is not importable here ({e}). "
            "On Linux: install rdma-core's build dependencies and `pip install "
            "'ringcomm[rdma]'` (see README, RDMA). pyverbs does not exist on macOS. To run "
            "the RDMA protocol without RDMA hardware, set RINGCOMM_VERBS=emulated "
            "(an emulation: it proves the protocol logic, not RDMA).") from None
    try:  # rdma-core before v58 names the module of constants pyverbs.enums
        import pyverbs.enums as enums
    except ImportError:
        import pyverbs.libibverbs_enums as enums
    return SimpleNamespace(
        EMULATED=False, enums=enums, get_device_list=device.get_device_list,
        Context=device.Context, PD=pd.PD, MR=mr.MR, CQ=cq.CQ, QP=qp.QP, QPCap=qp.QPCap,
        QPInitAttr=qp.QPInitAttr, QPAttr=qp.QPAttr, AHAttr=addr.AHAttr,
        GlobalRoute=addr.GlobalRoute, GID=addr.GID, SGE=wr.SGE, SendWR=wr.SendWR,
        RecvWR=wr.RecvWR, PyverbsError=PyverbsError, PyverbsRDMAError=PyverbsRDMAError)


def provider_name(api: SimpleNamespace | ModuleType) -> str:
    """Which provider ``load`` gave (``auto`` resolved): pyverbs, ctypes or emulated."""
    if getattr(api, "EMULATED", False):
        return "emulated"
    return "ctypes" if getattr(api, "__name__", "").endswith("verbs_ctypes") else "pyverbs"


def device_names(api: SimpleNamespace | ModuleType) -> list[str]:
    """The names of the devices the provider lists (pyverbs gives bytes).

    pyverbs raises instead of returning an empty list when the kernel has no RDMA support.
    """
    try:
        found = api.get_device_list()
    except api.PyverbsError:
        return []
    return [d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in found]
