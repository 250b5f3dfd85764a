"""Offers: sealed, compact, expiring; every failure is one clear typed error."""

from __future__ import annotations

import base64

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from p2pd import offer
from p2pd.derive import params_from_master
from p2pd.errors import LocalError
from p2pd.offer import (
    CLOCK_SKEW,
    DEFAULT_TTL,
    MAX_CANDIDATES,
    MAX_RESUME,
    Offer,
    OfferAuthError,
    OfferError,
    OfferExpiredError,
    OfferMalformedError,
    OfferVersionError,
    make_offer,
    parse_offer_untrusted,
)
from p2pd.subkeys import offer_key
from p2pd.vaddr import VIRTUAL_NETWORK, tcp_addr
from transports.base import PATHS, Candidate

KEY = params_from_master(bytes(32)).tag_key
OTHER_KEY = params_from_master(bytes([1]) * 32).tag_key
NOW = 1_800_000_000.0
THREE_V4 = [
    Candidate(("203.0.113.7", 51820), "mapped", 5.0),
    Candidate(("198.51.100.9", 40001), "punched", 6.0),
    Candidate(("10.1.2.3", 51820), "lan", 7.0),
]


def _seal_raw(plaintext: bytes, *, ad: bytes = offer.ASSOCIATED_DATA) -> str:
    """An offer around arbitrary plaintext, to test what a buggy peer could send."""
    nonce = bytes(offer.NONCE_SIZE)
    sealed = nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, ad, nonce, offer_key(KEY)
    )
    return offer.PREFIX + base64.b32encode(sealed).decode().rstrip("=")


def test_an_offer_opens_with_the_same_passphrase() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW)
    opened = parse_offer_untrusted(text, KEY, now_wall=NOW)
    assert opened == Offer(
        candidates=tuple(Candidate(c.addr, c.path, 0.0) for c in THREE_V4),
        expires_at=NOW + DEFAULT_TTL,
        resume=None,
    )


def test_three_ipv4_candidates_fit_in_under_120_characters() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW)
    assert len(text) == 117


def test_the_text_uses_only_qr_alphanumeric_and_shell_safe_characters() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW, resume=b"t" * MAX_RESUME)
    assert text.startswith("P2PD1")
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" + "P2PD1")


def test_the_offer_never_contains_key_material() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW)
    raw = base64.b32decode(text[len(offer.PREFIX) :] + "=" * (-len(text[5:]) % 8))
    for secret in (KEY, offer_key(KEY)):
        assert secret not in raw
        assert secret[:8] not in raw


def test_two_offers_of_the_same_candidates_differ() -> None:
    assert make_offer(KEY, THREE_V4, now_wall=NOW) != make_offer(KEY, THREE_V4, now_wall=NOW)


def test_ipv6_and_every_path_round_trip() -> None:
    candidates = [
        Candidate((f"2001:db8::{rank + 1}", 1000 + rank), path, 0.0)
        for rank, path in enumerate(PATHS)
    ]
    opened = parse_offer_untrusted(make_offer(KEY, candidates, now_wall=NOW), KEY, now_wall=NOW)
    assert opened.candidates == tuple(candidates)


def test_the_resume_token_is_carried() -> None:
    token = bytes(range(MAX_RESUME))
    text = make_offer(KEY, THREE_V4[:1], now_wall=NOW, resume=token)
    assert parse_offer_untrusted(text, KEY, now_wall=NOW).resume == token


@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.ip_addresses(v=4),
                st.ip_addresses(v=6).filter(lambda ip: ip not in VIRTUAL_NETWORK),
            ),
            st.integers(min_value=1, max_value=65535),
            st.sampled_from(PATHS),
        ),
        min_size=1,
        max_size=MAX_CANDIDATES,
    ),
    st.one_of(st.none(), st.binary(min_size=1, max_size=MAX_RESUME)),
)
def test_any_offer_round_trips(items: list[tuple[object, int, str]], resume: bytes | None) -> None:
    candidates = [Candidate((str(ip), port), path, 0.0) for ip, port, path in items]  # type: ignore[arg-type]
    text = make_offer(KEY, candidates, now_wall=NOW, resume=resume)
    opened = parse_offer_untrusted(text, KEY, now_wall=NOW)
    assert opened.candidates == tuple(candidates)
    assert opened.resume == resume


def test_case_and_whitespace_from_copy_paste_are_ignored() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW)
    mangled = "  " + text[:40].lower() + "\n" + text[40:80] + " \r\n" + text[80:] + "\n"
    assert parse_offer_untrusted(mangled, KEY, now_wall=NOW).candidates[0].addr == THREE_V4[0].addr


def test_a_wrong_passphrase_is_told_apart_from_garbage() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW)
    with pytest.raises(OfferAuthError, match="passphrase"):
        parse_offer_untrusted(text, OTHER_KEY, now_wall=NOW)


