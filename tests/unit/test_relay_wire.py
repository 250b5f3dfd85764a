"""The relay wire format: documented layouts, round trips, and only BadFrame on bad bytes."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import BadFrame, LocalError
from transports import relay_wire as wire

TAG = bytes(range(16))
NONCE = bytes(range(100, 108))
COOKIE = bytes(range(200, 216))

ipv4 = st.ip_addresses(v=4).map(str)


def _not_mapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None


ipv6 = st.ip_addresses(v=6).filter(_not_mapped).map(str)
ports = st.integers(1, 0xFFFF)
addrs = st.tuples(ipv4 | ipv6, ports)
slots = st.integers(0, wire.MAX_SLOT)
tags = st.binary(min_size=16, max_size=16)
payloads = st.binary(min_size=wire.MIN_PAYLOAD, max_size=wire.MAX_PAYLOAD)

registers = st.builds(
    wire.Register, tags, st.binary(min_size=8, max_size=8), st.binary(min_size=16, max_size=16)
)
registereds = st.builds(
    wire.Registered,
    tags,
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=16, max_size=16),
    st.just(True),
    st.integers(0, wire.MAX_LIFETIME),
    addrs,
    st.lists(st.tuples(slots, addrs), max_size=wire.MAX_LISTED).map(tuple),
) | st.builds(
    wire.Registered,
    tags,
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=16, max_size=16),
    st.just(False),
    st.integers(0, wire.MAX_LIFETIME),
    addrs,
)
frames = (
    registers
    | registereds
    | st.builds(wire.Peer, tags, slots, addrs)
    | st.builds(wire.Send, slots, payloads)
    | st.builds(wire.Deliver, slots, payloads)
)


def test_register_has_the_documented_layout() -> None:
    data = wire.encode(wire.Register(TAG, NONCE, COOKIE))
    assert data == b"\x07\x01\x00\x00" + TAG + NONCE + COOKIE + bytes(24)
    assert len(data) == wire.REGISTER_SIZE == 68


def test_registered_has_the_documented_layout() -> None:
    frame = wire.Registered(
        TAG, NONCE, COOKIE, True, 60, ("192.0.2.1", 4000), ((7, ("2001:db8::1", 443)),)
    )
    assert wire.encode(frame) == (
        b"\x07\x02\x00\x00"
        + TAG
        + NONCE
        + COOKIE
        + b"\x01"
        + b"\x00\x3c"
        + b"\x04\x0f\xa0\xc0\x00\x02\x01"
        + b"\x01"
        + b"\x00\x00\x00\x07"
        + b"\x06\x01\xbb"
        + bytes.fromhex("20010db8000000000000000000000001")
    )


def test_peer_send_and_deliver_have_the_documented_layout() -> None:
    peer = wire.encode(wire.Peer(TAG, 0x01020304, ("198.51.100.7", 1)))
    assert peer == b"\x07\x03\x00\x00" + TAG + b"\x01\x02\x03\x04\x04\x00\x01\xc6\x33\x64\x07"
    body = bytes(range(32))
    assert wire.encode(wire.Send(5, body)) == b"\x07\x04\x00\x00\x00\x00\x00\x05" + body
    assert wire.encode(wire.Deliver(5, body)) == b"\x07\x05\x00\x00\x00\x00\x00\x05" + body


def test_an_unverified_answer_is_never_larger_than_the_register() -> None:
    for host in ("255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"):
        answer = wire.encode(wire.Registered(TAG, NONCE, COOKIE, False, 60, (host, 65535)))
        assert len(answer) <= wire.REGISTER_SIZE


def test_ipv4_mapped_addresses_are_encoded_as_ipv4() -> None:
    assert wire.encode_addr(("::ffff:192.0.2.1", 9)) == wire.encode_addr(("192.0.2.1", 9))


@given(frames)
def test_every_frame_round_trips(frame: wire.Frame) -> None:
    assert wire.parse_untrusted(wire.encode(frame)) == frame


@given(frames)
def test_no_frame_is_ever_20_bytes_and_every_one_has_the_relay_header(frame: wire.Frame) -> None:
    data = wire.encode(frame)
    assert len(data) != 20
    assert data[0] == wire.TYPE_RELAY and data[2:4] == b"\x00\x00"


@given(frames, st.data())
def test_mutated_frames_parse_or_raise_bad_frame_only(
    frame: wire.Frame, data: st.DataObject
) -> None:
    raw = bytearray(wire.encode(frame))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "extend", "op"]))
    if mutation == "flip":
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif mutation == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=40))
    else:
        raw[1] = data.draw(st.integers(0, 255))
    try:
        parsed = wire.parse_untrusted(bytes(raw))
    except BadFrame:
        return
    # Whatever parsed is a well-formed frame: it encodes back to the same bytes.
    assert wire.encode(parsed) == bytes(raw)


@given(st.binary(max_size=200))
def test_random_bytes_parse_or_raise_bad_frame_only(raw: bytes) -> None:
    with contextlib.suppress(BadFrame):
        wire.parse_untrusted(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not_relay"),
        (b"\x06\x01\x00\x00" + bytes(64), "not_relay"),
        (b"\x07\x01\x00\x01" + bytes(64), "bad_header"),
        (b"\x07\x09\x00\x00" + bytes(64), "bad_op"),
        (b"\x07\x01\x00\x00" + bytes(63), "bad_register_size"),
        (b"\x07\x01\x00\x00" + bytes(63) + b"\x01", "bad_padding"),
        (b"\x07\x03\x00\x00" + TAG + bytes(4) + b"\x05\x00\x01" + bytes(4), "bad_family"),
        (b"\x07\x03\x00\x00" + TAG + bytes(4) + b"\x04\x00\x00" + bytes(4), "bad_port"),
        (b"\x07\x03\x00\x00" + TAG + bytes(4) + b"\x04\x00\x01" + bytes(5), "trailing_bytes"),
        (
            b"\x07\x03\x00\x00"
            + TAG
            + bytes(4)
            + b"\x06\x00\x01"
            + bytes(10)
            + b"\xff\xff"
            + bytes(4),
            "mapped_addr",
        ),
        (b"\x07\x04\x00\x00" + bytes(4 + 31), "short_payload"),
        (b"\x07\x05\x00\x00" + bytes(4 + 1445), "long_payload"),
    ],
)
def test_malformed_frames_are_bad_frames_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadFrame) as caught:
        wire.parse_untrusted(raw)
    assert caught.value.reason == reason


def test_registered_rejects_peers_without_verification_and_too_many_peers() -> None:
    good = wire.encode(
        wire.Registered(TAG, NONCE, COOKIE, True, 60, ("192.0.2.1", 1), ((1, ("192.0.2.2", 2)),))
    )
    flags_at = 4 + 16 + 8 + 16
    unverified = good[:flags_at] + b"\x00" + good[flags_at + 1 :]
    with pytest.raises(BadFrame, match="unverified_with_peers"):
        wire.parse_untrusted(unverified)
    count_at = flags_at + 1 + 2 + 7
    too_many = good[:count_at] + bytes([wire.MAX_LISTED + 1]) + good[count_at + 1 :]
    with pytest.raises(BadFrame, match="too_many_peers"):
        wire.parse_untrusted(too_many)
    with pytest.raises(BadFrame, match="bad_flags"):
        wire.parse_untrusted(good[:flags_at] + b"\x03" + good[flags_at + 1 :])


@pytest.mark.parametrize(
    "frame",
    [
        wire.Register(TAG[:15], NONCE, COOKIE),
        wire.Send(1, bytes(31)),
        wire.Deliver(2**32, bytes(32)),
        wire.Peer(TAG, 1, ("example.org", 1)),
        wire.Peer(TAG, 1, ("192.0.2.1", 0)),
        wire.Registered(TAG, NONCE, COOKIE, True, 2**16, ("192.0.2.1", 1)),
    ],
)
def test_encoding_a_frame_that_does_not_fit_is_a_local_error(frame: wire.Frame) -> None:
    with pytest.raises(LocalError):
        wire.encode(frame)
