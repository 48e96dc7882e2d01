"""Slurm's node lists (``SLURM_STEP_NODELIST``): ``"gpu[01-03,7],login1"`` names gpu01, gpu02,
gpu03, gpu7 and login1.

The rendezvous needs only the first node, and checks the count against the number of tasks:
both come from the syntax alone, so a list that names 10^11 nodes costs no more than one that
names two.  Anything but balanced brackets of ASCII-digit ranges is a ``ConfigError``.
"""
from __future__ import annotations

import math
import re
from typing import Iterator

from .transports import ConfigError

_NAME_PART = re.compile(r"[A-Za-z0-9._-]*")
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")

# one node name's pieces: text, or a bracket's ranges ((lo, hi, digits), ...)
Piece = str | tuple[tuple[int, int, int], ...]


def first_node(text: str) -> str:
    """The first node ``text`` names, without expanding the rest."""
    return next(expand(text))


def node_count(text: str) -> int:
    """How many nodes ``text`` names, without expanding them."""
    return sum(math.prod(sum(hi - lo + 1 for lo, hi, _ in p) for p in name
                         if not isinstance(p, str)) for name in parse(text))


def expand(text: str) -> Iterator[str]:
    """Every node ``text`` names, in Slurm's order, one at a time."""
    for name in parse(text):
        yield from _names(name)


def expand_nodelist(text: str, limit: int = 1 << 16) -> list[str]:
    """Every node ``text`` names; ConfigError past ``limit`` of them."""
    count = node_count(text)
    if count > limit:
        raise ConfigError(f"SLURM_STEP_NODELIST={_short(text)} names {count} nodes, more than "
                          f"{limit}")
    return list(expand(text))


def parse(text: str) -> list[list[Piece]]:
    """The comma-separated names of ``text``, each as its pieces; ConfigError if it is not
    Slurm's syntax (unbalanced or nested brackets, a range that is not digits, lo > hi)."""
    names: list[list[Piece]] = []
    pos = 0
    while pos <= len(text):
        pieces: list[Piece] = []
        while True:
            part = _NAME_PART.match(text, pos).group()
            if part:
                pieces.append(part)
                pos += len(part)
            if pos < len(text) and text[pos] == "[":
                end = text.find("]", pos)
                if end < 0:
                    raise ConfigError(f"SLURM_STEP_NODELIST={_short(text)}: the '[' at "
                                      f"{pos} is never closed")
                pieces.append(_ranges(text, text[pos + 1:end]))
                pos = end + 1
                continue
            break
        if pos < len(text) and text[pos] != ",":
            raise ConfigError(f"SLURM_STEP_NODELIST={_short(text)}: unexpected "
                              f"{text[pos]!r} at {pos} (node names are letters, digits, '.', "
                              "'-' and '_', with [lo-hi,n] ranges)")
        if pieces:
            names.append(pieces)
        pos += 1
    if not names:
        raise ConfigError(f"SLURM_STEP_NODELIST={_short(text)} names no node")
    return names


def _ranges(text: str, inside: str) -> tuple[tuple[int, int, int], ...]:
    out = []
    for part in inside.split(","):
        match = _RANGE.fullmatch(part) if part.isascii() else None
        if match is None or len(part) > 40:
            raise ConfigError(f"SLURM_STEP_NODELIST={_short(text)}: [{_short(inside)}] is not "
                              "a list of ranges like [01-03,7]")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise ConfigError(f"SLURM_STEP_NODELIST={_short(text)}: the range {part} ends "
                              "before it starts")
        out.append((lo, hi, len(match.group(1))))
    return tuple(out)


def _names(pieces: list[Piece]) -> Iterator[str]:
    if not pieces:
        yield ""
        return
    head, rest = pieces[0], pieces[1:]
    if isinstance(head, str):
        for tail in _names(rest):
            yield head + tail
        return
    for lo, hi, digits in head:
        for n in range(lo, hi + 1):
            for tail in _names(rest):
                yield str(n).zfill(digits) + tail


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
