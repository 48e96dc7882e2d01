"""Hostile launcher input through the real launcher (``python -m ringcomm.launch``), on this
machine: addresses no rank can have, environment entries no process can take, more ranks than
the launcher can hold open, ports past 65535, ssh names that ssh would read as options or that
a printed hint would run, a garbled agent report, and the agent's boot read bounded as a whole.
Each must end in exit 2 and one message, before any rank starts (no rank's marker file, no ssh
started), in well under a second of the launcher's own time.  (Through real ssh in the
namespace cluster: tests/test_multihost_input.py.)"""
from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
import time

import pytest

from ringcomm.remote import remote_command
from tests.procs import ROOT, env

# every rank that starts leaves a file: none may exist after a refused job
MARKER_SCRIPT = "import os, sys; open(sys.argv[1] + os.environ['MLX_RANK'], 'w').close()\n"

FAKE_SSH = """#!/bin/sh
# logs its arguments, then acts as FAKE_SSH says: a refused connection, or a garbled report
printf '%s\\n' "$@" >> "$SSH_LOG"; echo ---- >> "$SSH_LOG"
case "$FAKE_SSH" in
  garbled) echo '@@ringcomm-agent@@ [1]'; exec cat >/dev/null ;;
  *) echo "ssh: connect to host x port 22: Connection refused" >&2; exit 255 ;;
esac
"""


