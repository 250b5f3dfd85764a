"""EarlyDrop: the order of the checks, what each verdict costs, and the cookie round trip."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import p2pd.cookie as cookie_module
from p2pd.cookie import HANDSHAKE_SIZES, CookieJar, stamp
from p2pd.earlydrop import TAG_OFFSETS, EarlyDrop, Verdict
from p2pd.ratelimit import PACKETS_BURSTABLE, SourceLimiter
from p2pd.tags import TAG_EPOCH_SECONDS, TagChecker, epoch_of, make_tag

TAG_KEY = b"\x10" * 32
MAC1_KEY = b"\x11" * 32
COOKIE_KEY = b"\x12" * 32
WALL = 1_700_000_000.0
SOURCE = ("198.51.100.4", 40000)
DROPS = {Verdict.DROP_SIZE, Verdict.DROP_TAG, Verdict.DROP_MAC1, Verdict.DROP_RATE}


def rng(n: int) -> bytes:
    return hashlib.blake2b(b"test rng", digest_size=64).digest()[:n]


def gate(under_load_per_second: int = 200) -> EarlyDrop:
    return EarlyDrop(
        TAG_KEY,
        MAC1_KEY,
        COOKIE_KEY,
        rng=rng,
        limiter=SourceLimiter(under_load_per_second=under_load_per_second),
    )


def unstamped(kind: int = 0x01, sender_index: int = 7, tag: bytes | None = None) -> bytes:
    size = HANDSHAKE_SIZES[kind]
    tag = TagChecker(TAG_KEY).current(WALL) if tag is None else tag
    head = bytes([kind, 0, 0, 0]) + sender_index.to_bytes(4, "little")
    head += b"\x00" * (TAG_OFFSETS[kind] - len(head))
    return head + tag + b"\x5a" * (size - len(head) - len(tag) - 32) + bytes(32)


def valid(kind: int = 0x01, sender_index: int = 7, tag: bytes | None = None) -> bytes:
    return stamp(unstamped(kind, sender_index, tag), MAC1_KEY, None)


def overload(drop: EarlyDrop, now: float) -> None:
    """Make ``drop`` under load with valid packets from other sources."""
    i = 0
    while not drop.limiter.under_load(now):
        drop.classify(valid(), (f"203.0.113.{i}", 1), WALL, now)
        i += 1


@pytest.mark.parametrize("kind", sorted(HANDSHAKE_SIZES))
def test_valid_handshake_packets_are_accepted(kind: int) -> None:
    assert gate().classify(valid(kind), SOURCE, WALL, 0.0) == (Verdict.ACCEPT, None)


def test_wrong_size_unknown_type_or_reserved_bytes_are_drop_size() -> None:
    drop = gate()
    packet = valid()
    for bad in (b"", packet[:-1], packet + b"\x00", b"\x04" + packet[1:], b"\x01\x01" + packet[2:]):
        assert drop.classify(bad, SOURCE, WALL, 0.0) == (Verdict.DROP_SIZE, None)


def test_stale_tag_is_drop_tag() -> None:
    stale = make_tag(TAG_KEY, epoch_of(WALL) - 2)
    assert gate().classify(valid(tag=stale), SOURCE, WALL, 0.0)[0] is Verdict.DROP_TAG


def test_tag_is_checked_against_wall_time_not_monotonic_time() -> None:
    drop = gate()
    assert drop.classify(valid(), SOURCE, WALL + 2 * TAG_EPOCH_SECONDS, 0.0)[0] is Verdict.DROP_TAG
    assert drop.classify(valid(), SOURCE, WALL, 1e9)[0] is Verdict.ACCEPT


def test_bad_tag_is_dropped_before_mac1_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = cookie_module.compute_mac1

    def spy(key: bytes, packet: bytes) -> bytes:
        calls.append(packet)
        return real(key, packet)

    monkeypatch.setattr(cookie_module, "compute_mac1", spy)
    drop = gate()
    assert drop.classify(valid(tag=b"\x00" * 16), SOURCE, WALL, 0.0)[0] is Verdict.DROP_TAG
    assert calls == []
    assert drop.classify(valid(), SOURCE, WALL, 0.0)[0] is Verdict.ACCEPT
    assert len(calls) == 1


def test_bad_mac1_is_drop_mac1() -> None:
    packet = bytearray(valid())
    packet[-20] ^= 1
    assert gate().classify(bytes(packet), SOURCE, WALL, 0.0)[0] is Verdict.DROP_MAC1


def test_mac1_of_another_passphrase_is_drop_mac1() -> None:
    packet = stamp(unstamped(), b"\x99" * 32, None)
    assert gate().classify(packet, SOURCE, WALL, 0.0)[0] is Verdict.DROP_MAC1


def test_source_over_its_burst_is_drop_rate_and_others_are_not() -> None:
    drop = gate()
    verdicts = [drop.classify(valid(), SOURCE, WALL, 0.0)[0] for _ in range(6)]
    assert verdicts == [Verdict.ACCEPT] * int(PACKETS_BURSTABLE) + [Verdict.DROP_RATE]
    assert drop.classify(valid(), ("198.51.100.5", 1), WALL, 0.0)[0] is Verdict.ACCEPT


def test_under_load_a_packet_without_mac2_gets_a_cookie_reply() -> None:
    drop = gate(under_load_per_second=3)
    overload(drop, 0.0)
    verdict, reply = drop.classify(valid(sender_index=0xCAFE), SOURCE, WALL, 0.0)
    assert verdict is Verdict.COOKIE
    assert reply is not None and len(reply) == 64
    assert reply[4:8] == (0xCAFE).to_bytes(4, "little")


def test_full_cookie_flow_under_load_ends_in_accept() -> None:
    drop = gate(under_load_per_second=3)
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    overload(drop, 0.0)
    first = jar.stamp(unstamped(sender_index=1), now=0.0)
    verdict, reply = drop.classify(first, SOURCE, WALL, 0.01)
    assert verdict is Verdict.COOKIE and reply is not None
    jar.consume_reply_untrusted(reply, now=0.02)
    second = jar.stamp(unstamped(sender_index=2), now=0.03)
    assert drop.limiter.under_load(0.04)
    assert drop.classify(second, SOURCE, WALL, 0.04) == (Verdict.ACCEPT, None)


def test_cookie_obtained_by_another_address_is_not_accepted_under_load() -> None:
    drop = gate(under_load_per_second=3)
    jar = CookieJar(MAC1_KEY, COOKIE_KEY)
    overload(drop, 0.0)
    _, reply = drop.classify(jar.stamp(unstamped(sender_index=1), 0.0), SOURCE, WALL, 0.0)
    assert reply is not None
    jar.consume_reply_untrusted(reply, 0.0)
    second = jar.stamp(unstamped(sender_index=2), 0.0)
    assert drop.classify(second, ("198.51.100.99", 1), WALL, 0.0)[0] is Verdict.COOKIE


def test_cookie_replies_are_rate_limited_per_source() -> None:
    drop = gate(under_load_per_second=3)
    overload(drop, 0.0)
    verdicts = [drop.classify(valid(), SOURCE, WALL, 0.0)[0] for _ in range(6)]
    assert verdicts == [Verdict.COOKIE] * int(PACKETS_BURSTABLE) + [Verdict.DROP_RATE]


def test_garbage_never_counts_towards_load() -> None:
    drop = gate(under_load_per_second=3)
    for i in range(100):
        drop.classify(valid(tag=b"\x01" * 16), (f"203.0.113.{i}", 1), WALL, 0.0)
    assert not drop.limiter.under_load(0.0)
    assert drop.classify(valid(), SOURCE, WALL, 0.0)[0] is Verdict.ACCEPT


def test_counters_record_every_verdict_by_name() -> None:
    drop = gate()
    drop.classify(b"x", SOURCE, WALL, 0.0)
    drop.classify(valid(tag=b"\x00" * 16), SOURCE, WALL, 0.0)
    drop.classify(valid(), SOURCE, WALL, 0.0)
    assert drop.counters == {"drop_size": 1, "drop_tag": 1, "accept": 1}


@given(st.binary(max_size=300))
def test_random_bytes_are_always_dropped_and_counted(data: bytes) -> None:
    drop = gate()
    verdict, reply = drop.classify(data, SOURCE, WALL, 0.0)
    assert verdict in DROPS and reply is None
    assert sum(drop.counters.values()) == 1


@given(st.sampled_from(sorted(HANDSHAKE_SIZES)), st.data())
def test_random_bytes_of_a_handshake_shape_are_dropped(kind: int, data: st.DataObject) -> None:
    body = data.draw(
        st.binary(min_size=HANDSHAKE_SIZES[kind] - 4, max_size=HANDSHAKE_SIZES[kind] - 4)
    )
    verdict, reply = gate().classify(bytes([kind, 0, 0, 0]) + body, SOURCE, WALL, 0.0)
    assert verdict is Verdict.DROP_TAG and reply is None
