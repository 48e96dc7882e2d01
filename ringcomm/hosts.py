"""The hosts of a multi-host job: ``--hosts`` and ``--hostfile`` in mlx.launch's formats.

``--hosts h1,h2`` names the machines to ssh to; ``--hostfile`` is either mlx.launch's list
``[{"ssh": "h1", "ips": ["10.0.0.1"]}, ...]`` or its object ``{"backend": ..., "envs": [...],
"hosts": [...]}`` (each host may carry ``"rdma"``, JACCL's devices per peer).  The ring needs
IP addresses: where a host gives none, its ssh name is resolved once, here (through ``ssh -G``,
so an alias of ``~/.ssh/config`` resolves to its ``HostName``), and each host later checks that
it owns its addresses (``ringcomm.remote_agent``).  A job is local (no ssh) when every address
is a loopback one, remote when none is; a mix is refused, because a loopback address cannot be
reached from another machine.  Everything is checked here, before any ssh: an ssh name that
ssh would read as an option or that holds whitespace or shell characters, an address no rank
can have (unspecified, multicast, broadcast), and an ``envs`` entry no process can take.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import subprocess
import unicodedata
from typing import Sequence

from .transports.errors import ConfigError
from .transports.hostfile import read_json, short_repr, unusable_ip

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
SSH_G_SECONDS = 10.0
SSH_NAME_MAX = 1000
# OpenSSH's own list of what a host name cannot hold (ssh_config expands %h into
# ProxyCommand and Match exec, run by a shell), and the shell's glob and history characters
SSH_NAME_FORBIDDEN = set("'\"`$\\;&<>|(){}*?!#~^")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ENV_BYTES = 128 * 1024 - 1   # Linux's MAX_ARG_STRLEN: a longer "NAME=VALUE" fails execve


@dataclasses.dataclass
class Host:
    """One rank's machine: the name to ssh to, the ring's IPs there, JACCL's RDMA devices."""

    ssh: str
    ips: list[str]
    rdma: list = dataclasses.field(default_factory=list)

    @property
    def local(self) -> bool:
        return all(is_loopback(ip) for ip in self.ips)


@dataclasses.dataclass
class HostSpec:
    """What ``--hosts`` or ``--hostfile`` says: the hosts, and a hostfile's backend and envs."""

    hosts: list[Host]
    backend: str = ""
    envs: list[str] = dataclasses.field(default_factory=list)
    source: str = "--hosts"

    @property
    def surely_local(self) -> bool:
        """Every host is this machine, before any name is resolved."""
        return all(h.local and (h.ips or h.ssh in LOCAL_NAMES) for h in self.hosts)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_loopback(ip: str) -> bool:
    return ip in LOCAL_NAMES or (is_ip(ip) and ipaddress.ip_address(ip).is_loopback)


def check_ssh_name(name: str, where: str) -> str:
    """``name`` if ssh can take it as one destination, else a ``ConfigError``: a leading "-"
    would be read as an option (``-oProxyCommand=...`` runs a command), and whitespace,
    control or shell characters are no host name or alias but could make a printed hint run
    something else."""
    bad = next((c for c in name if c.isspace() or c in SSH_NAME_FORBIDDEN
                or unicodedata.category(c).startswith("C")), None)
    if name.startswith("-"):
        problem = "begins with \"-\", which ssh would read as an option"
    elif bad is not None:
        problem = f"holds {bad!r}, which no host name or ssh alias has"
    elif len(name) > SSH_NAME_MAX:
        problem = f"is longer than {SSH_NAME_MAX} characters"
    else:
        return name
    raise ConfigError(f"{where} {short_repr(name)} {problem}; give the host's name, ssh alias "
                      "or IP (user@host also works)")


