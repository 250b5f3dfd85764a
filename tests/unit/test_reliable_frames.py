"""Reliable-channel wire format: exact layouts, round trips, and rejection of garbage."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import BadFrame
from p2pd.reliable._frames import (
    FRAME_ACK,
    FRAME_CLOSE,
    FRAME_PING,
    FRAME_STREAM,
    MAX_STREAM_OFFSET,
    PACKET_HEADER,
    PING_FRAME,
    STREAM_HEADER,
    AckFrame,
    CloseFrame,
    PingFrame,
    StreamFrame,
    encode_ack,
    encode_close,
    parse_packet_untrusted,
)


def packet(pn: int, *frames: bytes) -> bytes:
    return PACKET_HEADER.pack(pn, len(frames)) + b"".join(frames)


def stream(offset: int, data: bytes) -> bytes:
    return STREAM_HEADER.pack(FRAME_STREAM, offset, len(data)) + data


def test_stream_packet_layout_is_pn_count_type_offset_length_data() -> None:
    raw = packet(7, stream(1000, b"abc"))
    assert raw == (
        (7).to_bytes(8, "little") + b"\x01" + b"\x02" + (1000).to_bytes(8, "little")
        + (3).to_bytes(2, "little") + b"abc"
    )  # fmt: skip
    pn, frames = parse_packet_untrusted(raw)
    assert pn == 7
    assert len(frames) == 1
    frame = frames[0]
    assert isinstance(frame, StreamFrame)
    assert frame.offset == 1000
    assert bytes(frame.data) == b"abc"


def test_ack_frame_layout_for_a_single_range() -> None:
    raw = encode_ack([(5, 9)], ack_delay=0.000123, max_data=4096)
    assert raw == struct.pack("<BQIQHB", FRAME_ACK, 9, 123, 4096, 4, 0)


def test_ack_ranges_round_trip_with_gaps() -> None:
    ranges = [(90, 100), (50, 80), (10, 10), (0, 8)]
    _, frames = parse_packet_untrusted(packet(1, encode_ack(ranges, 0.002, 77)))
    ack = frames[0]
    assert isinstance(ack, AckFrame)
    assert ack.ranges == ranges
    assert ack.ack_delay == pytest.approx(0.002)
    assert ack.max_data == 77


def test_ack_encoding_truncates_an_over_long_range_truthfully() -> None:
    _, frames = parse_packet_untrusted(packet(1, encode_ack([(10, 200_000), (0, 5)], 0, 0)))
    ack = frames[0]
    assert isinstance(ack, AckFrame)
    assert ack.ranges == [(200_000 - 0xFFFF, 200_000)]


def test_ack_encoding_carries_at_most_max_ack_ranges() -> None:
    ranges = [(1000 - 3 * i, 1000 - 3 * i) for i in range(100)]
    _, frames = parse_packet_untrusted(packet(1, encode_ack(ranges, 0, 0)))
    ack = frames[0]
    assert isinstance(ack, AckFrame)
    assert ack.ranges == ranges[:32]


def test_ping_and_close_frames_parse() -> None:
    _, frames = parse_packet_untrusted(packet(3, PING_FRAME, encode_close(12345)))
    assert frames == [PingFrame(), CloseFrame(12345)]
    assert bytes([FRAME_PING]) == PING_FRAME
    assert encode_close(1)[0] == FRAME_CLOSE


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        PACKET_HEADER.pack(1, 0),
        PACKET_HEADER.pack(1, 1),
        packet(1, b"\x00"),
        packet(1, b"\x7f"),
        packet(1, stream(0, b"")),
        packet(1, stream(MAX_STREAM_OFFSET, b"x")),
        packet(1, PING_FRAME) + b"\x00",
        packet(1, encode_close(MAX_STREAM_OFFSET + 1)),
        packet(1, struct.pack("<BQIQHB", FRAME_ACK, 3, 0, 0, 4, 0)),
        packet(1, struct.pack("<BQIQHBHH", FRAME_ACK, 9, 0, 0, 0, 1, 0, 0)),
        packet(1, struct.pack("<BQIQHBHH", FRAME_ACK, 9, 0, 0, 0, 1, 5, 5)),
    ],
    ids=[
        "empty", "no-frames", "missing-frame", "type-zero", "unknown-type", "empty-stream",
        "stream-past-2^62", "trailing-byte", "close-past-2^62", "ack-below-zero",
        "ack-gap-zero", "ack-range-below-zero",
    ],
)  # fmt: skip
def test_malformed_packets_raise_bad_frame(raw: bytes) -> None:
    with pytest.raises(BadFrame):
        parse_packet_untrusted(raw)


@given(
    pn=st.integers(0, 2**64 - 1),
    chunks=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4),
    with_ack=st.booleans(),
    cut=st.integers(1, 10_000),
)
def test_every_truncation_of_a_valid_packet_is_rejected(
    pn: int, chunks: list[bytes], with_ack: bool, cut: int
) -> None:
    frames = [stream(i * 100, chunk) for i, chunk in enumerate(chunks)]
    if with_ack:
        frames.insert(0, encode_ack([(5, 9), (0, 2)], 0.001, 1 << 20))
    raw = packet(pn, *frames)
    parse_packet_untrusted(raw)
    with pytest.raises(BadFrame):
        parse_packet_untrusted(raw[: len(raw) - 1 - cut % len(raw)])


@given(st.binary(max_size=300))
def test_random_bytes_parse_or_raise_only_bad_frame(raw: bytes) -> None:
    with contextlib.suppress(BadFrame):
        parse_packet_untrusted(raw)
