"""Hostile hostfiles through real ssh, on the network-namespace cluster of tests/netns.py
(issue 29 item 10): the launcher runs in h0 with a logging ``ssh`` first on PATH (it records
every ssh command line, then runs the cluster's ssh), so a test sees whether any ssh session
was started at all.  Addresses no rank can have, environment entries no process can take and
ssh names that ssh would read as an option or a shell would run must end in exit 2 and a
message before any ssh session starts; ssh ends its options with ``--`` before every host;
and the agent's boot read over ssh is bounded as a whole (item 3)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from ringcomm.remote import remote_command
from tests.netns import NetnsCluster, cluster_fixture
from tests.test_multihost import COLLECTIVES, IPS, assert_nothing_left, launcher, records, write

pytestmark = pytest.mark.timeout(120)
cluster3 = cluster_fixture(3)

LOGGING_SSH = """#!/bin/sh
printf '%s\\n' "$@" >> {log}; echo ---- >> {log}
exec {ssh} "$@"
"""


def run_logged(c: NetnsCluster, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess,
                                                                float, list[list[str]]]:
    """The launcher in h0 with ``args``; its result, seconds, and every ssh argv it ran."""
    bin_dir, log = tmp_path / "logbin", tmp_path / "ssh.log"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "ssh").write_text(LOGGING_SSH.format(log=log, ssh=c.ssh_wrapper))
        (bin_dir / "ssh").chmod(0o755)
    log.write_text("")
    env = c.env(RINGCOMM_TIMEOUT="3")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    start = time.monotonic()
    p = c.run("h0", launcher(c, *args), timeout=90, env=env)
    seconds = time.monotonic() - start
    sessions = [s.splitlines() for s in log.read_text().split("----\n") if s.strip()]
    return p, seconds, sessions


HOSTILE = {
    "unspecified-ip": ([{"ssh": "h1", "ips": ["0.0.0.0"]}, {"ssh": "h2", "ips": ["0.0.0.0"]}],
                       "0.0.0.0 is the unspecified address"),
    "multicast-ip": ([{"ssh": "h1", "ips": ["224.0.0.1"]}, {"ssh": "h2", "ips": [IPS[2]]}],
                     "224.0.0.1 is a multicast address"),
    "nul-in-env-name": ({"envs": ["A\0B=1"], "hosts": [{"ssh": "h1", "ips": [IPS[1]]},
                                                        {"ssh": "h2", "ips": [IPS[2]]}]},
                        '"envs" item 0'),
    "nul-in-env-value": ({"envs": ["A=1\0"], "hosts": [{"ssh": "h1", "ips": [IPS[1]]},
                                                        {"ssh": "h2", "ips": [IPS[2]]}]},
                         "the value of A holds a NUL byte"),
    "ssh-option": ([{"ssh": "-oProxyCommand=touch {mark}", "ips": [IPS[1]]},
                    {"ssh": "h2", "ips": [IPS[2]]}], 'begins with "-"'),
    "ssh-shell": ([{"ssh": "h1;touch {mark}", "ips": [IPS[1]]},
                   {"ssh": "h2", "ips": [IPS[2]]}], "holds ';'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_hostfile_starts_no_ssh_session(cluster3, tmp_path, case):
    data, said = HOSTILE[case]
    mark = tmp_path / "pwned"
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps(data).replace("{mark}", str(mark)))
    script = write(tmp_path, "collectives.py", COLLECTIVES)
    p, seconds, sessions = run_logged(cluster3, tmp_path, "--hostfile", str(hostfile), script)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr[-3000:])
    assert said in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stdout == "" and sessions == [], sessions          # no rank, no ssh at all
    assert "`ssh" not in p.stderr and not mark.exists()
    assert seconds < 5, seconds
    assert_nothing_left(cluster3, script)
    print(f"\n{case}: exit 2 after {seconds:.2f} s: {p.stderr.strip()[:300]}")


def test_ssh_ends_its_options_before_every_host(cluster3, tmp_path):
    script = write(tmp_path, "collectives.py", COLLECTIVES)
    p, _, sessions = run_logged(cluster3, tmp_path, "--hosts", "h1,h2", script)
    assert p.returncode == 0, p.stderr
    assert all(all(rec["ok"].values()) for rec in records(p.stdout).values()), p.stdout
    sessions = [s for s in sessions if "-G" not in s]           # ssh -G resolves the names
    assert len(sessions) == 2, sessions
    for argv, host in zip(sorted(sessions, key=lambda a: a[-2]), ("h1", "h2")):
        assert argv[-3:-1] == ["--", host], argv


def test_the_agent_boot_read_over_ssh_is_bounded_as_a_whole(cluster3):
    # the launcher's first line to the agent, one byte every 0.2 s: the agent on h1 ends at
    # its 2 s deadline (SIGALRM), and ssh with it; nothing is left on h1
    proc = cluster3.popen("h0", cluster3.ssh_argv("h1", remote_command(cluster3.python, 2)),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    start = time.monotonic()
    try:
        for byte in b'{"agent": "' + b"x" * 60:
            if proc.poll() is not None:
                break
            proc.stdin.write(bytes([byte]))
            proc.stdin.flush()
            time.sleep(0.2)
    except BrokenPipeError:
        pass
    finally:
        if proc.poll() is None:
            time.sleep(1)
        ended = proc.poll()
        proc.kill()
        proc.wait()
    seconds = time.monotonic() - start
    assert ended is not None and ended != 0, "the agent still waited for its first line"
    assert seconds < 2 + 4, seconds      # the deadline, plus ssh's log-in (.bashrc)
    assert_nothing_left(cluster3, "ringcomm-agent")
    print(f"\nagent boot over ssh, dribbled: ssh ended ({ended}) after {seconds:.2f} s")
