"""The launcher on this machine: hostfile, environment, prefixed output, failures, signals
(SIGINT, SIGTERM, SIGHUP, `timeout`), host and hostfile errors found before any ssh."""
from __future__ import annotations

import os
import shutil
import signal as _signal
import subprocess
import sys
import time

import pytest

from tests.procs import ROOT, env, launch

ALLSUM = """
import numpy as np, ringcomm, sys
g = ringcomm.init(strict=True)
print("sum", ringcomm.all_sum(np.array([g.rank() + 1], np.int64))[0], "of", g.size())
print("args", sys.argv[1:])
"""


def test_runs_every_rank_with_prefixed_output(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(ALLSUM)
    result = launch("-n", "3", "--connections-per-ip", "2", str(script), "a", "b")
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert lines == sorted([f"[{r}] sum 6 of 3" for r in range(3)]
                           + [f"[{r}] args ['a', 'b']" for r in range(3)])


def test_command_after_double_dash_env_and_starting_port(tmp_path):
    from ringcomm.ports import free_ports
    port = free_ports(1)[0]
    result = launch("-n", "2", "-p", str(port), "--env", "GREETING=hi", "--",
                    sys.executable, "-c",
                    "import os; print(os.environ['GREETING'], os.environ['MLX_RANK'], "
                    "open(os.environ['MLX_HOSTFILE']).read())")
    assert result.returncode == 0, result.stderr
    assert f'[0] hi 0 [["127.0.0.1:{port}"], ["127.0.0.1:{port + 1}"]]' in result.stdout
    assert "[1] hi 1" in result.stdout


def test_a_failing_rank_stops_the_others_and_the_exit_code_says_so(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import os, sys, time\n"
                      "print('started', flush=True)\n"
                      "if os.environ['MLX_RANK'] == '2':\n"
                      "    print('bad input', file=sys.stderr); sys.exit(3)\n"
                      "time.sleep(60)\n")
    start = time.monotonic()
    result = launch("-n", "4", str(script))
    assert result.returncode == 3
    assert time.monotonic() - start < 30, "the sleeping ranks were not stopped"
    assert "[2] bad input" in result.stderr
    assert "rank 2 failed first (exit code 3)" in result.stderr


def test_a_rank_killed_by_a_signal_is_named_with_one_code(tmp_path):
    """The shell's 128 + N everywhere (never Python's -N): in the blame, the exit codes
    and the launcher's own exit code."""
    script = tmp_path / "job.py"
    script.write_text("import os, signal, time\n"
                      "if os.environ['MLX_RANK'] == '1':\n"
                      "    os.kill(os.getpid(), signal.SIGKILL)\n"
                      "time.sleep(60)\n")
    result = launch("-n", "2", str(script))
    assert result.returncode == 137, result.stderr
    assert "rank 1 failed first (exit code 137 (SIGKILL)) on host 127.0.0.1" in result.stderr
    assert "rank 1 on host 127.0.0.1: 137 (SIGKILL)" in result.stderr
    assert "-9" not in result.stderr, result.stderr


def test_usage_errors():
    assert launch("-n", "2").returncode == 2
    assert launch("-n", "0", "x.py").returncode == 2
    assert launch("-n", "2", "--env", "NOEQUALS", "x.py").returncode == 2


def test_examples_run_on_four_ranks():
    for example in ("examples/allsum.py", "examples/selfcheck.py", "examples/demo.py"):
        result = launch("-n", "4", example)
        assert result.returncode == 0, (example, result.stdout, result.stderr)
        assert len(result.stdout.splitlines()) == 4, result.stdout
    assert "all right" in launch("-n", "3", "--connections-per-ip", "2",
                                 "examples/selfcheck.py").stdout


# rank 1 sleeps outside any call, rank 3 ignores SIGINT (it learns of the Ctrl-C from a peer
# that got it), the others wait in all_sum for rank 1
CTRL_C = """
import signal, time
import numpy as np, ringcomm
g = ringcomm.init(strict=True)
ringcomm.barrier()
if g.rank() == 3:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print('ready', flush=True)
if g.rank() == 1:
    time.sleep(60)
ringcomm.all_sum(np.ones(4))
"""


def test_ctrl_c_is_nobody_s_failure_one_line_per_rank_and_exit_130(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(CTRL_C)
    # in a session of its own, as a shell's job: Ctrl-C goes to its whole process group
    launcher = subprocess.Popen([sys.executable, "-m", "ringcomm.launch", "-n", "4", str(script)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env(), start_new_session=True)
    for _ in range(4):
        assert "ready" in launcher.stdout.readline()
    time.sleep(0.3)
    start = time.monotonic()
    os.killpg(launcher.pid, _signal.SIGINT)
    out, err = launcher.communicate(timeout=30)
    seconds = time.monotonic() - start
    assert launcher.returncode == 130, err  # 128 + SIGINT, whatever the ranks' codes
    assert seconds < 10, "the sleeping rank was not interrupted"
    lines = err.splitlines()
    assert lines[0].startswith("ringcomm-launch: got SIGINT"), err
    # one line per rank, where it was in the script; no traceback, nobody blamed
    assert sorted(lines[1:]) == [f"[{r}] interrupted (Ctrl-C at ringcomm-launch) at job.py:"
                                 f"{10 if r == 1 else 11} in <module>" for r in range(4)], err
    print(f"\nCtrl-C: exit 130 after {seconds:.2f} s, {len(lines)} lines on stderr")


def test_a_missing_script_or_program_starts_no_rank(tmp_path):
    start = time.monotonic()
    result = launch("-n", "2", "nosuch.py")
    seconds = time.monotonic() - start
    assert result.returncode == 2 and result.stdout == "", result
    # one line, before any rank (a started rank would say "can't open file", and be blamed)
    assert result.stderr == ("ringcomm-launch: no script nosuch.py in "
                             f"{ROOT}; check its name, or give --cwd "
                             "with the directory that has it\n"), result.stderr
    result = launch("-n", "2", "--cwd", str(tmp_path), "examples/allsum.py")
    assert result.returncode == 2 and f"no script examples/allsum.py in {tmp_path}" in result.stderr
    result = launch("-n", "2", "no-such-program-here")
    assert result.returncode == 2 and "no program no-such-program-here here" in result.stderr
    result = launch("-n", "2", "--python", str(tmp_path / "python9"), "examples/allsum.py")
    assert result.returncode == 2 and "give --python with the path of a Python" in result.stderr
    print(f"\nnosuch.py: exit 2 after {seconds:.2f} s")


def test_backend_mpi_gets_the_mpirun_hint_and_version():
    for backend in ("mpi", "nccl"):
        result = launch("--backend", backend, "-n", "2", "examples/allsum.py")
        assert result.returncode == 2 and result.stdout == "", result
        assert "under mpirun, call ringcomm.init() in each rank" in result.stderr, result.stderr
        assert "invalid choice" not in result.stderr
    result = launch("--backend", "bogus", "-n", "2", "examples/allsum.py")
    assert result.returncode == 2 and "choose one of ring, tcp" in result.stderr
    from ringcomm import __version__
    result = launch("--version")
    assert result.returncode == 0 and result.stdout == f"ringcomm-launch (ringcomm {__version__})\n"


SLEEPER = """
import os, signal, time
if os.environ["MLX_RANK"] in os.environ.get("STUBBORN", "").split(","):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", os.getpid(), flush=True)
time.sleep(60)
"""


def _start_sleepers(tmp_path, *args: str, ranks: int = 2, prefix=()):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    launcher = subprocess.Popen([*prefix, sys.executable, "-m", "ringcomm.launch", "-n",
                                 str(ranks), *args, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env())
    pids = [int(launcher.stdout.readline().split()[-1]) for _ in range(ranks)]
    return launcher, pids


def _gone(pids, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code", [(_signal.SIGTERM, 143), (_signal.SIGHUP, 129)],
                         ids=["TERM", "HUP"])
def test_sigterm_and_sighup_stop_every_rank_and_set_the_exit_code(tmp_path, sig, code):
    # rank 1 ignores SIGTERM: it is killed once the grace period is over
    launcher, pids = _start_sleepers(tmp_path, "--env", "STUBBORN=1")
    sent = time.monotonic()
    launcher.send_signal(sig)
    out, err = launcher.communicate(timeout=30)
    seconds = time.monotonic() - sent
    assert launcher.returncode == code, err
    assert f"got {sig.name}" in err, err
    assert _gone(pids), f"ranks {pids} outlived the launcher"
    if sig == _signal.SIGTERM:
        assert seconds >= 5 and "rank 1 on host 127.0.0.1: 137 (SIGKILL)" in err, err
    print(f"\n{sig.name}: exit {launcher.returncode} after {seconds:.2f} s, no rank left")


def test_timeout_of_the_launcher_leaves_no_rank(tmp_path):
    if shutil.which("timeout") is None:
        pytest.skip("no timeout command")
    launcher, pids = _start_sleepers(tmp_path, prefix=["timeout", "2"])
    launcher.communicate(timeout=30)
    assert launcher.returncode == 124      # timeout's own code: it sent SIGTERM
    assert _gone(pids), f"ranks {pids} outlived `timeout 2 ringcomm-launch`"


def test_hosts_on_this_machine_and_print_python():
    result = launch("--hosts", "localhost,127.0.0.1", "-n", "2", "examples/allsum.py")
    assert result.returncode == 0, result.stderr
    assert sorted(line.split()[0] for line in result.stdout.splitlines()) == \
        ["[0]", "[1]", "[2]", "[3]"]
    assert launch("--print-python").stdout.strip() == sys.executable
    assert launch("--python", "/opt/py/bin/python3", "--print-python").stdout.strip() == \
        "/opt/py/bin/python3"


def test_host_errors_before_any_ssh(tmp_path):
    # a loopback address in a job with a remote host: refused, nothing started
    result = launch("--hosts", "127.0.0.1,10.77.0.99", "examples/allsum.py", timeout=30)
    assert result.returncode == 2 and "loopback address 127.0.0.1" in result.stderr
    assert "10.77.0.99" in result.stderr and result.stdout == ""
    result = launch("--hosts", "h1,,h2", "examples/allsum.py")
    assert result.returncode == 2 and "with none empty" in result.stderr
    result = launch("--hosts", "no-such-host.invalid", "examples/allsum.py", timeout=30)
    assert result.returncode == 2 and "cannot resolve it to an IP address" in result.stderr
    assert launch("--hosts", "a", "--hostfile", "b", "x.py").returncode == 2
    bad = {"not-a-list.json": '"h1"', "no-ssh.json": '[{"ips": ["10.0.0.1"]}]',
           "ips-not-list.json": '[{"ssh": "h1", "ips": "10.0.0.1"}]',
           "no-hosts.json": '{"backend": "ring"}', "mpi.json": '{"backend": "mpi", "hosts": '
           '[{"ssh": "127.0.0.1"}]}', "rdma-rows.json": '{"backend": "jaccl", "hosts": '
           '[{"ssh": "10.0.0.1", "ips": ["10.0.0.1"]}, {"ssh": "10.0.0.2", "ips": '
           '["10.0.0.2"]}]}'}
    said = {"not-a-list.json": "expected a list of hosts", "no-ssh.json": 'non-empty "ssh"',
            "ips-not-list.json": '"ips" must be a list', "no-hosts.json": 'needs "hosts"',
            "mpi.json": "under mpirun, call ringcomm.init()",
            "rdma-rows.json": 'needs "rdma": a list of 2 devices'}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        result = launch("--hostfile", str(tmp_path / name), "examples/allsum.py", timeout=30)
        assert result.returncode == 2 and said[name] in result.stderr, (name, result.stderr)
        assert str(tmp_path / name) in result.stderr or name == "mpi.json", result.stderr


def test_both_hostfile_formats_parse(tmp_path):
    from ringcomm import hosts
    (tmp_path / "list.json").write_text(
        '[{"ssh": "m1", "ips": ["10.0.0.1", "10.0.1.1"]}, {"ssh": "m2", "ips": ["10.0.0.2"]}]')
    (tmp_path / "object.json").write_text(
        '{"backend": "jaccl", "envs": ["A=1"], "hosts": [{"ssh": "m1", "ips": ["10.0.0.1"], '
        '"rdma": [null, "rdma_en2"]}, {"ssh": "m2", "ips": ["10.0.0.2"], '
        '"rdma": ["rdma_en2", null]}]}')
    listed = hosts.from_file(str(tmp_path / "list.json"))
    assert [(h.ssh, h.ips) for h in listed.hosts] == [("m1", ["10.0.0.1", "10.0.1.1"]),
                                                      ("m2", ["10.0.0.2"])]
    assert listed.backend == "" and listed.envs == []
    obj = hosts.from_file(str(tmp_path / "object.json"))
    assert obj.backend == "jaccl" and obj.envs == ["A=1"]
    assert [h.rdma for h in obj.hosts] == [[None, "rdma_en2"], ["rdma_en2", None]]
    assert [h.ssh for h in hosts.repeat(listed.hosts, 2)] == ["m1", "m1", "m2", "m2"]


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    """Ports below the range bind(0) draws from, so no connection takes one as its source
    port before a rank listens on it."""
    import socket

    from ringcomm.ports import _ephemeral_start, free_ports
    ports = free_ports(16)
    assert len(set(ports)) == 16
    low = _ephemeral_start()
    assert low, "this test needs /proc/sys/net/ipv4/ip_local_port_range"
    assert all(1024 <= p < low for p in ports), (ports, low)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
