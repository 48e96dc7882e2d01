"""The bookkeeping of a posted send or receive that moves in pieces, head first."""
from __future__ import annotations

from ringcomm.transports.posted import Posted


def test_a_head_then_its_data_in_uneven_pieces():
    data = memoryview(bytearray(b"abcdefgh"))
    p = Posted(data, b"HEAD")
    assert bytes(p.view[p.pos:]) == b"HEAD" and p.next is data
    assert not p.advance(3)                    # inside the head
    assert bytes(p.view[p.pos:]) == b"D"
    assert not p.advance(3)                    # past the head: now in the data
    assert p.view is data and p.next is None and bytes(p.view[p.pos:]) == b"cdefgh"
    assert p.advance(6)


def test_a_piece_that_ends_exactly_at_the_head():
    p = Posted(memoryview(bytearray(5)), bytearray(4))
    assert not p.advance(4) and p.pos == 0 and len(p.view) == 5
    assert p.advance(5)


def test_a_head_with_empty_data_completes_with_the_head():
    p = Posted(memoryview(b""), b"HEAD")
    assert p.advance(4)


def test_data_alone():
    p = Posted(memoryview(bytearray(10)))
    assert p.next is None and not p.advance(9) and p.advance(1)
