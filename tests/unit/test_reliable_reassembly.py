"""Receive-side stream: ordering, duplicates, flow control, and message framing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import BadFrame
from p2pd.reliable._config import MAX_MESSAGE_SIZE
from p2pd.reliable._reassembly import Reassembler

WINDOW = 1 << 20


def framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(m)) + m for m in messages)


def make() -> tuple[Reassembler, list[bytes]]:
    out: list[bytes] = []
    return Reassembler(WINDOW, out.append), out


def test_in_order_data_yields_messages() -> None:
    reassembler, out = make()
    reassembler.feed(0, memoryview(framed(b"hello", b"", b"world")))
    assert out == [b"hello", b"", b"world"]
    assert reassembler.rcv_next == 4 + 5 + 4 + 4 + 5


def test_length_prefix_split_across_frames_is_reassembled() -> None:
    reassembler, out = make()
    stream = framed(b"abcdef")
    for i in range(len(stream)):
        reassembler.feed(i, memoryview(stream)[i : i + 1])
    assert out == [b"abcdef"]


def test_out_of_order_data_waits_for_the_gap() -> None:
    reassembler, out = make()
    stream = memoryview(framed(b"x" * 10, b"y" * 10))
    reassembler.feed(14, stream[14:])
    assert out == []
    assert reassembler.pending_bytes == len(stream) - 14
    reassembler.feed(0, stream[:14])
    assert out == [b"x" * 10, b"y" * 10]
    assert reassembler.pending_bytes == 0


def test_duplicates_are_counted_and_ignored() -> None:
    reassembler, out = make()
    stream = memoryview(framed(b"abc", b"def"))
    reassembler.feed(7, stream[7:])
    reassembler.feed(7, stream[7:])
    reassembler.feed(0, stream[:7])
    reassembler.feed(0, stream[:7])
    assert out == [b"abc", b"def"]
    assert reassembler.duplicates == 2


def test_data_beyond_the_window_is_rejected() -> None:
    reassembler, _ = make()
    with pytest.raises(BadFrame):
        reassembler.check(WINDOW - 1, 2, None)
    assert reassembler.check(WINDOW - 2, 2, None) == 2


def test_data_beyond_the_final_offset_is_rejected() -> None:
    reassembler, _ = make()
    with pytest.raises(BadFrame):
        reassembler.check(10, 2, final_offset=11)


def test_close_may_not_move_the_final_offset_or_cut_received_data() -> None:
    reassembler, _ = make()
    reassembler.feed(20, memoryview(b"zz"))
    with pytest.raises(BadFrame):
        reassembler.check_final(21, stream_end=0)
    reassembler.final_offset = 30
    with pytest.raises(BadFrame):
        reassembler.check_final(31, stream_end=0)
    reassembler.check_final(30, stream_end=0)


def test_oversized_length_prefix_is_a_framing_violation() -> None:
    reassembler, _ = make()
    with pytest.raises(BadFrame):
        reassembler.feed(0, memoryview(struct.pack("<I", MAX_MESSAGE_SIZE + 1)))


def test_max_data_advances_with_in_order_data() -> None:
    reassembler, _ = make()
    reassembler.feed(0, memoryview(framed(b"q" * 100)))
    assert reassembler.max_data == 104 + WINDOW


@given(
    messages=st.lists(st.binary(max_size=50), max_size=10),
    cuts=st.lists(st.integers(1, 30), min_size=1, max_size=40),
    order=st.randoms(use_true_random=False),
    duplicates=st.integers(0, 5),
)
def test_any_arrival_order_of_any_fragmentation_yields_the_messages(
    messages: list[bytes], cuts: list[int], order: object, duplicates: int
) -> None:
    import random

    assert isinstance(order, random.Random)
    stream = framed(*messages)
    pieces = []
    pos = 0
    i = 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        pieces.append((pos, memoryview(stream)[pos : pos + size]))
        pos += size
        i += 1
    pieces += [order.choice(pieces) for _ in range(duplicates if pieces else 0)]
    order.shuffle(pieces)
    reassembler, out = make()
    for offset, data in pieces:
        reassembler.check(offset, len(data), None)
        reassembler.feed(offset, data)
    assert out == messages
    assert reassembler.rcv_next == len(stream)
