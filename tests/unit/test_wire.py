"""Packet formats: every type round-trips and every malformed datagram is BadFrame."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd import wire
from p2pd.errors import BadFrame, LocalError

u32 = st.integers(0, wire.MAX_INDEX)
u64 = st.integers(0, wire.MAX_COUNTER)


def fixed(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


inits = st.builds(
    wire.HandshakeInit,
    u32,
    fixed(wire.TAG_SIZE),
    fixed(wire.NOISE_MSG1_SIZE),
    fixed(wire.MAC_SIZE),
    fixed(wire.MAC_SIZE),
)
resps = st.builds(
    wire.HandshakeResp,
    u32,
    u32,
    fixed(wire.TAG_SIZE),
    fixed(wire.NOISE_MSG2_SIZE),
    fixed(wire.MAC_SIZE),
    fixed(wire.MAC_SIZE),
)
finishes = st.builds(
    wire.HandshakeFinish,
    u32,
    u32,
    fixed(wire.TAG_SIZE),
    fixed(wire.NOISE_MSG3_SIZE),
    fixed(wire.MAC_SIZE),
    fixed(wire.MAC_SIZE),
)
datas = st.builds(wire.DataMessage, u32, u64, st.binary(min_size=wire.AEAD_TAG_SIZE, max_size=200))
cookies = st.builds(
    wire.CookieReply, u32, fixed(wire.COOKIE_NONCE_SIZE), fixed(wire.ENCRYPTED_COOKIE_SIZE)
)
messages = st.one_of(inits, resps, finishes, datas, cookies)
fixed_messages = st.one_of(inits, resps, finishes, cookies)
handshakes = st.one_of(inits, resps, finishes)


def test_sizes_match_the_protocol_table() -> None:
    assert wire.HANDSHAKE_INIT_SIZE == 88
    assert wire.HANDSHAKE_RESP_SIZE == 156
    assert wire.HANDSHAKE_FINISH_SIZE == 124
    assert wire.DATA_MIN_SIZE == 32
    assert wire.COOKIE_REPLY_SIZE == 64


@given(messages)
def test_every_message_round_trips(msg: wire.Message) -> None:
    encoded = msg.encode()
    assert wire.parse_untrusted(encoded) == msg
    assert wire.parse_untrusted(encoded).encode() == encoded


@given(fixed_messages)
def test_fixed_size_messages_encode_to_their_table_size(msg: wire.Message) -> None:
    encoded = msg.encode()
    assert len(encoded) == wire.FIXED_SIZES[encoded[0]]


def test_layout_of_a_handshake_init_is_as_documented() -> None:
    msg = wire.HandshakeInit(0x04030201, b"T" * 16, b"E" * 32, b"1" * 16, b"2" * 16)
    assert msg.encode() == (
        b"\x01\x00\x00\x00" + b"\x01\x02\x03\x04" + b"T" * 16 + b"E" * 32 + b"1" * 16 + b"2" * 16
    )


def test_layout_of_a_data_packet_is_header_then_ciphertext() -> None:
    msg = wire.DataMessage(7, 0x0102030405060708, b"C" * 20)
    encoded = msg.encode()
    assert encoded[:16] == b"\x04\x00\x00\x00" + (7).to_bytes(4, "little") + bytes(
        [8, 7, 6, 5, 4, 3, 2, 1]
    )
    assert msg.header() == encoded[: wire.DATA_HEADER_SIZE]
    assert encoded[16:] == b"C" * 20


@given(fixed_messages, st.data())
def test_every_truncation_of_a_fixed_size_message_is_bad_frame(
    msg: wire.Message, data: st.DataObject
) -> None:
    encoded = msg.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(BadFrame):
        wire.parse_untrusted(encoded[:cut])


@given(fixed_messages, st.binary(min_size=1, max_size=64))
def test_every_extension_of_a_fixed_size_message_is_bad_frame(
    msg: wire.Message, extra: bytes
) -> None:
    with pytest.raises(BadFrame):
        wire.parse_untrusted(msg.encode() + extra)


@given(datas, st.data())
def test_data_shorter_than_header_and_tag_is_bad_frame(
    msg: wire.DataMessage, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, wire.DATA_MIN_SIZE - 1))
    with pytest.raises(BadFrame):
        wire.parse_untrusted(msg.encode()[:cut])


@given(messages, st.integers(0, 255).filter(lambda t: t not in wire.KNOWN_TYPES))
def test_unknown_type_is_bad_frame(msg: wire.Message, kind: int) -> None:
    encoded = bytes([kind]) + msg.encode()[1:]
    with pytest.raises(BadFrame):
        wire.parse_untrusted(encoded)
    assert wire.peek_type(encoded) is None


@given(fixed_messages, st.sampled_from(sorted(wire.FIXED_SIZES)))
def test_a_fixed_size_message_under_another_type_byte_is_bad_frame(
    msg: wire.Message, kind: int
) -> None:
    encoded = msg.encode()
    if encoded[0] == kind:
        return
    with pytest.raises(BadFrame):
        wire.parse_untrusted(bytes([kind]) + encoded[1:])


@given(messages, st.integers(1, 3), st.integers(1, 255))
def test_nonzero_reserved_byte_is_bad_frame(msg: wire.Message, where: int, value: int) -> None:
    encoded = bytearray(msg.encode())
    encoded[where] = value
    with pytest.raises(BadFrame):
        wire.parse_untrusted(bytes(encoded))
    assert wire.peek_type(bytes(encoded)) is None


@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_bad_frame(data: bytes) -> None:
    try:
        msg = wire.parse_untrusted(data)
    except BadFrame:
        return
    assert msg.encode() == data


@given(st.sampled_from(sorted(wire.KNOWN_TYPES)), st.binary(max_size=200))
def test_random_bodies_under_each_known_type_only_raise_bad_frame(kind: int, body: bytes) -> None:
    data = bytes([kind]) + wire.RESERVED + body
    try:
        msg = wire.parse_untrusted(data)
    except BadFrame:
        return
    assert msg.encode() == data


@given(messages)
def test_peek_type_names_the_type_of_a_well_formed_packet(msg: wire.Message) -> None:
    encoded = msg.encode()
    assert wire.peek_type(encoded) == encoded[0]


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x00\x00"])
def test_peek_type_of_a_short_packet_is_none(data: bytes) -> None:
    assert wire.peek_type(data) is None


@given(handshakes)
def test_mac_regions_are_the_documented_slices(msg: wire.HandshakeMessage) -> None:
    encoded = msg.encode()
    assert wire.mac1_region(encoded) == encoded[:-32]
    assert wire.mac2_region(encoded) == encoded[:-16]
    assert wire.macs_of(encoded) == (msg.mac1, msg.mac2)


@given(handshakes, fixed(wire.MAC_SIZE), fixed(wire.MAC_SIZE))
def test_with_macs_fills_exactly_the_mac_fields(
    msg: wire.HandshakeMessage, mac1: bytes, mac2: bytes
) -> None:
    stamped = wire.with_macs(msg.encode(), mac1, mac2)
    assert wire.parse_untrusted(stamped) == dataclasses.replace(msg, mac1=mac1, mac2=mac2)


def test_with_macs_defaults_mac2_to_zero() -> None:
    packet = wire.HandshakeInit(1, bytes(16), bytes(32)).encode()
    assert wire.macs_of(wire.with_macs(packet, b"m" * 16)) == (b"m" * 16, wire.ZERO_MAC)


def test_mac_helpers_refuse_a_packet_too_short_for_macs() -> None:
    with pytest.raises(LocalError):
        wire.mac1_region(b"\x01\x00\x00\x00" + bytes(31))


@pytest.mark.parametrize(
    "build",
    [
        lambda: wire.HandshakeInit(2**32, bytes(16), bytes(32)),
        lambda: wire.HandshakeInit(-1, bytes(16), bytes(32)),
        lambda: wire.HandshakeInit(0, bytes(15), bytes(32)),
        lambda: wire.HandshakeResp(0, 0, bytes(16), bytes(95)),
        lambda: wire.HandshakeFinish(0, 0, bytes(16), bytes(64), mac1=bytes(17)),
        lambda: wire.DataMessage(0, 2**64, bytes(16)),
        lambda: wire.DataMessage(0, 0, bytes(15)),
        lambda: wire.CookieReply(0, bytes(23), bytes(32)),
    ],
)
def test_building_a_message_with_a_bad_field_is_a_local_error(build: object) -> None:
    assert callable(build)
    with pytest.raises(wire.BadField):
        build()
