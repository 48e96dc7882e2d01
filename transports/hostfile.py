"""MLX's ring hostfile: a JSON list, one entry per rank, each a list of "host:port" strings.

Entry ``i`` of a rank's list is the address of its ``i``-th connection (see
``docs/wire-protocol.md``).  Everything is checked here, before any socket opens.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple, Sequence

from .errors import ConfigError


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def read_hostfile(path: str | os.PathLike) -> list[list[Address]]:
    """Read and validate a hostfile; errors name the path and what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read hostfile {os.fspath(path)!r}: {e.strerror or e}") from e
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"hostfile {os.fspath(path)!r} is not valid JSON: {e.msg} "
                          f"at line {e.lineno}, column {e.colno}") from e
    return parse_hostfile(entries, source=os.fspath(path))


def parse_hostfile(entries: object, *, source: str = "hostfile") -> list[list[Address]]:
    """Validate already-parsed hostfile JSON (a list per rank of "host:port" strings)."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: expected a non-empty JSON list with one entry per rank, "
                          f'e.g. [["127.0.0.1:5000"], ["127.0.0.1:5001"]]; got {_short(entries)}')
    ranks = [_parse_rank(i, entry, source) for i, entry in enumerate(entries)]
    counts = {len(r) for r in ranks}
    if len(counts) != 1:
        detail = ", ".join(f"rank {i}: {len(r)}" for i, r in enumerate(ranks))
        raise ConfigError(f"{source}: every rank needs the same number of connections "
                          f"(addresses per entry); got {detail}")
    seen: dict[Address, int] = {}
    for i, rank in enumerate(ranks):
        for a in rank:
            if a in seen:
                raise ConfigError(f"{source}: address {a} appears twice (ranks {seen[a]} and {i}); "
                                  "every connection needs its own port")
            seen[a] = i
    return ranks


def _parse_rank(i: int, entry: object, source: str) -> list[Address]:
    if isinstance(entry, str):  # tolerate the one-connection shorthand "host:port"
        entry = [entry]
    if not isinstance(entry, list) or not entry:
        raise ConfigError(f"{source}: entry {i} must be a non-empty list of \"host:port\" "
                          f"strings; got {_short(entry)}")
    return [_parse_address(i, a, source) for a in entry]


def _parse_address(i: int, text: object, source: str) -> Address:
    if isinstance(text, Address):
        return text
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"{source}: entry {i}: expected \"host:port\"; got {_short(text)}")
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{source}: entry {i}: {text!r} is not \"host:port\" "
                          "with a port from 1 to 65535")
    return Address(host, int(port))


def write_hostfile(path: str | os.PathLike, ranks: Sequence[Sequence[Address]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump([[str(a) for a in rank] for rank in ranks], f)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