def launch(tmp_path, *args: str, limit: tuple[int, int] | None = None, fake_ssh: str = "refuse",
           timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """Run the launcher with a fake ssh first on PATH (logging to tmp_path/ssh.log); the
    result and the seconds it took."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "ssh").write_text(FAKE_SSH)
        (bin_dir / "ssh").chmod(stat.S_IRWXU)
    environ = env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                  SSH_LOG=str(tmp_path / "ssh.log"), FAKE_SSH=fake_ssh, RINGCOMM_TIMEOUT="5")

    def lower_limit() -> None:
        if limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ringcomm.launch", *args], env=environ,
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            preexec_fn=lower_limit)
    return result, time.monotonic() - start


def marker_job(tmp_path) -> list[str]:
    script = tmp_path / "marker.py"
    script.write_text(MARKER_SCRIPT)
    return [str(script), str(tmp_path / "started-")]


def assert_refused(tmp_path, result, seconds: float, *said: str) -> None:
    """Exit 2, one launcher message saying ``said``, no traceback, no rank, no ssh."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in said:
        assert text in result.stderr, (text, result.stderr)
    assert not list(tmp_path.glob("started-*")), "a rank started"
    log = tmp_path / "ssh.log"
    assert not log.exists() or not log.read_text(), f"ssh ran: {log.read_text()}"
    assert seconds < 5, seconds


def write_hostfile(tmp_path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("ip, said", [
    ("0.0.0.0", "0.0.0.0 is the unspecified address"), ("::", ":: is the unspecified address"),
    ("224.0.0.1", "224.0.0.1 is a multicast address"),
    ("255.255.255.255", "255.255.255.255 is the broadcast address"),
    ("::ffff:0.0.0.0", "::ffff:0.0.0.0 is the unspecified address"),
    ("10.0.0.1\0junk", "holds a space or control character")],
    ids=["any4", "any6", "multicast", "broadcast", "mapped-any", "nul"])
def test_an_address_no_rank_can_have_is_refused(tmp_path, ip, said):
    hostfile = write_hostfile(tmp_path, "hosts.json", [{"ssh": "localhost", "ips": [ip]},
                                                       {"ssh": "10.0.0.2", "ips": ["10.0.0.2"]}])
    result, seconds = launch(tmp_path, "--hostfile", hostfile, *marker_job(tmp_path))
    assert_refused(tmp_path, result, seconds, said, "host 0 (localhost)", 'in "ips"')
    print(f"\n{ip}: exit 2 after {seconds:.2f} s: {result.stderr.strip()}")


def test_init_refuses_such_an_address_in_a_hostfile_too(tmp_path):
    # the same check in parse_hostfile, which init() uses: a rank, not only the launcher
    path = write_hostfile(tmp_path, "ring.json", [["0.0.0.0:29811"], ["0.0.0.0:29812"]])
    code = ("import ringcomm\ntry:\n    ringcomm.init(rank=0, hostfile=%r, timeout=5)\n"
            "except ringcomm.ConfigError as e:\n    print('ConfigError', e)\n" % path)
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    seconds = time.monotonic() - start
    assert p.stdout.startswith("ConfigError") and "unspecified address" in p.stdout, (
        p.stdout, p.stderr[-2000:])
    print(f"\ninit(): {seconds:.2f} s (with start-up): {p.stdout.strip()}")


@pytest.mark.parametrize("item, said", [
    ("A\0B=1", "'A\\x00B=1': the name must be letters"),
    ("GOOD=1\0", "the value of GOOD holds a NUL byte"),
    ("=1", "'=1': the name must be letters"),
    ("A B=1", "'A B=1': the name must be letters"),
    ("BIG=" + "x" * 200_000, "BIG=... is longer than 131071 bytes")],
    ids=["nul-name", "nul-value", "empty-name", "space-name", "too-long"])
def test_an_env_entry_no_process_can_take_is_refused(tmp_path, item, said):
    for hosts in ([{"ssh": "localhost"}, {"ssh": "127.0.0.1"}],           # ranks here
                  [{"ssh": "10.0.0.1", "ips": ["10.0.0.1"]}]):            # ranks over ssh
        hostfile = write_hostfile(tmp_path, "hosts.json", {"envs": [item], "hosts": hosts})
        result, seconds = launch(tmp_path, "--hostfile", hostfile, *marker_job(tmp_path))
        assert_refused(tmp_path, result, seconds, said, '"envs" item 0')
    print(f"\n{item[:12]!r}: exit 2 after {seconds:.2f} s: {result.stderr.strip()[:200]}")


def test_more_ranks_than_the_launcher_can_hold_open_are_refused_at_once(tmp_path):
    # 25000 localhost entries: was "Too many open files" (a traceback) after 30 s
    hostfile = write_hostfile(tmp_path, "hosts.json", [{"ssh": "localhost"}] * 25000)
    result, seconds = launch(tmp_path, "--hostfile", hostfile, *marker_job(tmp_path),
                             limit=(4096, 4096))
    assert_refused(tmp_path, result, seconds, "25000 local ranks need about 50064 open files",
                   "may open 4096", "ulimit -n 50064")
    print(f"\n25000 entries: exit 2 after {seconds:.2f} s: {result.stderr.strip()}")
    # -n a billion, here and over ssh: refused before anything is built for them
    for where in ([], ["--hosts", "10.0.0.1,10.0.0.2"]):
        result, seconds = launch(tmp_path, *where, "-n", "1000000000", *marker_job(tmp_path),
                                 limit=(4096, 4096))
        assert_refused(tmp_path, result, seconds, "ranks need about")
        print(f"-n 10^9 {where}: exit 2 after {seconds:.2f} s")


def test_a_low_soft_limit_is_raised_to_what_the_job_needs(tmp_path):
    # soft 40 < the 70 files 3 ranks are counted to need <= hard 4096: raised, the job runs
    result, _ = launch(tmp_path, "-n", "3", *marker_job(tmp_path), limit=(40, 4096))
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("started-*"))) == 3


@pytest.mark.parametrize("args, said", [
    (["-n", "3", "-p", "65534"], "needs 3 consecutive ports from it, past 65535"),
    (["-n", "2", "-p", "70000"], "-p must be a port from 1 to 65535"),
    (["-n", "2", "-p", "-5"], "-p must be a port from 1 to 65535"),
    (["--hosts", "10.0.0.1", "--connect-timeout", "inf"], "--connect-timeout must be"),
    (["--hosts", "10.0.0.1", "--connect-timeout", "nan"], "--connect-timeout must be")],
    ids=["ports-past-65535", "port-70000", "port-negative", "timeout-inf", "timeout-nan"])
