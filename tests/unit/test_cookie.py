"""mac1, mac2 and the cookie exchange between a responder and an initiator."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.cookie import (
    COOKIE_REPLY_SIZE,
    COOKIE_SECRET_LATENCY,
    COOKIE_SECRET_MAX_AGE,
    HANDSHAKE_SIZES,
    MAX_PENDING_MAC1,
    TYPE_COOKIE_REPLY,
    CookieChecker,
    CookieJar,
    compute_mac1,
    compute_mac2,
    source_bytes,
    stamp,
)
from p2pd.errors import BadFrame, LocalError

MAC1_KEY = b"\x01" * 32
COOKIE_KEY = b"\x02" * 32
SOURCE = ("192.0.2.7", 51820)


class CountingRng:
    """Deterministic rng: each call returns fresh, distinct bytes."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return hashlib.blake2b(self.calls.to_bytes(8, "little"), digest_size=64).digest()[:n]


def handshake(kind: int = 0x01, sender_index: int = 7, filler: int = 0xAB) -> bytes:
    """A handshake packet of the right size with zero mac slots."""
    size = HANDSHAKE_SIZES[kind]
    body = bytes([kind, 0, 0, 0]) + sender_index.to_bytes(4, "little")
    return body + bytes([filler]) * (size - len(body) - 32) + bytes(32)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def checker() -> CookieChecker:
    return CookieChecker(MAC1_KEY, COOKIE_KEY, rng=CountingRng())


# --- mac1 / mac2 ---------------------------------------------------------------------


def test_mac1_is_keyed_blake2b_of_packet_before_macs() -> None:
    packet = handshake()
    expected = hashlib.blake2b(packet[:-32], key=MAC1_KEY, digest_size=16).digest()
    assert compute_mac1(MAC1_KEY, packet) == expected


def test_mac2_is_keyed_blake2b_of_packet_before_mac2() -> None:
    cookie = b"\x09" * 16
    packet = stamp(handshake(), MAC1_KEY, None)
    expected = hashlib.blake2b(packet[:-16], key=cookie, digest_size=16).digest()
    assert compute_mac2(cookie, packet) == expected


@pytest.mark.parametrize("kind", sorted(HANDSHAKE_SIZES))
def test_stamped_packet_passes_mac1(kind: int) -> None:
    assert checker().check_mac1(stamp(handshake(kind), MAC1_KEY, None))


def test_stamp_without_cookie_leaves_mac2_zero() -> None:
    assert stamp(handshake(), MAC1_KEY, None)[-16:] == bytes(16)


def test_stamp_takes_packets_with_or_without_mac_slots() -> None:
    full = handshake()
    assert stamp(full, MAC1_KEY, None) == stamp(full[:-32], MAC1_KEY, None)
    assert stamp(full, MAC1_KEY, b"c" * 16) == stamp(full[:-32], MAC1_KEY, b"c" * 16)


def test_stamp_rejects_non_handshake_or_wrong_size() -> None:
    with pytest.raises(LocalError):
        stamp(b"\x04" + bytes(87), MAC1_KEY, None)
    with pytest.raises(LocalError):
        stamp(handshake()[:-1], MAC1_KEY, None)
    with pytest.raises(LocalError):
        stamp(b"", MAC1_KEY, None)


def test_mac1_with_another_key_fails() -> None:
    assert not checker().check_mac1(stamp(handshake(), b"\x03" * 32, None))


def test_too_short_packet_fails_mac_checks_without_raising() -> None:
    assert not checker().check_mac1(b"\x01" * 31)
    assert not checker().check_mac2(b"\x01" * 31, SOURCE, 0.0)


@given(st.integers(min_value=0, max_value=88 * 8 - 16 * 8 - 1))
def test_any_flipped_bit_before_mac2_breaks_mac1(bit: int) -> None:
    packet = stamp(handshake(), MAC1_KEY, None)
    assert not checker().check_mac1(flip(packet, bit))


@given(st.integers(min_value=0, max_value=88 * 8 - 1))
def test_any_flipped_bit_breaks_mac2(bit: int) -> None:
    responder = checker()
    cookie = responder.cookie_for(SOURCE, 0.0)
    packet = stamp(handshake(), MAC1_KEY, cookie)
    assert responder.check_mac2(packet, SOURCE, 0.0)
    assert not responder.check_mac2(flip(packet, bit), SOURCE, 0.0)


def test_keys_of_wrong_length_are_local_errors() -> None:
    with pytest.raises(LocalError):
        CookieChecker(b"short", COOKIE_KEY)
    with pytest.raises(LocalError):
        CookieJar(MAC1_KEY, b"short")


# --- cookies -----------------------------------------------------------------------


def test_source_bytes_are_packed_ip_and_big_endian_port() -> None:
    assert source_bytes(("192.0.2.7", 0x1234)) == bytes([192, 0, 2, 7, 0x12, 0x34])
    assert len(source_bytes(("2001:db8::1", 1))) == 18
    assert source_bytes(("::ffff:192.0.2.7", 0x1234)) == source_bytes(("192.0.2.7", 0x1234))
    with pytest.raises(LocalError):
        source_bytes(("not an ip", 1))
    with pytest.raises(LocalError):
        source_bytes(("192.0.2.7", 70000))


def test_cookie_from_one_source_does_not_validate_from_another() -> None:
    responder = checker()
    packet = stamp(handshake(), MAC1_KEY, responder.cookie_for(SOURCE, 0.0))
    assert responder.check_mac2(packet, SOURCE, 1.0)
    assert not responder.check_mac2(packet, ("192.0.2.8", SOURCE[1]), 1.0)
    assert not responder.check_mac2(packet, (SOURCE[0], SOURCE[1] + 1), 1.0)


