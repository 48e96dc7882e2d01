"""Copying the ranks' output to the launcher's own, as it comes, with a ``[rank]`` prefix.

A rank's bytes are passed on as soon as they arrive, partial lines included, so a progress
bar drawn with ``\\r`` (tqdm, a hand-made one) moves under the launcher as it does without
it.  Every line a rank starts, and every ``\\r`` it sends, is followed by the rank's prefix,
so a bar that redraws itself keeps its ``[0]`` in front.

Lines of different ranks never share a line of ours: while one rank's line is unfinished
(its last byte was not a newline), another rank's output waits for it, at most
``HOLD_SECONDS`` (a ``print`` arrives as two writes, text then newline, microseconds apart);
past that the unfinished line is ended with a newline of ours and the other rank's output
follows on a line of its own (the first rank's next bytes start with its prefix again).
Where stdout and stderr are one file (a terminal), they are one line to keep whole.

With ``only`` (``--output-ranks``), other ranks' output is not shown; the last
``TAIL_BYTES`` of each is kept, and ``reveal`` prints it when that rank fails.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import IO, Collection

READ_BYTES = 1 << 16    # the most one read of a rank's pipe takes
HOLD_SECONDS = 0.2      # how long another rank's output waits for an unfinished line
TAIL_BYTES = 1 << 13    # kept of each hidden rank's output, shown when it fails
_SEPARATORS = re.compile(rb"(\r|\n)")


def _same_file(a: IO, b: IO) -> bool:
    """Whether two of our streams end in one file (a terminal, ``2>&1``)."""
    try:
        return os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


class Printer:
    """Passes ranks' output to our stdout and stderr; thread-safe (one pump per stream)."""

    def __init__(self, prefix: bool = True, only: Collection[int] | None = None) -> None:
        self._prefix, self._only = prefix, None if only is None else set(only)
        self._cond = threading.Condition()
        self._shared = _same_file(sys.stdout, sys.stderr)
        self._open: dict[bool, tuple[int, bool] | None] = {False: None, True: None}
        self._fresh: dict[tuple[int, bool], bool] = {}   # (rank, err): next byte starts a line
        self._tails: dict[int, bytearray] = {}
        self._ended: set[tuple[int, bool]] = set()   # whose unfinished line we ended

    def _key(self, err: bool) -> bool:
        return False if self._shared else err

    def shown(self, rank: int) -> bool:
        return self._only is None or rank in self._only

    def write(self, rank: int, data: bytes, err: bool) -> None:
        """Pass on ``data``, a piece of rank ``rank``'s stdout (or stderr)."""
        if not data:
            return
        with self._cond:
            if not self.shown(rank):
                tail = self._tails.setdefault(rank, bytearray())
                tail += data
                del tail[:-TAIL_BYTES]
                return
            key, me = self._key(err), (rank, err)
            give_up = time.monotonic() + HOLD_SECONDS
            while self._open[key] not in (None, me) and time.monotonic() < give_up:
                self._cond.wait(max(0.0, give_up - time.monotonic()))
            self._end_open_line(key, me)
            self._emit(me, data)
            self._cond.notify_all()

    def finish(self, rank: int, err: bool) -> None:
        """The rank's stream ended: end its unfinished line, if any."""
        with self._cond:
            if self._open[self._key(err)] == (rank, err):
                self._end_open_line(self._key(err), None)
                self._cond.notify_all()

    def reveal(self, rank: int) -> None:
        """Show a hidden rank's output from now on, first the tail kept of it."""
        with self._cond:
            if self.shown(rank):
                return
            self._only.add(rank)
            tail = bytes(self._tails.pop(rank, b""))
        if tail:
            self.write(rank, tail, True)
            self.finish(rank, True)

    def pump(self, rank: int, source: IO[bytes], err: bool) -> threading.Thread:
        """A thread copying ``source`` (a rank's pipe) as it comes, until its end."""
        def run() -> None:
            try:
                for data in iter(lambda: source.read1(READ_BYTES), b""):
                    self.write(rank, data, err)
            finally:
                self.finish(rank, err)
                source.close()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def _end_open_line(self, key: bool, me: tuple[int, bool] | None) -> None:
        owner = self._open[key]
        if owner is None or owner == me:
            return
        self._put(owner[1], b"\n")
        self._fresh[owner] = True
        self._ended.add(owner)
        self._open[key] = None

    def _emit(self, me: tuple[int, bool], data: bytes) -> None:
        prefix = f"[{me[0]}] ".encode() if self._prefix else b""
        if me in self._ended:           # our newline ended its line already
            self._ended.discard(me)
            data = data[1:] if data.startswith(b"\n") else data
            if not data:
                return
        fresh, out = self._fresh.get(me, True), bytearray()
        for part in _SEPARATORS.split(data):
            if part == b"\r":
                out += part
                fresh = True        # what follows redraws the line: prefix first
            elif part:
                if fresh:
                    out += prefix
                out += part
                fresh = part == b"\n"
        self._fresh[me] = fresh
        self._open[self._key(me[1])] = None if out.endswith(b"\n") else me
        self._put(me[1], bytes(out))

    @staticmethod
    def _put(err: bool, data: bytes) -> None:
        sink = sys.stderr if err else sys.stdout
        try:
            sink.buffer.write(data)
            sink.buffer.flush()
        except (OSError, ValueError):   # our terminal is gone: keep draining the rank
            pass
