"""Behaviour of p2pd.noise beyond the vectors: XXpsk3 as p2pd uses it, and misuse."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import BadFrame, LocalError
from p2pd.noise import (
    PROTOCOL_NAME,
    CipherState,
    HandshakeState,
    NoiseError,
    generate_keypair,
    keypair_from_private,
)

PSK = bytes(range(32))
PROLOGUE = b"p2pd test prologue"
XX_MESSAGES = 3


def _pair(
    *, init_psk: bytes = PSK, resp_psk: bytes = PSK, seed: int = 1
) -> tuple[HandshakeState, HandshakeState, bytes, bytes]:
    init_priv = bytes([seed]) * 32
    resp_priv = bytes([seed + 1]) * 32
    # Deterministic ephemerals, so that a replayed handshake repeats its bytes.
    init = HandshakeState(
        PROTOCOL_NAME,
        initiator=True,
        prologue=PROLOGUE,
        s=init_priv,
        psks=[init_psk],
        rng=lambda n: bytes([seed + 10]) * n,
    )
    resp = HandshakeState(
        PROTOCOL_NAME,
        initiator=False,
        prologue=PROLOGUE,
        s=resp_priv,
        psks=[resp_psk],
        rng=lambda n: bytes([seed + 11]) * n,
    )
    return init, resp, keypair_from_private(init_priv)[1], keypair_from_private(resp_priv)[1]


def _handshake_messages() -> list[bytes]:
    init, resp, _, _ = _pair()
    m1 = init.write_message(b"one")
    resp.read_message_untrusted(m1)
    m2 = resp.write_message(b"two")
    init.read_message_untrusted(m2)
    m3 = init.write_message(b"three")
    return [m1, m2, m3]


def _complete_pair() -> tuple[HandshakeState, HandshakeState]:
    init, resp, _, _ = _pair()
    resp.read_message_untrusted(init.write_message())
    init.read_message_untrusted(resp.write_message())
    resp.read_message_untrusted(init.write_message())
    return init, resp


def test_protocol_name_is_xxpsk3() -> None:
    assert PROTOCOL_NAME == "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"


def test_xxpsk3_round_trip_with_random_keys_carries_payloads_and_transport() -> None:
    init_priv, init_pub = generate_keypair()
    resp_priv, resp_pub = generate_keypair()
    psk = os.urandom(32)
    init = HandshakeState(PROTOCOL_NAME, initiator=True, s=init_priv, psks=[psk])
    resp = HandshakeState(PROTOCOL_NAME, initiator=False, s=resp_priv, psks=[psk])
    assert resp.read_message_untrusted(init.write_message(b"hello")) == b"hello"
    assert init.read_message_untrusted(resp.write_message(b"world")) == b"world"
    assert not init.complete
    assert resp.read_message_untrusted(init.write_message(b"!")) == b"!"
    assert init.complete and resp.complete
    assert init.handshake_hash == resp.handshake_hash
    assert init.remote_static == resp_pub
    assert resp.remote_static == init_pub
    i_send, i_recv = init.split()
    r_recv, r_send = resp.split()
    assert r_recv.decrypt_with_ad(b"ad", i_send.encrypt_with_ad(b"ad", b"up")) == b"up"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"down")) == b"down"


def test_remote_static_is_unknown_until_the_peer_sends_it() -> None:
    init, resp, init_pub, resp_pub = _pair()
    assert init.remote_static is None and resp.remote_static is None
    resp.read_message_untrusted(init.write_message())
    assert resp.remote_static is None
    init.read_message_untrusted(resp.write_message())
    assert init.remote_static == resp_pub
    resp.read_message_untrusted(init.write_message())
    assert resp.remote_static == init_pub


def test_generate_keypair_uses_injected_rng() -> None:
    assert generate_keypair(lambda n: b"\x07" * n) == keypair_from_private(b"\x07" * 32)


def test_wrong_psk_fails_the_third_message_with_a_bare_noise_error() -> None:
    init, resp, _, _ = _pair(resp_psk=bytes(32))
    resp.read_message_untrusted(init.write_message())
    # psk3 is mixed only after the third message's tokens, so the second still decrypts.
    init.read_message_untrusted(resp.write_message())
    with pytest.raises(NoiseError) as info:
        resp.read_message_untrusted(init.write_message(b"secret"))
    assert isinstance(info.value, BadFrame)
    assert info.value.reason == "noise: handshake message rejected"
    assert "psk" not in str(info.value).lower()


def test_different_prologues_fail_the_first_message() -> None:
    # In psk mode the first payload is already encrypted with the transcript as AD.
    init = HandshakeState(PROTOCOL_NAME, initiator=True, s=bytes([1]) * 32, psks=[PSK])
    resp = HandshakeState(
        PROTOCOL_NAME, initiator=False, prologue=b"other", s=bytes([2]) * 32, psks=[PSK]
    )
    with pytest.raises(NoiseError):
        resp.read_message_untrusted(init.write_message())


@given(data=st.data())
def test_any_flipped_bit_in_any_handshake_message_is_rejected(data: st.DataObject) -> None:
    messages = _handshake_messages()
    which = data.draw(st.integers(0, XX_MESSAGES - 1), label="message")
    bit = data.draw(st.integers(0, len(messages[which]) * 8 - 1), label="bit")
    tampered = bytearray(messages[which])
    tampered[bit // 8] ^= 1 << (bit % 8)
    init, resp, _, _ = _pair()
    sequence = [(init, resp), (resp, init), (init, resp)]
    for i in range(which):
        writer, reader = sequence[i]
        assert writer.write_message(b"one two three".split()[i]) == messages[i]
        reader.read_message_untrusted(messages[i])
    writer, reader = sequence[which]
    writer.write_message(b"one two three".split()[which])
    with pytest.raises(NoiseError):
        reader.read_message_untrusted(bytes(tampered))


@pytest.mark.parametrize("cut", [0, 1, 31, 33])
def test_truncated_first_message_is_rejected(cut: int) -> None:
    init, resp, _, _ = _pair()
    with pytest.raises(NoiseError):
        resp.read_message_untrusted(init.write_message()[:cut])


def test_a_failed_read_leaves_the_state_unusable() -> None:
    init, resp, _, _ = _pair()
    with pytest.raises(NoiseError):
        resp.read_message_untrusted(b"short")
    with pytest.raises(LocalError):
        resp.read_message_untrusted(init.write_message())
    assert not resp.complete


def test_small_order_ephemeral_is_rejected() -> None:
    _, resp, _, _ = _pair()
    # The all-zero point has small order: any X25519 with it yields zero (refused).
    with pytest.raises(NoiseError):
        resp.read_message_untrusted(bytes(32) + bytes(16))


def test_oversized_message_is_rejected() -> None:
    _, resp, _, _ = _pair()
    with pytest.raises(NoiseError):
        resp.read_message_untrusted(bytes(65536))


def test_oversized_payload_is_local_error_and_leaves_state_usable() -> None:
    init, resp, _, _ = _pair()
    with pytest.raises(LocalError):
        init.write_message(bytes(65535))
    resp.read_message_untrusted(init.write_message(b"fine"))


def test_writing_out_of_turn_is_local_error() -> None:
    init, resp, _, _ = _pair()
    with pytest.raises(LocalError):
        resp.write_message()
    init.write_message()
    with pytest.raises(LocalError):
        init.write_message()


def test_reading_out_of_turn_is_local_error() -> None:
    init, _, _, _ = _pair()
    with pytest.raises(LocalError):
        init.read_message_untrusted(bytes(64))


def test_split_before_complete_is_local_error() -> None:
    init, _, _, _ = _pair()
    with pytest.raises(LocalError):
        init.split()
    with pytest.raises(LocalError):
        _ = init.handshake_hash


def test_split_twice_is_local_error() -> None:
    init, _ = _complete_pair()
    init.split()
    with pytest.raises(LocalError):
        init.split()


def test_writing_after_complete_is_local_error() -> None:
    init, resp = _complete_pair()
    with pytest.raises(LocalError):
        init.write_message()
    with pytest.raises(LocalError):
        resp.write_message()


@pytest.mark.parametrize(
    "name",
    [
        "Noise_QQ_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXfallback_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk9_25519_ChaChaPoly_BLAKE2b",
        "Noise_XX_448_ChaChaPoly_BLAKE2b",
        "Noise_XX_25519_AESGCM_BLAKE2b",
        "Noise_XX_25519_ChaChaPoly_SHA256",
        "Noise_XX_25519_ChaChaPoly",
        "Nois_XX_25519_ChaChaPoly_BLAKE2b",
    ],
)
def test_unsupported_protocol_name_is_local_error(name: str) -> None:
    with pytest.raises(LocalError):
        HandshakeState(name, initiator=True, s=bytes(32), psks=[PSK])


def test_unsupported_dh_error_names_the_dh() -> None:
    with pytest.raises(LocalError, match="448"):
        HandshakeState("Noise_XX_448_ChaChaPoly_BLAKE2b", initiator=True)


def test_missing_static_key_is_local_error() -> None:
    with pytest.raises(LocalError):
        HandshakeState(PROTOCOL_NAME, initiator=True, psks=[PSK])


def test_missing_remote_static_for_pre_message_is_local_error() -> None:
    with pytest.raises(LocalError):
        HandshakeState("Noise_NK_25519_ChaChaPoly_BLAKE2b", initiator=True)


@pytest.mark.parametrize("psks", [[], [PSK, PSK], [b"short"]])
def test_wrong_psks_are_local_error(psks: list[bytes]) -> None:
    with pytest.raises(LocalError):
        HandshakeState(PROTOCOL_NAME, initiator=True, s=bytes(32), psks=psks)


def test_wrong_key_length_is_local_error() -> None:
    with pytest.raises(LocalError):
        HandshakeState(PROTOCOL_NAME, initiator=True, s=bytes(31), psks=[PSK])
    with pytest.raises(LocalError):
        keypair_from_private(bytes(33))


def test_failed_decrypt_does_not_advance_the_nonce() -> None:
    sender, receiver = CipherState(bytes(32)), CipherState(bytes(32))
    good = sender.encrypt_with_ad(b"", b"x")
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"", good[:-1] + bytes([good[-1] ^ 1]))
    assert receiver.n == 0
    assert receiver.decrypt_with_ad(b"", good) == b"x"
    assert receiver.n == 1


def test_cipherstate_without_key_passes_through() -> None:
    cs = CipherState()
    assert cs.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cs.n == 0


def test_cipherstate_repr_hides_the_key() -> None:
    assert bytes(range(32)).hex() not in repr(CipherState(bytes(range(32))))


def test_read_accepts_a_memoryview_of_the_message() -> None:
    init, resp, _, _ = _pair()
    assert resp.read_message_untrusted(memoryview(init.write_message(b"mv"))) == b"mv"  # type: ignore[arg-type]