def test_zero_mac2_never_validates() -> None:
    assert not checker().check_mac2(stamp(handshake(), MAC1_KEY, None), SOURCE, 0.0)


def test_secret_rotation_invalidates_old_cookies_after_max_age() -> None:
    responder = checker()
    packet = stamp(handshake(), MAC1_KEY, responder.cookie_for(SOURCE, 10.0))
    assert responder.check_mac2(packet, SOURCE, 10.0 + COOKIE_SECRET_MAX_AGE - 0.001)
    assert not responder.check_mac2(packet, SOURCE, 10.0 + COOKIE_SECRET_MAX_AGE)


def test_reply_layout_matches_protocol() -> None:
    packet = stamp(handshake(sender_index=0x01020304), MAC1_KEY, None)
    reply = checker().make_reply(packet, SOURCE, 0x01020304, 0.0)
    assert len(reply) == COOKIE_REPLY_SIZE == 64
    assert reply[:4] == bytes([TYPE_COOKIE_REPLY, 0, 0, 0])
    assert reply[4:8] == (0x01020304).to_bytes(4, "little")


def test_make_reply_rejects_index_out_of_range() -> None:
    with pytest.raises(LocalError):
        checker().make_reply(stamp(handshake(), MAC1_KEY, None), SOURCE, 2**32, 0.0)


def test_full_cookie_flow_gives_a_valid_mac2() -> None:
    responder = checker()
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    first = jar.stamp(handshake(sender_index=7), now=0.0)
    assert first[-16:] == bytes(16)
    reply = responder.make_reply(first, SOURCE, 7, now=0.0)
    jar.consume_reply_untrusted(reply, now=0.1)
    second = jar.stamp(handshake(sender_index=8), now=0.2)
    assert responder.check_mac1(second)
    assert responder.check_mac2(second, SOURCE, now=0.3)


def test_reply_for_another_mac1_is_bad_frame() -> None:
    responder = checker()
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    jar.stamp(handshake(sender_index=7, filler=1), now=0.0)
    other = stamp(handshake(sender_index=7, filler=2), MAC1_KEY, None)
    with pytest.raises(BadFrame):
        jar.consume_reply_untrusted(responder.make_reply(other, SOURCE, 7, 0.0), 0.0)
    assert jar.cookie(0.0) is None


def test_reply_for_unknown_index_is_bad_frame() -> None:
    responder = checker()
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    sent = jar.stamp(handshake(sender_index=7), now=0.0)
    with pytest.raises(BadFrame):
        jar.consume_reply_untrusted(responder.make_reply(sent, SOURCE, 8, 0.0), 0.0)


@given(st.integers(min_value=0, max_value=COOKIE_REPLY_SIZE * 8 - 1))
def test_tampered_reply_is_bad_frame(bit: int) -> None:
    responder = checker()
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    sent = jar.stamp(handshake(sender_index=7), now=0.0)
    reply = responder.make_reply(sent, SOURCE, 7, 0.0)
    with pytest.raises(BadFrame):
        jar.consume_reply_untrusted(flip(reply, bit), 0.0)
    jar.consume_reply_untrusted(reply, 0.0)  # the genuine reply still works afterwards
    assert jar.cookie(0.0) is not None


@given(st.binary(max_size=100))
def test_random_bytes_as_reply_are_bad_frame(data: bytes) -> None:
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    jar.stamp(handshake(sender_index=int.from_bytes(data[4:8].ljust(4, b"\0"), "little")), 0.0)
    with pytest.raises(BadFrame):
        jar.consume_reply_untrusted(data, 0.0)


def test_reply_with_another_cookie_key_is_bad_frame() -> None:
    responder = CookieChecker(MAC1_KEY, b"\x05" * 32)
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    sent = jar.stamp(handshake(sender_index=7), now=0.0)
    with pytest.raises(BadFrame):
        jar.consume_reply_untrusted(responder.make_reply(sent, SOURCE, 7, 0.0), 0.0)


def test_a_reply_is_accepted_only_once() -> None:
    responder = checker()
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    sent = jar.stamp(handshake(sender_index=7), now=0.0)
    reply = responder.make_reply(sent, SOURCE, 7, 0.0)
    jar.consume_reply_untrusted(reply, 0.0)
    with pytest.raises(BadFrame):
        jar.consume_reply_untrusted(reply, 0.0)


def test_jar_forgets_mac1s_beyond_its_bound() -> None:
    responder = checker()
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    first = jar.stamp(handshake(sender_index=0), now=0.0)
    for index in range(1, MAX_PENDING_MAC1 + 1):
        jar.stamp(handshake(sender_index=index), now=0.0)
    with pytest.raises(BadFrame):
        jar.consume_reply_untrusted(responder.make_reply(first, SOURCE, 0, 0.0), 0.0)


def test_jar_stops_using_a_cookie_before_the_secret_may_rotate() -> None:
    responder = checker()
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    sent = jar.stamp(handshake(), now=0.0)
    jar.consume_reply_untrusted(responder.make_reply(sent, SOURCE, 7, 0.0), now=100.0)
    lifetime = COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
    assert jar.cookie(100.0 + lifetime - 0.001) is not None
    assert jar.cookie(100.0 + lifetime) is None
    assert jar.stamp(handshake(), now=100.0 + lifetime)[-16:] == bytes(16)


def test_reply_nonce_comes_from_injected_rng() -> None:
    packet = stamp(handshake(), MAC1_KEY, None)
    a = CookieChecker(MAC1_KEY, COOKIE_KEY, rng=CountingRng()).make_reply(packet, SOURCE, 7, 0.0)
    b = CookieChecker(MAC1_KEY, COOKIE_KEY, rng=CountingRng()).make_reply(packet, SOURCE, 7, 0.0)
    assert a == b