def check_env_pair(item: object, where: str) -> str:
    """``item`` if it is ``NAME=VALUE`` that every rank's environment can take (a portable
    name; no NUL, which execve cannot pass), else a ``ConfigError`` saying what to fix."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"{where}: expected \"NAME=VALUE\"; got {short_repr(item)}")
    name, value = item.split("=", 1)
    if not ENV_NAME.match(name):
        raise ConfigError(f"{where}: {short_repr(item)}: the name must be letters, digits and "
                          "_ (not starting with a digit)")
    if "\0" in value:
        raise ConfigError(f"{where}: the value of {name} holds a NUL byte, which no "
                          "environment variable can")
    if len(item.encode("utf-8", "surrogatepass")) > MAX_ENV_BYTES:
        raise ConfigError(f"{where}: {name}=... is longer than {MAX_ENV_BYTES} bytes, more "
                          "than the system passes to a program; put the value in a file")
    return item


def from_list(text: str) -> HostSpec:
    """``--hosts h1,h2,...``: one host per name (``-n`` repeats them later)."""
    names = [h.strip() for h in text.split(",")]
    if not names or any(not h for h in names):
        raise ConfigError(f"--hosts {text!r}: give host names or IPs separated by commas, "
                          "with none empty")
    for i, h in enumerate(names):
        check_ssh_name(h, f"--hosts: host {i}")
    return HostSpec([Host(h, [h] if is_ip(h) else []) for h in names])


def from_file(path: str) -> HostSpec:
    """``--hostfile``: either of mlx.launch's formats, every field checked."""
    data = read_json(path, "hostfile", "--hostfile")
    where = f"--hostfile {path!r}"
    backend, envs = "", []
    if isinstance(data, dict):
        unknown = set(data) - {"backend", "envs", "hosts"}
        if unknown or "hosts" not in data:
            raise ConfigError(f"{where}: an object needs \"hosts\" (and may have \"backend\" "
                              f"and \"envs\"); found keys {sorted(data)}")
        backend, envs, entries = data.get("backend") or "", data.get("envs") or [], data["hosts"]
        if not isinstance(backend, str):
            raise ConfigError(f"{where}: \"backend\" must be a string, not {backend!r}")
        if not isinstance(envs, list):
            raise ConfigError(f"{where}: \"envs\" must be a list of \"KEY=VALUE\" strings")
        for j, item in enumerate(envs):
            check_env_pair(item, f"{where}: \"envs\" item {j}")
    elif isinstance(data, list):
        entries = data
    else:
        raise ConfigError(f"{where}: expected a list of hosts or an object with \"hosts\"")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: \"hosts\" must be a non-empty list")
    hosts = []
    for i, h in enumerate(entries):
        if not isinstance(h, dict) or not isinstance(h.get("ssh"), str) or not h["ssh"]:
            raise ConfigError(f"{where}: host {i} must be an object with a non-empty \"ssh\" "
                              f"name, like {{\"ssh\": \"mac1\", \"ips\": [\"10.0.0.1\"]}}")
        check_ssh_name(h["ssh"], f"{where}: host {i}'s \"ssh\"")
        ips, rdma = h.get("ips") or [], h.get("rdma") or []
        if not isinstance(ips, list) or not all(isinstance(ip, str) and ip for ip in ips):
            raise ConfigError(f"{where}: host {i} ({h['ssh']}): \"ips\" must be a list of "
                              "IP addresses")
        for ip in ips:   # the resolver would read "10.0.0.1\0junk" as 10.0.0.1
            if any(c.isspace() or unicodedata.category(c).startswith("C") for c in ip):
                raise ConfigError(f"{where}: host {i} ({h['ssh']}): {short_repr(ip)} in "
                                  "\"ips\" holds a space or control character; give IP "
                                  "addresses")
        if not isinstance(rdma, list):
            raise ConfigError(f"{where}: host {i} ({h['ssh']}): \"rdma\" must be a list")
        hosts.append(Host(h["ssh"], list(ips), list(rdma)))
    return HostSpec(hosts, backend, list(envs), where)


def repeat(hosts: Sequence[Host], times: int) -> list[Host]:
    """Each host ``times`` times in a row (``-n``): ranks 0..times-1 on the first host."""
    return [dataclasses.replace(h, ips=list(h.ips)) for h in hosts for _ in range(times)]


def resolve(spec: HostSpec, ssh_argv: Sequence[str]) -> list[Host]:
    """Fill in every host's IPs (resolving names once, here) and refuse a job that mixes
    loopback addresses with remote ones."""
    cache: dict[str, str] = {}
    for i, h in enumerate(spec.hosts):
        if not h.ips:
            if h.ssh not in cache:
                cache[h.ssh] = _resolve_ssh_name(h.ssh, ssh_argv, spec.source)
            h.ips = [cache[h.ssh]]
        else:
            h.ips = [ip if is_ip(ip) else _resolve(ip, f"{spec.source}: {h.ssh}'s ip "
                                                       f"{short_repr(ip)}")
                     for ip in h.ips]
        for ip in h.ips:
            if reason := unusable_ip(ip):
                raise ConfigError(
                    f"{spec.source}: host {i} ({h.ssh}): {ip} is {reason}; list in \"ips\" "
                    "(or --hosts) an address of that host that the other hosts reach, e.g. "
                    "its Ethernet or Thunderbolt IP")
    local = [h for h in spec.hosts if h.local]
    if local and len(local) < len(spec.hosts):
        remote = next(h for h in spec.hosts if not h.local)
        bad = next(ip for ip in local[0].ips if is_loopback(ip))
        raise ConfigError(
            f"{spec.source}: {local[0].ssh} has the loopback address {bad}, which "
            f"{remote.ssh} ({remote.ips[0]}) cannot reach; name this machine by an address "
            "the other hosts reach (its Ethernet or Thunderbolt IP), or run every rank here")
    for h in spec.hosts:
        if not h.local and any(is_loopback(ip) for ip in h.ips):
            raise ConfigError(f"{spec.source}: {h.ssh} lists a loopback address among "
                              f"{h.ips}; give only addresses other hosts reach")
    return spec.hosts


def _resolve_ssh_name(name: str, ssh_argv: Sequence[str], source: str) -> str:
    if name in LOCAL_NAMES:
        return "127.0.0.1" if name == "localhost" else name
    target = name
    try:  # ssh -G prints the configuration ssh would use: an alias's HostName, no network
        out = subprocess.run([*ssh_argv, "-G", "--", name], capture_output=True, text=True,
                             timeout=SSH_G_SECONDS, stdin=subprocess.DEVNULL).stdout
        target = next((line.split(None, 1)[1].strip() for line in out.splitlines()
                       if line.lower().startswith("hostname ")), name)
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    if is_ip(target):
        return target
    via = f" (ssh's HostName {target!r})" if target != name else ""
    return _resolve(target, f"{source}: host {name!r}{via}")


def _resolve(name: str, what: str) -> str:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"{what}: cannot resolve it to an IP address here ({e}); give its "
                          "IP instead (the ring connects to IP addresses)") from None
    ips = [info[4][0] for info in infos]
    v4 = [ip for ip in ips if ":" not in ip]
    return (v4 or ips)[0]


def describe(host: Host) -> str:
    """``h1 (10.0.0.1)`` for messages."""
    ips = ",".join(host.ips)
    return host.ssh if ips == host.ssh else f"{host.ssh} ({ips})"
