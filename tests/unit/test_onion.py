"""The shared onion identity (known-answer vectors) and the tie-break rules."""

from __future__ import annotations

import base64
import hashlib

import nacl.bindings
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from stem.descriptor.hidden_service import HiddenServiceDescriptorV3

from p2pd.derive import params_from_master
from p2pd.errors import BadFrame, LocalError
from transports.onion import (
    ACCEPT,
    HELLO_SIZE,
    NONCE_SIZE,
    RETRY_MAX,
    SELF_WAIT,
    WITHDRAW_TIME,
    Action,
    OnionIdentity,
    Outcome,
    Peer,
    classify_hello,
    encode_hello,
    expand_seed,
    keep_outbound,
    onion_address,
    parse_hello_untrusted,
    plan_after,
)

# RFC 8032 section 7.1, TEST 1: secret seed and public key.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
# tor's src/test/test_hs_common.c (test_build_address): the address of that public key.
TOR_ADDRESS = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion"

seeds = st.binary(min_size=32, max_size=32)


def test_rfc8032_seed_gives_tor_test_address() -> None:
    identity = OnionIdentity.from_seed(RFC8032_SEED)
    assert identity.public_key == RFC8032_PUBLIC
    assert identity.address == TOR_ADDRESS
    assert identity.service_id == TOR_ADDRESS.removesuffix(".onion")


def test_address_of_tor_test_key() -> None:
    assert onion_address(RFC8032_PUBLIC) == TOR_ADDRESS


@given(seeds)
def test_public_key_is_pynacl_verify_key(seed: bytes) -> None:
    identity = OnionIdentity.from_seed(seed)
    assert identity.public_key == bytes(nacl.signing.SigningKey(seed).verify_key)


@given(seeds)
def test_address_matches_stem(seed: bytes) -> None:
    identity = OnionIdentity.from_seed(seed)
    assert identity.address == HiddenServiceDescriptorV3.address_from_identity_key(
        identity.public_key
    )
    assert HiddenServiceDescriptorV3.identity_key_from_address(identity.address) == (
        identity.public_key
    )


@given(seeds)
def test_expanded_key_scalar_gives_the_public_key(seed: bytes) -> None:
    """The clamped half of the expanded key is the scalar whose base-point multiple is the key."""
    expanded = expand_seed(seed)
    assert len(expanded) == 64
    scalar = expanded[:32]
    assert scalar[0] & 7 == 0 and scalar[31] & 0x80 == 0 and scalar[31] & 0x40
    assert nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(scalar) == bytes(
        nacl.signing.SigningKey(seed).verify_key
    )
    assert expanded[32:] == hashlib.sha512(seed).digest()[32:]


def test_key_blob_is_base64_of_expanded_key() -> None:
    identity = OnionIdentity.from_seed(RFC8032_SEED)
    assert base64.b64decode(identity.key_blob) == expand_seed(RFC8032_SEED)
    # Known answer (SHA-512 of the seed, first half clamped), computed outside this module.
    assert identity.key_blob == (
        "MHyDhk8oM8tCei7xwAoBPP3/J2jZgMCjpSDwBpBN6U+bTwr+KAt0aneGhOdUQlAgV7dHOgPwj5b1o46Sh+Afjw=="
    )


def test_secret_never_in_repr() -> None:
    identity = OnionIdentity.from_seed(RFC8032_SEED)
    text = repr(identity)
    assert identity.key_blob not in text
    assert expand_seed(RFC8032_SEED).hex() not in text
    assert "expanded_key" not in text


def test_both_peers_derive_the_same_identity() -> None:
    a = OnionIdentity.from_seed(params_from_master(bytes(32)).onion_seed)
    b = OnionIdentity.from_seed(params_from_master(bytes(32)).onion_seed)
    other = OnionIdentity.from_seed(params_from_master(bytes([1]) * 32).onion_seed)
    assert a == b
    assert a.address != other.address


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_wrong_seed_size_is_local_error(size: int) -> None:
    with pytest.raises(LocalError):
        OnionIdentity.from_seed(bytes(size))


# --- hello -------------------------------------------------------------------------------


def test_hello_round_trip() -> None:
    nonce = bytes(range(NONCE_SIZE))
    hello = encode_hello(nonce)
    assert len(hello) == HELLO_SIZE
    assert parse_hello_untrusted(hello) == nonce
    assert hello[: len(ACCEPT)] != ACCEPT


@given(st.binary(max_size=40))
def test_hello_parser_rejects_garbage(data: bytes) -> None:
    try:
        nonce = parse_hello_untrusted(data)
    except BadFrame:
        return
    assert encode_hello(nonce) == data


def test_hello_with_wrong_magic_is_bad_frame() -> None:
    with pytest.raises(BadFrame):
        parse_hello_untrusted(b"XXXX" + bytes(NONCE_SIZE))


# --- tie-break ---------------------------------------------------------------------------


def test_own_nonce_is_self_other_is_other() -> None:
    own = {b"a" * 16, b"b" * 16}
    assert classify_hello(b"a" * 16, own) is Peer.SELF
    assert classify_hello(b"c" * 16, own) is Peer.OTHER
    assert classify_hello(b"c" * 16, set()) is Peer.OTHER


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_both_peers_keep_the_same_stream(nonce_a: bytes, nonce_b: bytes) -> None:
    """A's outbound is B's inbound: exactly one of the two streams is kept, by both."""
    if nonce_a == nonce_b:
        with pytest.raises(LocalError):
            keep_outbound(nonce_a, nonce_b)
        return
    a_keeps_a_to_b = keep_outbound(nonce_a, nonce_b)
    b_keeps_b_to_a = keep_outbound(nonce_b, nonce_a)
    assert a_keeps_a_to_b != b_keeps_b_to_a


def test_reaching_the_other_is_done() -> None:
    assert plan_after(Outcome.OTHER, 0, 0, 0.5).action is Action.DONE


def test_first_self_waits_as_service_then_withdraws() -> None:
    first = plan_after(Outcome.SELF, 0, 1, 0.0)
    second = plan_after(Outcome.SELF, 0, 2, 0.0)
    assert first.action is Action.WAIT_AS_SERVICE and first.delay == SELF_WAIT
    assert second.action is Action.WITHDRAW and second.delay == WITHDRAW_TIME


def test_failures_back_off_exponentially_to_a_cap() -> None:
    delays = [plan_after(Outcome.FAILED, n, 0, 0.0).delay for n in range(1, 10)]
    assert delays == sorted(delays)
    assert delays[1] == 2 * delays[0]
    assert delays[-1] == RETRY_MAX
    assert all(plan_after(Outcome.FAILED, n, 0, 0.0).action is Action.RETRY for n in range(5))


@given(
    st.sampled_from(list(Outcome)),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.floats(0.0, 1.0),
)
def test_every_step_is_bounded(outcome: Outcome, failures: int, selfs: int, jitter: float) -> None:
    """No step lasts forever: bounded time, and DONE only when the other peer was reached."""
    plan = plan_after(outcome, failures, selfs, jitter)
    assert 0.0 <= plan.delay <= 2 * max(RETRY_MAX, SELF_WAIT, WITHDRAW_TIME)
    assert (plan.action is Action.DONE) == (outcome is Outcome.OTHER)


def test_jitter_separates_two_peers() -> None:
    low = plan_after(Outcome.SELF, 0, 2, 0.1).delay
    high = plan_after(Outcome.SELF, 0, 2, 0.9).delay
    assert high > low


def test_jitter_out_of_range_is_local_error() -> None:
    with pytest.raises(LocalError):
        plan_after(Outcome.FAILED, 1, 0, 1.5)
