"""Issue 29 item 1: every field of every rendezvous frame an outsider can send is checked by
type and range.  A real rank 0 (torchrun's variables) is sent malformed join frames by a plain
socket; a real joining rank talks to a fake rank 0 that sends malformed greetings and replies.
Nothing but a RingcommError may leave init(), and rank 0 keeps serving the real ranks."""
from __future__ import annotations

import json
import socket
import threading
import time

from ringcomm.ports import free_ports
from tests.rendezvous_helpers import (Launched, dial, read_frame, send_frame, started,
                                      torchrun_env)

HELLO = {"rank": 1, "size": 2, "port": 40000, "nonce": "0" * 32, "mac": ""}

# join frames, each refused by rank 0 (most passed its type checks, or crashed it, before)
BAD_HELLOS = [
    HELLO | {"mac": "\u00e9"},          # hmac.compare_digest raised TypeError on this
    HELLO | {"mac": 5},
    HELLO | {"mac": ["x"]},
    HELLO | {"host": ["x"]},            # "unhashable type" later
    HELLO | {"host": "not-an-ip"},
    HELLO | {"host": "0.0.0.0"},
    HELLO | {"rank": True},             # JSON true was taken as rank 1
    HELLO | {"rank": "1"},
    HELLO | {"rank": 1.0},
    HELLO | {"rank": 10 ** 30},
    HELLO | {"rank": -1},
    HELLO | {"rank": None},
    HELLO | {"size": True, "rank": 0},
    HELLO | {"size": 10 ** 30},
    HELLO | {"port": True},
    HELLO | {"port": 0},
    HELLO | {"port": 70000},
    HELLO | {"port": "5000"},
    HELLO | {"nonce": 5},
    HELLO | {"nonce": "\u00e9" * 32},
    HELLO | {"nonce": ["x"]},
    HELLO | {"evil": {"x": [1, 2]}},
    {k: v for k, v in HELLO.items() if k != "mac"},
    [1, 2, 3], "hello", 5, None,
    b"\xff\xfe not UTF-8",
    b"[" * 100000,                       # nested too deep (and longer than a frame)
    b'{"rank": ' + b"9" * 5000 + b"}",   # an int longer than Python converts
]


def test_malformed_join_frames_are_refused_and_rank_0_keeps_serving():
    port = free_ports(1)[0]
    rank0, rank1 = started(*(Launched(**torchrun_env(r, 2, port, RINGCOMM_TIMEOUT="30"))
                             for r in (0, 1)))
    answers = []
    try:
        rank0.go()
        started_at = time.monotonic()
        for frame in BAD_HELLOS:
            with dial("127.0.0.1", port) as outsider:
                greeting = read_frame(outsider)
                assert isinstance(greeting, dict) and "nonce" in greeting, greeting
                try:
                    send_frame(outsider, frame)
                    answers.append(read_frame(outsider))
                except OSError:  # dropped before it finished sending
                    answers.append(None)
            assert rank0.alive(), f"rank 0 died on {frame!r}: {rank0.result(5)}"
        print(f"{len(BAD_HELLOS)} malformed frames refused in "
              f"{time.monotonic() - started_at:.2f} s")
        rank1.go()
        got = [rank0.result(60), rank1.result(60)]
    finally:
        rank0.kill()
        rank1.kill()
    for frame, answer in zip(BAD_HELLOS, answers):  # refused: told why, or dropped
        assert answer is None or "refused" in answer.get("error", ""), (frame, answer)
    assert [g.get("sum") for g in got] == [3.0, 3.0], got


# a fake rank 0: greetings a joining rank must refuse (it retries until its deadline) ...
BAD_GREETINGS = [{"nonce": ["x"]}, {"nonce": "\u00e9" * 32}, {"nonce": 5}, [1], "x",
                 {"nonce": "ab"}, b"\xff\xfe", b"[" * 60000]
# ... and, after a good greeting, replies it must refuse (the last, with a MAC that is not
# rank 0's, ends the rendezvous: hmac.compare_digest raised TypeError on it)
BAD_REPLIES = [
    {"hostfile": 5, "job_id": {}, "mac": ""},
    {"hostfile": [[1], [2]], "job_id": "j", "mac": ""},
    {"hostfile": [["127.0.0.1:1"], ["127.0.0.1:2"]], "job_id": ["x"], "mac": ""},
    {"hostfile": [["127.0.0.1:1"]], "job_id": "j", "mac": ""},
    [None], 7,
    {"hostfile": [["127.0.0.1:1"], ["127.0.0.1:2"]], "job_id": "j", "mac": "\u00e9"},
]


class FakeRankZero(threading.Thread):
    """Answers connection i with ``script[i]`` (the last one again after the end): a greeting,
    or ``(None, reply)`` for a good greeting and then ``reply`` once the join frame came."""

    def __init__(self, port: int, script: list) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.2)
        self.script, self.served, self.stop = script, 0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                greeting, reply = self.script[min(self.served, len(self.script) - 1)]
                self.served += 1
                try:
                    send_frame(conn, greeting if greeting is not None else {"nonce": "a" * 32})
                    if reply is not None:
                        read_frame(conn, 5)
                        send_frame(conn, reply)
                    read_frame(conn, 1)  # (until the rank hangs up)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.server.close()


def test_a_fake_rank_0_with_malformed_frames_gets_only_a_ringcomm_error():
    port = free_ports(1)[0]
    script = [(g, None) for g in BAD_GREETINGS] + [(None, r) for r in BAD_REPLIES]
    fake = FakeRankZero(port, script)
    rank1 = started(Launched(**torchrun_env(1, 2, port, RINGCOMM_TIMEOUT="4")))[0]
    try:
        rank1.go()
        got = rank1.result(30)
    finally:
        rank1.kill()
        fake.close()
    print(f"{fake.served} connections; rank 1: {got}")
    assert got.get("error") == "CommError" and "did not prove the token" in got["message"], got
    assert "Traceback" not in got["stderr"], got["stderr"]
    assert fake.served == len(script), fake.served  # every malformed frame was tried
    assert got["after"] < 3, got


def test_a_malformed_refusal_from_a_fake_rank_0_is_a_ringcomm_error():
    """An "error" reply is final (rank 0 refused us): with fields of the wrong types it
    still ends in a CommError naming rank 0, at once."""
    port = free_ports(1)[0]
    fake = FakeRankZero(port, [(None, {"error": ["x"], "missing": True, "claimed": 10 ** 30})])
    rank1 = started(Launched(**torchrun_env(1, 2, port, RINGCOMM_TIMEOUT="8")))[0]
    try:
        rank1.go()
        got = rank1.result(30)
    finally:
        rank1.kill()
        fake.close()
    print(json.dumps(got))
    assert got.get("error") == "CommError" and got["peer"] == 0, got
    assert got["after"] < 2, got
