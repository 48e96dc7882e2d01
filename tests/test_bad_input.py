"""Bad input ends in a typed error saying what to fix, at once, never a hang or a bare
Python error (issue 15, item 8): settings, hostfiles and RDMA device files that cannot be
used, and a forged abort notice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import ringcomm
from ringcomm.launch import localhost_hostfile
from ringcomm.transports.hostfile import write_hostfile
from tests.procs import env
from tests.test_blame import notice, run_ring_with_rogue

# -- settings, end to end: two real ranks, each trying every bad value in turn ----------------

BAD_SETTINGS = [
    ("RINGCOMM_TIMEOUT", "inf"), ("RINGCOMM_TIMEOUT", "1e10"), ("RINGCOMM_TIMEOUT", "9.3e9"),
    ("RINGCOMM_TIMEOUT", "nan"), ("RINGCOMM_TIMEOUT", "-inf"),
    ("RINGCOMM_TCP_CONGESTION", "bogus"), ("RINGCOMM_SPIN_US", "abc"),
    ("RINGCOMM_TCP_WARMUP", "off"),
]

TRY_SETTINGS = textwrap.dedent("""
    import json, os, sys, time, ringcomm
    for name, value in json.loads(sys.argv[1]):
        saved = os.environ.get(name)
        os.environ[name] = value
        start = time.monotonic()
        try:
            ringcomm.init().close()
            result = {"type": None}
        except Exception as e:
            result = {"type": type(e).__name__, "config": isinstance(e, ringcomm.ConfigError),
                      "message": str(e)}
        result.update(name=name, value=value, seconds=time.monotonic() - start)
        print(json.dumps(result), flush=True)
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved
        if result["type"] is None:
            break  # a ring formed with a setting that cannot be used: stop here
    for value in ("inf", 1e10, float("nan")):  # the same through the argument
        try:
            ringcomm.init(timeout=value)
            print(json.dumps({"argument": str(value), "type": None}), flush=True)
        except Exception as e:
            print(json.dumps({"argument": str(value), "type": type(e).__name__,
                              "message": str(e)}), flush=True)