def test_a_changed_character_fails_authentication() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW)
    position = 60
    flipped = "A" if text[position] != "A" else "B"
    with pytest.raises(OfferAuthError):
        parse_offer_untrusted(text[:position] + flipped + text[position + 1 :], KEY, now_wall=NOW)


def test_an_expired_offer_says_so() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW, ttl=60)
    later = NOW + 60 + CLOCK_SKEW + 1
    with pytest.raises(OfferExpiredError, match="expired"):
        parse_offer_untrusted(text, KEY, now_wall=later)


def test_an_offer_is_accepted_within_the_clock_skew() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW, ttl=60)
    assert parse_offer_untrusted(text, KEY, now_wall=NOW + 60 + CLOCK_SKEW).candidates


def test_a_newer_format_is_recognised_before_decryption() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW)
    with pytest.raises(OfferVersionError, match="newer p2pd"):
        parse_offer_untrusted("P2PD2" + text[5:], KEY, now_wall=NOW)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "P2PD",
        "P2PD1",
        "P2PD1!!!!",
        "P2PD1ABC",
        "P2PD1" + "A" * 2000,
        "P2PD1" + "A" * 8,
    ],
)
def test_malformed_text_is_one_typed_error(text: str) -> None:
    with pytest.raises(OfferMalformedError):
        parse_offer_untrusted(text, KEY, now_wall=NOW)


def test_a_truncated_offer_never_opens() -> None:
    text = make_offer(KEY, THREE_V4, now_wall=NOW)
    for cut in range(1, len(text)):
        with pytest.raises(OfferError):
            parse_offer_untrusted(text[:cut], KEY, now_wall=NOW)


@pytest.mark.parametrize(
    "plain",
    [
        b"\xff\xff",
        cbor2.dumps([1, 2, 3]),
        cbor2.dumps({1: int(NOW) + 60}),
        cbor2.dumps({1: "soon", 2: b"\x00\x01\x02\x03\x04\x05\x06"}),
        cbor2.dumps({1: int(NOW) + 60, 2: b""}),
        cbor2.dumps({1: int(NOW) + 60, 2: b"\x00\x01\x02\x03"}),
        cbor2.dumps({1: int(NOW) + 60, 2: b"\x7f\x01\x02\x03\x04\x05\x06"}),
        cbor2.dumps({1: int(NOW) + 60, 2: b"\x00\x01\x02\x03\x04\x00\x00"}),
        cbor2.dumps({1: int(NOW) + 60, 2: b"\x00\x01\x02\x03\x04\x05\x06" * 9}),
        cbor2.dumps({1: int(NOW) + 60, 2: b"\x00\x01\x02\x03\x04\x05\x06", 3: b""}),
        cbor2.dumps({1: int(NOW) + 60, 2: b"\x00\x01\x02\x03\x04\x05\x06", 3: "token"}),
        cbor2.dumps({1: int(NOW + 30 * 86400), 2: b"\x00\x01\x02\x03\x04\x05\x06"}),
    ],
)
def test_authentic_but_invalid_content_is_malformed(plain: bytes) -> None:
    with pytest.raises(OfferMalformedError):
        parse_offer_untrusted(_seal_raw(plain), KEY, now_wall=NOW)


def test_unknown_map_keys_are_ignored_for_forward_compatibility() -> None:
    plain = cbor2.dumps({1: int(NOW) + 60, 2: b"\x00\x0a\x00\x00\x01\x01\x02", 9: "later"})
    opened = parse_offer_untrusted(_seal_raw(plain), KEY, now_wall=NOW)
    assert opened.candidates == (Candidate(("10.0.0.1", 258), "lan", 0.0),)


def test_a_ciphertext_sealed_for_another_purpose_does_not_open() -> None:
    plain = cbor2.dumps({1: int(NOW) + 60, 2: b"\x00\x0a\x00\x00\x01\x01\x02"})
    with pytest.raises(OfferAuthError):
        parse_offer_untrusted(_seal_raw(plain, ad=b"p2pd other v1"), KEY, now_wall=NOW)


@pytest.mark.parametrize(
    ("candidates", "kwargs"),
    [
        ([], {}),
        ([THREE_V4[0]] * (MAX_CANDIDATES + 1), {}),
        ([Candidate(("peer.example", 1), "direct", 0.0)], {}),
        ([Candidate(("fe80::1%eth0", 1), "lan", 0.0)], {}),
        ([Candidate(("10.0.0.1", 0), "lan", 0.0)], {}),
        ([Candidate(tcp_addr(7), "tcp", 0.0)], {}),
        (THREE_V4, {"ttl": 0}),
        (THREE_V4, {"ttl": 365 * 86400.0}),
        (THREE_V4, {"resume": b""}),
        (THREE_V4, {"resume": bytes(MAX_RESUME + 1)}),
    ],
)
def test_what_cannot_be_carried_is_a_local_error(
    candidates: list[Candidate], kwargs: dict[str, object]
) -> None:
    with pytest.raises(OfferError) as caught:
        make_offer(KEY, candidates, now_wall=NOW, **kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, LocalError)
    assert "\n" not in str(caught.value)
