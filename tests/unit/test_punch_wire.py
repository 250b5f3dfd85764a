"""PUNCH frame format: layout, MAC over the epoch, and the STUN demultiplexing invariant."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import BadFrame, LocalError
from p2pd.tags import TAG_EPOCH_SECONDS
from transports.punch_wire import (
    FRAME_SIZE,
    KIND_ACK,
    KIND_PROBE,
    NO_ECHO,
    PUNCH_CONTEXT,
    Frame,
    decode_untrusted,
    encode,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
WALL = 1_800_000_000.0
PROBE = Frame(KIND_PROBE, b"S" * 8, b"T" * 8, NO_ECHO)
ACK = Frame(KIND_ACK, b"s" * 8, b"t" * 8, b"T" * 8)
STUN_MAGIC = bytes.fromhex("2112a442")


def looks_like_stun(data: bytes) -> bool:
    """The node's STUN predicate from the WAN design, checked first on every datagram."""
    return (
        len(data) >= 20
        and len(data) % 4 == 0
        and data[0] & 0xC0 == 0
        and data[4:8] == STUN_MAGIC
        and 20 + int.from_bytes(data[2:4], "big") == len(data)
    )


def test_layout_is_type_kind_zeros_sender_txn_echo_mac() -> None:
    data = encode(KEY, ACK, WALL)
    assert len(data) == FRAME_SIZE == 44
    assert data[:4] == b"\x08\x02\x00\x00"
    assert data[4:28] == b"s" * 8 + b"t" * 8 + b"T" * 8
    epoch = int(WALL // TAG_EPOCH_SECONDS)
    mac_input = PUNCH_CONTEXT + data[:28] + epoch.to_bytes(8, "little")
    assert data[28:] == hashlib.blake2b(mac_input, key=KEY, digest_size=16).digest()


def test_round_trip() -> None:
    assert decode_untrusted(KEY, encode(KEY, PROBE, WALL), WALL) == PROBE
    assert decode_untrusted(KEY, encode(KEY, ACK, WALL), WALL) == ACK


@pytest.mark.parametrize("skew_epochs", [-1, 0, 1])
def test_neighbouring_epochs_verify(skew_epochs: int) -> None:
    data = encode(KEY, PROBE, WALL + skew_epochs * TAG_EPOCH_SECONDS)
    assert decode_untrusted(KEY, data, WALL) == PROBE


@pytest.mark.parametrize("skew_epochs", [-3, -2, 2, 3])
def test_stale_or_future_frames_fail_the_mac(skew_epochs: int) -> None:
    data = encode(KEY, PROBE, WALL + skew_epochs * TAG_EPOCH_SECONDS)
    with pytest.raises(BadFrame, match="mac"):
        decode_untrusted(KEY, data, WALL)


def test_wrong_key_fails_the_mac() -> None:
    with pytest.raises(BadFrame, match="mac"):
        decode_untrusted(OTHER_KEY, encode(KEY, PROBE, WALL), WALL)


@pytest.mark.parametrize("index", range(FRAME_SIZE))
def test_every_flipped_bit_is_rejected(index: int) -> None:
    data = bytearray(encode(KEY, PROBE, WALL))
    data[index] ^= 0x01
    with pytest.raises(BadFrame):
        decode_untrusted(KEY, bytes(data), WALL)


def test_a_probe_with_an_echo_is_rejected() -> None:
    data = encode(KEY, Frame(KIND_PROBE, b"S" * 8, b"T" * 8, b"E" * 8), WALL)
    with pytest.raises(BadFrame, match="echo"):
        decode_untrusted(KEY, data, WALL)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "size"), (b"\x08\x01\x00\x00" + bytes(39), "size"), (b"\x07" + bytes(43), "header")],
)
def test_size_and_header_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(BadFrame, match=reason):
        decode_untrusted(KEY, data, WALL)


def test_local_misuse_raises_local_error() -> None:
    with pytest.raises(LocalError):
        encode(b"short", PROBE, WALL)
    with pytest.raises(LocalError):
        encode(KEY, Frame(3, b"S" * 8, b"T" * 8, NO_ECHO), WALL)
    with pytest.raises(LocalError):
        encode(KEY, Frame(KIND_PROBE, b"S" * 7, b"T" * 8, NO_ECHO), WALL)


@given(
    kind=st.sampled_from([KIND_PROBE, KIND_ACK]),
    fields=st.binary(min_size=24, max_size=24),
    wall=st.floats(min_value=0, max_value=4e9),
)
def test_no_frame_is_ever_taken_for_stun(kind: int, fields: bytes, wall: float) -> None:
    echo = NO_ECHO if kind == KIND_PROBE else fields[16:]
    data = encode(KEY, Frame(kind, fields[:8], fields[8:16], echo), wall)
    assert len(data) != 20
    assert not looks_like_stun(data)


@given(data=st.binary(max_size=100))
def test_garbage_raises_only_bad_frame(data: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_untrusted(KEY, data, WALL)
