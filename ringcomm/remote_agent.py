"""What runs on a remote host for one rank: checks, then the rank, stopped with its session.

``ringcomm-launch`` sends this file's source over ssh (``ringcomm.remote``), so a host needs
only a Python, not the same ringcomm.  It uses the standard library alone, reads everything
from its stdin (so no secret is ever on a command line), and speaks in JSON lines:

1. ``config`` (the first stdin line, with the source): checks that the directory, the program
   and the script exist, and that this host owns every ring IP, by binding its listening ports
   (free ones, or ``-p``'s); it holds those ports and prints ``MARKER {"ok": true, "ports"}``
   or ``MARKER {"ok": false, "error"}`` on stdout.
2. ``{"files", "env"}`` on stdin (the ring hostfile and the variables, once every host is
   ready): it writes the files to temporary files, releases the ports and starts the command
   in a session of its own, with stdout and stderr going straight back over ssh.
3. ``{"signal": N}`` lines send signal N to that session; the end of stdin (the launcher
   stopped, died, or its ssh connection closed) sends SIGTERM, then SIGKILL after the grace
   period.  When the command exits, whatever is left of its session is killed and the agent
   exits with the command's code (128 + N after signal N).
"""
import errno
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

MARKER = "@@ringcomm-agent@@"


def _say(report):
    sys.stdout.write(MARKER + " " + json.dumps(report) + "\n")
    sys.stdout.flush()


def _addresses():
    for argv in (["ip", "-o", "addr", "show"], ["ifconfig"]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        words = out.replace("addr:", "").split()
        found = [words[i + 1].split("/")[0].split("%")[0] for i, w in enumerate(words[:-1])
                 if w in ("inet", "inet6")]
        if found:
            return ", ".join(found)
    return "unknown (neither ip nor ifconfig ran)"


def _hold_ports(cfg):
    """Bind every listening address of this rank; a wrong IP fails here, at once."""
    held, ports, wanted = [], [], list(cfg.get("ports") or [])
    for ip in cfg["ips"]:
        for _ in range(cfg["connections"]):
            port = wanted[len(ports)] if wanted else 0
            s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except OSError as e:
                s.close()
                if e.errno == errno.EADDRNOTAVAIL:
                    raise RuntimeError(
                        "does not own the IP {} (its addresses: {}); list an address of this "
                        "host in --hosts or in the hostfile's \"ips\"".format(ip, _addresses()))
                if e.errno == errno.EADDRINUSE:
                    raise RuntimeError("port {} on {} is in use; pick other ports with -p, or "
                                       "leave -p out to use free ones".format(port, ip))
                raise RuntimeError("cannot listen on {}:{}: {}".format(ip, port, e))
            held.append(s)
            ports.append(s.getsockname()[1])
    for _ in range(cfg.get("extra_ports", 0)):
        s = socket.socket(socket.AF_INET6 if ":" in cfg["ips"][0] else socket.AF_INET)
        s.bind((cfg["ips"][0], 0))
        held.append(s)
        ports.append(s.getsockname()[1])
    return held, ports


def _check(cfg):
    """The directory, the program and the script; raise RuntimeError saying what to fix."""
    if cfg.get("cwd"):
        try:
            os.chdir(cfg["cwd"])
        except OSError as e:
            raise RuntimeError("cannot change to the directory {} ({}); create it there or fix "
                               "--cwd".format(cfg["cwd"], e.strerror))
    elif cfg.get("launcher_cwd"):
        try:  # as mlx.launch: the launcher's directory when it exists here, else the home
            os.chdir(cfg["launcher_cwd"])
        except OSError:
            pass
    program = cfg["command"][0]
    path = cfg["env"].get("PATH", os.environ.get("PATH", os.defpath))
    if os.sep in program:
        found = program if os.access(program, os.X_OK) else None
    else:
        found = shutil.which(program, path=path)
    if found is None:
        raise RuntimeError("no program {} here{}".format(
            program, "; give --python with the path of a Python on this host "
            "(ringcomm-launch --print-python prints the one used)"
            if program == cfg.get("python") else ""))
    script = cfg.get("script")
    if script and not os.path.isfile(script):
        raise RuntimeError("no script {} in {}; copy it there, or give --cwd with the "
                           "directory that has it".format(script, os.getcwd()))


def main(cfg):
    lines = queue.Queue()

    def read_stdin():
        for line in sys.stdin.buffer:
            try:
                lines.put(json.loads(line))
            except ValueError:
                pass
        lines.put(None)

    threading.Thread(target=read_stdin, daemon=True).start()
    try:
        _check(cfg)
        held, ports = _hold_ports(cfg)
    except RuntimeError as e:
        _say({"ok": False, "error": str(e)})
        return 2
    _say({"ok": True, "ports": ports})
    try:
        go = lines.get(timeout=cfg["go_seconds"])
    except queue.Empty:
        go = None
    for s in held:
        s.close()
    if go is None or "files" not in go:   # the launcher gave up (another host failed)
        return 0
    env, made = dict(os.environ), []
    env.update(cfg["env"])
    env.update(go.get("env", {}))
    for name, content in go.get("files", {}).items():
        fd, path = tempfile.mkstemp(prefix="ringcomm-" + name.lower() + "-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(content)
        made.append(path)
        env[name] = path
    try:
        child = subprocess.Popen(cfg["command"], env=env, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    except OSError as e:
        sys.stderr.write("cannot start {}: {}\n".format(cfg["command"][0], e))
        return 127

    def send(sig):
        if child.poll() is None:
            try:
                os.killpg(child.pid, sig)
            except OSError:
                pass

    def stop():                     # no more word from the launcher
        send(signal.SIGTERM)
        timer = threading.Timer(cfg["grace_seconds"], send, (signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def control():
        while True:
            msg = lines.get()
            if msg is None:
                return stop()
            if "signal" in msg:
                send(int(msg["signal"]))

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda n, _frame: send(n))
    threading.Thread(target=control, daemon=True).start()
    code = child.wait()
    try:                            # what the command left running in its session
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:
        pass
    for path in made:
        try:
            os.unlink(path)
        except OSError:
            pass
    return code if code >= 0 else 128 - code


def run(cfg):
    """``main``, then exit at once: the stdin reader may still hold stdin's lock, which a
    normal interpreter shutdown would wait for."""
    try:
        code = main(cfg)
    except BaseException as e:  # noqa: BLE001 - say it, over ssh, and exit non-zero
        sys.stderr.write("ringcomm agent: {}: {}\n".format(type(e).__name__, e))
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
