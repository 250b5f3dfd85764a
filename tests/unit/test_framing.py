"""Stream framing: boundaries survive any split of the byte stream; garbage is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import BadFrame, LocalError
from transports.framing import MAX_DATAGRAM, FrameDecoder, encode_frame

datagrams = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


@given(datagrams, st.lists(st.integers(min_value=1, max_value=50), min_size=1))
def test_any_split_of_the_stream_gives_back_the_datagrams(
    items: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(item) for item in items)
    decoder = FrameDecoder()
    out: list[bytes] = []
    position, turn = 0, 0
    while position < len(stream):
        step = cuts[turn % len(cuts)]
        out += decoder.feed_untrusted(stream[position : position + step])
        position += step
        turn += 1
    assert out == items
    assert decoder.buffered == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    assert decoder.feed_untrusted(frame[:4]) == []
    assert decoder.buffered == 4
    assert decoder.feed_untrusted(frame[4:]) == [b"hello"]


def test_a_zero_length_frame_is_refused() -> None:
    with pytest.raises(BadFrame):
        FrameDecoder().feed_untrusted(b"\x00\x00rest")


@pytest.mark.parametrize("size", [0, MAX_DATAGRAM + 1])
def test_unframeable_datagrams_are_a_local_error(size: int) -> None:
    with pytest.raises(LocalError):
        encode_frame(bytes(size))


def test_the_largest_datagram_round_trips() -> None:
    data = bytes(MAX_DATAGRAM)
    assert FrameDecoder().feed_untrusted(encode_frame(data)) == [data]
