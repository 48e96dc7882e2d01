"""MLX's RDMA device file (``MLX_IBV_DEVICES``): which verbs device links rank i to rank j.

The file is a JSON list with one row per rank; entry ``[i][j]`` is null (no link; always on
the diagonal), a device name, or a list of names (several links, like K connections per
neighbour).  A ring needs, for each rank, the same number of devices toward both neighbours;
entries toward other ranks are ignored (MLX's mesh uses them).
"""
from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError
from .hostfile import read_json, short_repr


def read_device_file(path: str | os.PathLike) -> list[list[list[str]]]:
    """Read and check the device file; as for hostfiles, a FIFO, a device, bytes that are not
    UTF-8 or JSON nested too deeply are ``ConfigError``s (``hostfile.read_json``)."""
    data = read_json(path, "the RDMA device file", "MLX_IBV_DEVICES")
    return parse_devices(data, source=os.fspath(path))


def parse_devices(data: Any, source: str = "device file") -> list[list[list[str]]]:
    """Normalise every entry to a list of names, checking the shape MLX requires."""
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{source}: expected a non-empty JSON list of rows, one per rank")
    size = len(data)
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != size:
            raise ConfigError(f"{source}: row {i} must list {size} entries (one per rank); "
                              f"got {short_repr(row)}")
        entries = []
        for j, entry in enumerate(row):
            names = [] if entry is None else [entry] if isinstance(entry, str) else entry
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"{source}: entry [{i}][{j}] must be null, a device name or "
                                  f"a list of names; got {short_repr(entry)}")
            if i == j and names:
                raise ConfigError(f"{source}: entry [{i}][{i}] links rank {i} to itself; it "
                                  "must be null")
            entries.append(names)
        rows.append(entries)
    return rows


def ring_devices(devices: list[list[list[str]]], rank: int) -> tuple[list[str], list[str]]:
    """The devices toward the left and the right neighbour of ``rank``, equally many."""
    size = len(devices)
    if size == 1:
        return [], []
    left, right = devices[rank][(rank - 1) % size], devices[rank][(rank + 1) % size]
    links = {(r, (r + d) % size): len(devices[r][(r + d) % size])
             for r in range(size) for d in (-1, 1)}  # entry [i][j] -> its number of devices
    if 0 in links.values():
        i, j = next(entry for entry, count in links.items() if count == 0)
        raise ConfigError(f"the RDMA device file has no device from rank {i} to its ring "
                          f"neighbour {j} (entry [{i}][{j}] is null)")
    if len(set(links.values())) != 1:
        (i, j), want = next(iter(links.items()))
        k, m = next(entry for entry, count in links.items() if count != want)
        raise ConfigError(
            "the RDMA device file lists different numbers of devices between ring neighbours "
            f"({sorted(set(links.values()))}): entry [{i}][{j}] names {want}, entry "
            f"[{k}][{m}] names {links[k, m]}; every neighbour pair needs the same number (the "
            "connections per neighbour)")
    return left, right