def test_ports_and_time_outs_out_of_range_are_refused(tmp_path, args, said):
    result, seconds = launch(tmp_path, *args, *marker_job(tmp_path))
    assert_refused(tmp_path, result, seconds, said)


@pytest.mark.parametrize("name, said", [
    ("-oProxyCommand=touch {mark}", 'begins with "-", which ssh would read as an option'),
    ("h1; touch {mark}", "holds ';'"), ("h1 h2", "holds ' '"), ("h1\nh2", "holds '\\n'"),
    ("$(touch {mark})", "holds '$'"), ("h1`touch {mark}`", "holds '`'")],
    ids=["option", "semicolon", "space", "newline", "dollar", "backquote"])
def test_an_ssh_name_ssh_or_a_shell_would_misread_is_refused(tmp_path, name, said):
    name = name.format(mark=tmp_path / "pwned")
    hostfile = write_hostfile(tmp_path, "hosts.json", [{"ssh": name, "ips": ["10.0.0.1"]}])
    for where in (["--hostfile", hostfile], ["--hosts", name]):
        if where[0] == "--hosts" and "\n" in name:
            continue
        result, seconds = launch(tmp_path, *where, *marker_job(tmp_path))
        assert_refused(tmp_path, result, seconds, said)
        assert "`ssh" not in result.stderr       # no command offered to copy
    assert not (tmp_path / "pwned").exists()
    print(f"\n{name!r}: exit 2 after {seconds:.2f} s: {result.stderr.strip()}")


def test_printed_ssh_hints_are_quoted_and_ssh_ends_its_options_before_the_host(tmp_path):
    # a user@host name with a character a shell would glob: the hint quotes it
    result, _ = launch(tmp_path, "--hostfile", write_hostfile(
        tmp_path, "hosts.json", [{"ssh": "me@[h1]", "ips": ["10.0.0.1"]}]), "job.py")
    assert result.returncode == 2, result.stderr
    assert "`ssh 'me@[h1]' true`" in result.stderr, result.stderr
    argv = (tmp_path / "ssh.log").read_text().split("----\n")[0].splitlines()
    assert argv[argv.index("me@[h1]") - 1] == "--", argv


def test_a_garbled_agent_report_fails_that_host_at_once(tmp_path):
    # was: AttributeError in a reader thread, then "no word from it" at the 21 s deadline
    result, seconds = launch(tmp_path, "--hosts", "10.0.0.1", "--connect-timeout", "1",
                             *marker_job(tmp_path), fake_ssh="garbled")
    assert result.returncode == 2, result.stderr
    assert "host 10.0.0.1: garbled start-up report" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "no rank was started" in result.stderr
    assert seconds < 8, seconds      # (the agent's session gets ABANDON_SECONDS to end)
    print(f"\ngarbled report: exit 2 after {seconds:.2f} s")


def test_the_agent_boot_read_is_bounded_as_a_whole(tmp_path):
    # the agent's first line, one byte every 0.2 s: SIGALRM ends it at 2 s, not per byte
    proc = subprocess.Popen(["sh", "-c", remote_command(sys.executable, 2)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    start = time.monotonic()
    try:
        for byte in b'{"agent": "' + b"x" * 40:
            if proc.poll() is not None:
                break
            proc.stdin.write(bytes([byte]))
            proc.stdin.flush()
            time.sleep(0.2)
        code = proc.wait(timeout=5)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        code = proc.wait(timeout=5)
    finally:
        proc.kill()
        proc.wait()
    seconds = time.monotonic() - start
    assert code == -14, code            # SIGALRM
    assert 1.5 < seconds < 3.5, seconds
    print(f"\nagent boot with a dribbling launcher: ended after {seconds:.2f} s")
