"""Invites: a round trip, expiry, every malformed input refused with one clear typed error,
and session parameters kept apart from every passphrase's."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd import invite as inv
from p2pd.derive import derive, params_from_master
from p2pd.invite import (
    CLOCK_SKEW,
    DEFAULT_TTL,
    MAX_TTL,
    PREFIX,
    SECRET_SIZE,
    Invite,
    InviteError,
    InviteExpiredError,
    InviteMalformedError,
    encode_invite,
    invite_params,
    new_invite,
    parse_invite_untrusted,
)
from p2pd.qr import qr_matrix
from transports.onion import OnionIdentity

NOW = 1_800_000_000.0


def _fresh() -> tuple[Invite, bytes]:
    return new_invite(NOW)


def test_an_invite_round_trips_through_its_text() -> None:
    invite, seed = _fresh()
    text = invite.text()
    assert parse_invite_untrusted(text, now_wall=NOW) == invite
    assert invite.address == OnionIdentity.from_seed(seed).address
    assert invite.expires_at == int(NOW + DEFAULT_TTL)


def test_the_text_is_upper_case_qr_alphanumeric_and_about_110_characters() -> None:
    text = _fresh()[0].text()
    assert text.startswith(PREFIX)
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-:")
    assert len(text) == 112
    assert len(qr_matrix(text)) == 33  # version 4: alphanumeric mode (byte mode needs 5)


def test_case_and_whitespace_do_not_matter() -> None:
    invite, _ = _fresh()
    text = invite.text()
    wrapped = "  " + text[:40].lower() + "\n" + text[40:90] + "\r\n\t" + text[90:] + "\n"
    assert parse_invite_untrusted(wrapped, now_wall=NOW) == invite


def test_every_invite_has_its_own_onion_and_secret() -> None:
    (a, seed_a), (b, seed_b) = _fresh(), _fresh()
    assert a.service_id != b.service_id
    assert a.secret != b.secret
    assert seed_a != seed_b
    assert len(a.secret) == SECRET_SIZE


def test_the_seed_never_appears_in_the_invite_or_its_repr() -> None:
    invite, seed = _fresh()
    assert base64.b32encode(seed).decode() not in invite.text()
    assert invite.secret.hex() not in repr(invite)
    assert "secret" not in repr(invite)


def test_an_invite_is_accepted_until_its_expiry_plus_the_clock_skew() -> None:
    invite, _ = _fresh()
    text = invite.text()
    parse_invite_untrusted(text, now_wall=invite.expires_at + CLOCK_SKEW)
    with pytest.raises(InviteExpiredError, match=r"expired .* ask for a new one"):
        parse_invite_untrusted(text, now_wall=invite.expires_at + CLOCK_SKEW + 1)


def test_an_invite_from_far_in_the_future_is_refused() -> None:
    invite, _ = new_invite(NOW, MAX_TTL)
    parse_invite_untrusted(invite.text(), now_wall=NOW)
    with pytest.raises(InviteMalformedError, match="check the clock"):
        parse_invite_untrusted(invite.text(), now_wall=NOW - CLOCK_SKEW - 1)


@pytest.mark.parametrize("ttl", [0.0, -1.0, MAX_TTL + 1])
def test_a_lifetime_out_of_range_is_refused(ttl: float) -> None:
    with pytest.raises(InviteError, match="lifetime"):
        new_invite(NOW, ttl)


def test_the_typo_check_catches_a_changed_secret_or_expiry() -> None:
    invite, _ = _fresh()
    other_secret = Invite(invite.service_id, bytes(SECRET_SIZE), invite.expires_at)
    head, secret, expiry = invite.text().rsplit(":", 2)
    forged_secret = other_secret.text().rsplit(":", 2)[1][:26] + secret[26:]
    with pytest.raises(InviteMalformedError, match="mistyped"):
        parse_invite_untrusted(f"{head}:{forged_secret}:{expiry}", now_wall=NOW)
    with pytest.raises(InviteMalformedError, match="mistyped"):
        parse_invite_untrusted(f"{head}:{secret}:{int(expiry) + 1}", now_wall=NOW)


def test_a_mistyped_onion_address_fails_its_own_checksum() -> None:
    text = _fresh()[0].text()
    position = len(PREFIX) + 10
    swapped = "A" if text[position] != "A" else "B"
    with pytest.raises(InviteMalformedError, match="onion address"):
        parse_invite_untrusted(text[:position] + swapped + text[position + 1 :], now_wall=NOW)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a p2pd invite"),
        ("P2PD1ABCDEF", "not a p2pd invite"),
        ("P2PD-INVITE:", "incomplete"),
        ("P2PD-INVITE:a:b", "incomplete"),
        ("P2PD-INVITE:a:b:c:d", "incomplete"),
        ("P2PD-INVITE:" + "A" * 55 + ":" + "A" * 32 + ":1", "onion address"),
        ("P2PD-INVITE:" + "1" * 56 + ":" + "A" * 32 + ":1", "onion address"),
        ("X" * 600, "far too long"),
    ],
)
def test_malformed_texts_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InviteMalformedError, match=reason):
        parse_invite_untrusted(text, now_wall=NOW)


@pytest.mark.parametrize(
    ("secret", "expiry", "reason"),
    [
        ("A" * 31, "1800000600", "not base32|cut short"),
        ("A" * 40, "1800000600", "cut short or too long"),
        ("0" * 32, "1800000600", "not base32"),
        (None, "18e5", "not a number"),
        (None, "-1", "not a number"),
        (None, "9" * 13, "out of range"),
    ],
)
def test_malformed_fields_are_refused_with_a_reason(
    secret: str | None, expiry: str, reason: str
) -> None:
    head, good_secret, _ = _fresh()[0].text().rsplit(":", 2)
    text = f"{head}:{secret or good_secret}:{expiry}"
    with pytest.raises(InviteMalformedError, match=reason):
        parse_invite_untrusted(text, now_wall=NOW)


@given(st.one_of(st.text(max_size=300), st.text(max_size=200).map(lambda t: PREFIX + t)))
def test_arbitrary_text_is_refused_with_the_typed_error(text: str) -> None:
    with pytest.raises(InviteMalformedError):
        parse_invite_untrusted(text, now_wall=NOW)


@given(st.integers(min_value=0), st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567:=", max_size=4))
def test_a_damaged_invite_never_parses_as_another(position: int, noise: str) -> None:
    invite, _ = new_invite(NOW)
    text = invite.text()
    index = len(PREFIX) + position % (len(text) - len(PREFIX))
    damaged = text[:index] + noise + text[index + len(noise) :]
    try:
        parsed = parse_invite_untrusted(damaged, now_wall=NOW)
    except (InviteMalformedError, InviteExpiredError):
        return
    assert parsed == invite  # only a no-op change (same characters) may parse


def test_both_ends_derive_the_same_session_parameters() -> None:
    invite, _ = _fresh()
    joined = parse_invite_untrusted(invite.text(), now_wall=NOW)
    assert joined.params() == invite.params()
    assert invite.params().psk == invite_params(invite.secret).psk


def test_invite_parameters_are_apart_from_a_passphrase_and_from_the_raw_secret() -> None:
    secret = bytes(range(SECRET_SIZE))
    params = invite_params(secret)
    as_phrase = derive(base64.b32encode(secret).decode(), check=False)
    as_master = params_from_master(secret.ljust(32, b"\0"))
    for other in (as_phrase, as_master):
        assert params.psk != other.psk
        assert params.onion_seed != other.onion_seed
        assert params.tag_key != other.tag_key
    assert inv.invite_master(secret) != secret.ljust(32, b"\0")
    assert params != invite_params(bytes(SECRET_SIZE))


def test_the_onion_is_not_derived_from_the_secret() -> None:
    invite, seed = _fresh()
    assert seed != invite.params().onion_seed
    assert invite.address != OnionIdentity.from_seed(invite.params().onion_seed).address


def test_a_secret_of_the_wrong_size_is_local_misuse() -> None:
    with pytest.raises(InviteError):
        invite_params(b"short")


def test_known_answers_pin_the_derivation() -> None:
    """BLAKE2b-256(key=secret, data="p2pd v1 invite master"), then params_from_master: pinned
    so an inviter and a joiner of different versions never drift apart silently."""
    master = inv.invite_master(bytes(SECRET_SIZE))
    assert master.hex() == "1b752782e166d0634790da2c0edb195a06f5d8100567612d6069139510e1491b"
    psk = invite_params(bytes(SECRET_SIZE)).psk
    assert psk.hex() == "415b030056a69e4d72ee0dd1f6786029a7077ba6714116ca82ae917d10f27057"


def test_encode_then_parse_is_identity_for_any_secret_and_expiry() -> None:
    invite, _ = _fresh()
    for secret in (bytes(SECRET_SIZE), b"\xff" * SECRET_SIZE):
        for expiry in (int(NOW), int(NOW) + 1, int(NOW + MAX_TTL)):
            one = Invite(invite.service_id, secret, expiry)
            assert parse_invite_untrusted(encode_invite(one), now_wall=NOW) == one
