"""The sans-IO half of the SOCKS5 client: what it asks tor, and how it reads tor's answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import LocalError
from transports.socks5 import (
    SOCKS_REPLIES,
    TorConnectError,
    socks_connect_request,
    socks_greeting,
    socks_reply_length_untrusted,
)

ONION = "a" * 56 + ".onion"


def test_greeting_offers_only_no_authentication() -> None:
    assert socks_greeting() == b"\x05\x01\x00"


def test_connect_request_names_the_host_so_tor_resolves_it() -> None:
    request = socks_connect_request(ONION, 4242)
    assert request[:5] == bytes([5, 1, 0, 3, len(ONION)])
    assert request[5:-2] == ONION.encode() and request[-2:] == (4242).to_bytes(2, "big")


@pytest.mark.parametrize(("host", "port"), [("", 80), ("x" * 256, 80), (ONION, 0), (ONION, 65536)])
def test_a_request_socks_cannot_carry_is_refused_locally(host: str, port: int) -> None:
    with pytest.raises(LocalError):
        socks_connect_request(host, port)


@pytest.mark.parametrize(
    ("atyp", "first", "rest"),
    [(1, 0, 3 + 2), (4, 0, 15 + 2), (3, 10, 10 + 2)],  # IPv4, IPv6, a 10-byte name
)
def test_the_rest_of_a_success_reply_follows_its_address_type(
    atyp: int, first: int, rest: int
) -> None:
    assert socks_reply_length_untrusted(bytes([5, 0, 0, atyp, first])) == rest


def test_tors_extended_codes_say_why_an_onion_was_not_reached() -> None:
    with pytest.raises(TorConnectError) as caught:
        socks_reply_length_untrusted(bytes([5, 0xF0, 0, 1, 0]))
    assert caught.value.reason == "onion_descriptor_not_found"
    with pytest.raises(TorConnectError) as caught:
        socks_reply_length_untrusted(bytes([5, 0xF7, 0, 1, 0]))
    assert caught.value.reason == "onion_intro_timed_out"


@given(st.binary(min_size=5, max_size=5))
def test_any_five_bytes_give_a_length_or_a_reason_never_a_crash(head: bytes) -> None:
    try:
        rest = socks_reply_length_untrusted(head)
    except TorConnectError as exc:
        known = set(SOCKS_REPLIES.values()) | {"socks_malformed"}
        assert exc.reason in known or exc.reason == f"socks_{head[1]:#04x}"
        assert head[0] != 5 or head[1] != 0 or head[3] not in (1, 3, 4)
    else:
        assert head[:2] == b"\x05\x00" and 2 <= rest <= 257
