"""Virtual addresses round-trip, stay inside 100::/64, and never match a real address."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import LocalError
from p2pd.ratelimit import bucket_key
from p2pd.vaddr import (
    VIRTUAL_NETWORK,
    RelayPath,
    TcpPath,
    TorPath,
    is_virtual,
    parse,
    relay_addr,
    tcp_addr,
    tor_addr,
)

u16 = st.integers(min_value=0, max_value=0xFFFF)
u32 = st.integers(min_value=0, max_value=0xFFFF_FFFF)


@given(u16, u32)
def test_relay_addresses_round_trip(relay: int, slot: int) -> None:
    addr = relay_addr(relay, slot)
    assert parse(addr) == RelayPath(relay, slot)
    assert ipaddress.IPv6Address(addr[0]) in VIRTUAL_NETWORK


@given(u32)
def test_tcp_addresses_round_trip(link: int) -> None:
    assert parse(tcp_addr(link)) == TcpPath(link)


@given(u32)
def test_tor_addresses_round_trip_apart_from_tcp_links(link: int) -> None:
    """A Tor stream is carried as a TCP link, but its address names Tor."""
    assert parse(tor_addr(link)) == TorPath(link)
    assert tor_addr(link) != tcp_addr(link)


def test_relay_and_tcp_addresses_differ() -> None:
    assert relay_addr(0, 5) != tcp_addr(5)


@pytest.mark.parametrize(
    "addr",
    [("127.0.0.1", 1), ("::1", 1), ("203.0.113.1", 7000), ("100::1", 1), ("100::7:1:0:1", 2)],
)
def test_real_addresses_are_not_virtual(addr: tuple[str, int]) -> None:
    assert not is_virtual(addr)


def test_out_of_range_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        relay_addr(0x1_0000, 0)
    with pytest.raises(LocalError):
        tcp_addr(-1)
    with pytest.raises(LocalError):
        tor_addr(2**32)


def test_the_rate_limiter_accepts_virtual_sources() -> None:
    assert bucket_key(relay_addr(1, 2)[0])
