"""MLX's ring hostfile: a JSON list, one entry per rank, each a list of "host:port" strings.

Entry ``i`` of a rank's list is the address of its ``i``-th connection (see
``docs/wire-protocol.md``).  Everything is checked here, before any socket opens, and
whatever the file holds (bytes that are not UTF-8, JSON nested a million deep, a FIFO or
``/dev/zero`` in its place, a port written "²") ends in a ``ConfigError`` saying what to fix.
"""
from __future__ import annotations

import ipaddress
import json
import os
import reprlib
import stat
from typing import NamedTuple, Sequence

from .errors import ConfigError


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


MAX_FILE_BYTES = 16 << 20  # a hostfile of 100,000 ranks with 4 connections each is ~10 MiB


def read_hostfile(path: str | os.PathLike) -> list[list[Address]]:
    """Read and validate a hostfile; errors name the path and what is wrong."""
    return parse_hostfile(read_json(path, "hostfile"), source=os.fspath(path))


def read_json(path: str | os.PathLike, what: str, variable: str | None = None) -> object:
    """The JSON in the regular file ``path`` (``what``, set by ``variable``), read without
    blocking: a FIFO, a device or a directory is refused before any byte is read, and at most
    ``MAX_FILE_BYTES`` are read."""
    name = os.fspath(path)
    where = f"{what} {name!r}" + (f" ({variable})" if variable else "")
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) |
                     getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise ConfigError(f"cannot read {where}: {getattr(e, 'strerror', None) or e}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"cannot read {where}: it is {_file_kind(mode)}, not a regular "
                              "file; write the JSON to a file and name that file")
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ConfigError(f"cannot read {where}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_FILE_BYTES >> 20} MiB: not a {what}")
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte {data[e.start:e.start + 1]!r} at "
                          f"offset {e.start}); save it as UTF-8 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {name!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply for a {what} (expected a list with "
                          "one list per rank)") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{where} cannot be parsed: {e}") from None


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def parse_hostfile(entries: object, *, source: str = "hostfile") -> list[list[Address]]:
    """Validate already-parsed hostfile JSON (a list per rank of "host:port" strings)."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: expected a non-empty JSON list with one entry per rank, "
                          f'e.g. [["127.0.0.1:5000"], ["127.0.0.1:5001"]]; '
                          f'got {short_repr(entries)}')
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
                          f"strings; got {short_repr(entry)}")
    return [_parse_address(i, a, source) for a in entry]


def _parse_address(i: int, text: object, source: str) -> Address:
    if isinstance(text, Address):
        return text
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"{source}: entry {i}: expected \"host:port\"; got {short_repr(text)}")
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    # isdigit() alone takes "²" and "٥", which int() refuses
    if not host or not (port.isascii() and port.isdigit() and len(port) <= 5) \
            or not 0 < int(port) < 65536:
        raise ConfigError(f"{source}: entry {i}: {short_repr(text)} is not \"host:port\" "
                          "with a port from 1 to 65535 (ASCII digits)")
    try:
        host.encode("idna")  # what getaddrinfo() will do with it, raising UnicodeError
    except UnicodeError:
        raise ConfigError(f"{source}: entry {i}: {short_repr(host)} is not a valid host name "
                          "(empty or over-long labels, or characters a host name cannot "
                          "have)") from None
    reason = unusable_ip(host)
    if reason:
        raise ConfigError(f"{source}: entry {i}: {short_repr(host)} is {reason}; give the "
                          "address of the host this rank runs on, one its peers can reach")
    return Address(host, int(port))


def unusable_ip(host: str) -> str | None:
    """Why the IP literal ``host`` can be no rank's address (None when it can, or is a name).

    A rank listens on its address and its peers connect to it: the unspecified address
    (0.0.0.0, ::) means "any" to a listener but nothing, or this machine, to a peer, and
    multicast and broadcast addresses take no TCP connection, so each would pass a check that
    a host owns it and fail only at the deadline."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    if ip.is_unspecified:
        return "the unspecified address (\"any\" to a listener, not an address to connect to)"
    if ip.is_multicast:
        return "a multicast address (TCP connects to one host)"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address (TCP connects to one host)"
    return None


def write_hostfile(path: str | os.PathLike, ranks: Sequence[Sequence[Address]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump([[str(a) for a in rank] for rank in ranks], f)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def short_repr(value: object) -> str:
    """A bounded repr: a deeply nested or huge value must not raise or flood the message."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
