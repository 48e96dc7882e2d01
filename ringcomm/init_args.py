"""A second ``init()``: what it asked for, against what the default group was formed with.

A call that agrees gets the default group back, as ``mx.distributed.init()`` does; one that
does not is told each difference (``init`` raises ``ConfigError``).  An argument a call leaves
out agrees with anything: ``init()`` is also how a library asks for the group the program
formed.  A group of one rank holds no port and no connection, so it is reused only for a call
that resolves to exactly the same inputs (environment included); any other call forms anew.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from .transports import Address, ConfigError, parse_hostfile, read_hostfile
from .transports.devicefile import parse_devices, read_device_file


@dataclasses.dataclass(frozen=True)
class Formed:
    """What the default group was formed with: ``inputs``, every input with the environment's
    fallbacks, before anything was looked up; ``values``, each argument's value as the group
    runs with it (``given``'s names)."""

    inputs: tuple
    values: dict[str, Any]


def given(backend: str, rank: object, hostfile: object, devices: object,
          **others: object) -> dict[str, Any]:
    """The arguments a call gave (None: left out), normalised as ``Formed.values`` holds them:
    a hostfile or device file by its entries, so that a path and the parsed list agree."""
    asked: dict[str, Any] = {k: v for k, v in others.items() if v is not None}
    if backend != "any":
        asked["backend"] = backend
    if rank is not None:
        asked["rank"] = _rank(rank)
    if hostfile is not None:
        asked["hostfile"] = addresses(parse_hostfile(hostfile, source="hostfile argument")
                                      if isinstance(hostfile, (list, tuple))
                                      else read_hostfile(hostfile))
    if devices is not None:
        asked["devices"] = table(parse_devices(devices, source="devices argument")
                                 if isinstance(devices, (list, tuple))
                                 else read_device_file(devices))
    return asked


def differences(formed: Formed, asked: dict[str, Any]) -> list[str]:
    """Each given argument that differs from the default group's, as words."""
    found = []
    for name, value in asked.items():
        was = formed.values.get(name)
        if value == was:
            continue
        if name == "token":  # (never printed)
            found.append("token (a different one)" if was is not None else
                         "token (the default group has none)")
        else:
            found.append(f"{name}={shown(name, value)} (the default group's: "
                         f"{shown(name, was)})")
    return found


def addresses(hostfile: Sequence[Sequence[Address]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(str(a) for a in entry) for entry in hostfile)


def table(devices: Sequence) -> tuple:
    return tuple(tuple(tuple(names) if isinstance(names, list) else names for names in row)
                 for row in devices)


def _rank(value: object) -> object:
    try:
        return value if isinstance(value, int) and not isinstance(value, bool) \
            else int(str(value).strip())
    except ValueError:
        return value


def shown(name: str, value: Any) -> str:
    """``value`` of the argument ``name``, as a message shows it."""
    if value is None:
        return "none"
    if name == "timeout":
        return f"{value:g} s"
    if name == "hostfile":
        return "[" + ", ".join("[" + ", ".join(entry) + "]" for entry in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def entries(value: Any, kind: str) -> object:
    """A hostfile or device file input as compared for a group of one: a path made absolute,
    the parsed entries of a list (never its repr: a list may be nested past the recursion
    limit, which parsing refuses); one that does not parse is equal to nothing."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        return os.path.abspath(os.fspath(value))
    try:
        if kind == "hostfile":
            return addresses(parse_hostfile(value, source="hostfile argument"))
        return table(parse_devices(value, source="devices argument"))
    except ConfigError:  # (an argument the backend ignores; else forming refuses it)
        return object()
