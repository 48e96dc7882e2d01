"""A misspelled setting (``RINGCOMM_TIMOUT=5``) would be ignored without a word: warn once, on
the ``ringcomm`` logger, naming the closest setting ``settings.KNOWN`` has.

Only names that look like ringcomm's are judged: every unknown ``RINGCOMM_`` name but the
project's own internal ones (``INTERNAL``), and an ``MLX_`` name only when it is close to one
of ringcomm's and is not a variable MLX itself reads (``MLX_OWN``).  Where every rank shares
one environment (a launcher's rank variable is set), rank 0 alone says it.
"""
from __future__ import annotations

import difflib
from typing import Collection, Mapping

from .log import logger

# Set by ringcomm itself, or test and benchmark knobs: not settings a user writes
INTERNAL = frozenset({
    "RINGCOMM_LAUNCHED",            # ringcomm-launch, in every rank's environment
    "RINGCOMM_IPROUTE",             # an unpacked iproute2 (ringcomm.iproute, links benchmark)
    "RINGCOMM_BENCH_CORRUPT_RANK",  # the benchmark's check of its own checks (tests)
    "RINGCOMM_FUZZ_SEED",           # tests/test_mismatch.py
    "RINGCOMM_NO_GUEST",            # tests/test_rxe.py
})
INTERNAL_PREFIXES = ("RINGCOMM_EMULATED_",)  # the verbs emulation's test knobs
# Variables MLX reads (its ring, JACCL, MPI, Metal, build): never a misspelling of ringcomm's
MLX_OWN = frozenset({
    "MLX_RING_VERBOSE", "MLX_JACCL_RING", "MLX_MPI_LIBNAME", "MLX_WORLD_SIZE",
    "MLX_METAL_FAST_SYNCH", "MLX_METAL_DEBUG", "MLX_METAL_LIBRARY_NAME", "MLX_DISABLE_COMPILE",
    "MLX_BFS_MAX_WIDTH", "MLX_MAX_OPS_PER_BUFFER", "MLX_MAX_MB_PER_BUFFER", "MLX_ENABLE_TF32",
    "MLX_BUILD_METAL", "MLX_DIR", "MLX_ROOT", "MLX_PATH", "MLX_PACKAGE_PATH",
    "MLX_INCLUDE_DIRS", "MLX_EXTENSION_NAME",
})
RANK_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "RANK", "SLURM_PROCID")
LAUNCHED = "RINGCOMM_LAUNCHED"
_warned: set[str] = set()


def warn_unknown(env: Mapping[str, str], known: Collection[str]) -> None:
    """One warning per unknown ringcomm-like name in ``env`` (once per process)."""
    if not _speaks(env):
        return
    for name in env:
        if name in _warned or name in known:
            continue
        hint = closest(name, known)
        if name.startswith("RINGCOMM_") and not _internal(name):
            said = f"did you mean {hint}?" if hint else "docs/settings.md lists them"
        elif name.startswith("MLX_") and name not in MLX_OWN and hint:
            said = f"did you mean {hint}?"
        else:
            continue
        _warned.add(name)
        logger.warning("%s is not a ringcomm setting and is ignored; %s", name, said)


def closest(name: str, known: Collection[str]) -> str | None:
    """The known name most like ``name`` (with the same prefix), if any is close."""
    prefix = name.split("_", 1)[0] + "_"  # (compared without it: "RINGCOMM_" alike in all)
    same_kind = {k[len(prefix):]: k for k in known if k.startswith(prefix)}
    found = difflib.get_close_matches(name[len(prefix):], same_kind, n=1, cutoff=0.7)
    return same_kind[found[0]] if found else None


def _internal(name: str) -> bool:
    return name in INTERNAL or name.startswith(INTERNAL_PREFIXES)


def _speaks(env: Mapping[str, str]) -> bool:
    """Rank 0 where a rank variable is set; not ringcomm-launch itself (its ranks say it)."""
    rank = next((env[n] for n in RANK_VARIABLES if env.get(n)), None)
    if rank is None:
        return LAUNCHED not in env
    return rank.strip() == "0"