""")


def test_bad_settings_are_config_errors_on_both_ranks_at_once(tmp_path):
    hostfile = tmp_path / "hostfile.json"
    write_hostfile(hostfile, localhost_hostfile(2, 1))
    procs = [subprocess.Popen([sys.executable, "-c", TRY_SETTINGS, json.dumps(BAD_SETTINGS)],
                              env=env(MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for rank, (out, err) in enumerate(outs):
        results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        by_setting = [r for r in results if "name" in r]
        assert len(by_setting) == len(BAD_SETTINGS), (rank, out, err)
        for res in by_setting:
            assert res["type"] == "ConfigError" and res["config"], (rank, res)
            assert res["name"] in res["message"] and res["seconds"] < 2, (rank, res)
        arguments = [r for r in results if "argument" in r]
        assert [r["type"] for r in arguments] == ["ConfigError"] * 3, (rank, arguments, err)
        print(f"rank {rank}: slowest {max(r['seconds'] for r in by_setting) * 1e3:.1f} ms;",
              by_setting[0]["message"])


# -- hostfiles and device files that are not what they should be ------------------------------

def init_error(**kwargs) -> tuple[BaseException | None, float]:
    """What ``ringcomm.init(**kwargs)`` raises, and after how long; a hang fails the test."""
    got: list = []

    def run() -> None:
        start = time.monotonic()
        try:
            ringcomm.init(timeout=5, **kwargs).close()
            got.append((None, time.monotonic() - start))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            got.append((e, time.monotonic() - start))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), f"init({kwargs}) still blocked after 10 s"
    return got[0]


DEEP = "[" * 100_000 + "]" * 100_000
BAD_FILES = {  # name: (bytes of the file, what the ConfigError must say)
    "latin-1": ('[["h\xf6st:5000"]]'.encode("latin-1"), "is not UTF-8 text"),
    "utf-16": ('[["127.0.0.1:5000"]]'.encode("utf-16"), "is not UTF-8 text"),
    "deep": (DEEP.encode(), "nested too deeply"),
    "huge integer": (f"[[{'9' * 5000}]]".encode(), "cannot be parsed"),
}
BAD_ENTRIES = {  # name: (hostfile JSON, what the ConfigError must say)
    "superscript port": ([["127.0.0.1:\u00b2"], ["127.0.0.1:5001"]], "port from 1 to 65535"),
    "arabic-indic port": ([["127.0.0.1:\u0665\u0660\u0660\u0660"], ["127.0.0.1:5001"]],
                          "port from 1 to 65535"),
    "5000-digit port": ([["127.0.0.1:" + "9" * 5000], ["127.0.0.1:5001"]], "port from 1"),
    "empty label": ([["a..b:5000"], ["127.0.0.1:5001"]], "not a valid host name"),
    "over-long label": ([["x" * 300 + ":5000"], ["127.0.0.1:5001"]], "not a valid host name"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_hostfile_that_cannot_be_read_as_json_is_a_config_error(tmp_path, name):
    content, says = BAD_FILES[name]
    path = tmp_path / "hostfile.json"
    path.write_bytes(content)
    e, seconds = init_error(rank=0, hostfile=str(path))
    assert isinstance(e, ringcomm.ConfigError) and says in str(e) and str(path) in str(e), e
    assert seconds < 2, seconds


@pytest.mark.parametrize("name", BAD_ENTRIES)
def test_a_hostfile_entry_that_is_not_host_port_is_a_config_error(tmp_path, name):
    entries, says = BAD_ENTRIES[name]
    path = tmp_path / "hostfile.json"
    path.write_text(json.dumps(entries))
    for hostfile in (str(path), entries):  # a file, or the parsed list
        e, _ = init_error(rank=0, hostfile=hostfile)
        assert isinstance(e, ringcomm.ConfigError) and says in str(e), e
        assert len(str(e)) < 400, str(e)


def test_a_deeply_nested_list_as_hostfile_argument_is_a_config_error():
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    e, _ = init_error(rank=0, hostfile=[nested, ["127.0.0.1:5001"]])
    assert isinstance(e, ringcomm.ConfigError) and "entry 0" in str(e), e


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "hostfile.fifo"
    os.mkfifo(path)
    yield path
    try:  # release a reader that a regression left blocked in open()
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_or_a_device_as_hostfile_is_refused_without_reading(fifo):
    for path, kind in ((fifo, "FIFO"), ("/dev/zero", "character device")):
        e, seconds = init_error(rank=0, hostfile=str(path))
        assert isinstance(e, ringcomm.ConfigError), (path, e)
        assert kind in str(e) and "not a regular file" in str(e) and str(path) in str(e), e
        assert seconds < 2, (path, seconds)


def test_a_bad_rdma_device_file_is_a_config_error(tmp_path, fifo):
    files = {name: (content, says) for name, (content, says) in BAD_FILES.items()
             if name != "huge integer"}
    for name, (content, says) in files.items():
        path = tmp_path / f"devices-{name}.json"
        path.write_bytes(content)
        files[name] = (path, says)
    files["fifo"] = (fifo, "FIFO (named pipe), not a regular file")
    files["/dev/zero"] = ("/dev/zero", "character device, not a regular file")
    for name, (path, says) in files.items():
        e, seconds = init_error(backend="rdma", rank=0, devices=str(path),
                                coordinator="127.0.0.1:1", verbs="emulated")
        assert isinstance(e, ringcomm.ConfigError), (name, e)
        assert says in str(e) and "RDMA device file" in str(e), (name, str(e))
        assert seconds < 2, (name, seconds)
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    e, _ = init_error(backend="rdma", rank=0, devices=[[None, nested], ["emulated0", None]],
                      coordinator="127.0.0.1:1", verbs="emulated")
    assert isinstance(e, ringcomm.ConfigError) and "entry [0][1]" in str(e), e


# -- a forged abort notice ----------------------------------------------------------------------

@pytest.mark.parametrize("origin,failed,kind", [(99, 3, 2), (3, 99, 0), (3, 3, 77)],
                         ids=["origin out of range", "blamed rank out of range", "unknown kind"])
def test_a_forged_notice_is_a_mismatch_naming_its_sender(origin, failed, kind):
    """Rank 3 passes the handshake and sends a notice no rank of this group could send:
    its neighbours raise MismatchError naming it (not IndexError), and pass that on."""
    errors = run_ring_with_rogue(notice(kind, origin, failed, "forged"))
    for r, e in errors.items():
        assert isinstance(e, ringcomm.MismatchError), (r, repr(e))
        assert e.peer == 3 and "rank 3 sent a control message that this group cannot take" \
            in str(e), (r, str(e))
