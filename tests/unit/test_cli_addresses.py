"""Address options: HOST:PORT parsing, and names resolved for --assist and --stun."""

from __future__ import annotations

import ipaddress

import pytest

from p2pd.cli import _parse_target, _resolve
from p2pd.errors import LocalError


def test_an_ip_address_is_kept_as_it_is() -> None:
    assert _resolve(("203.0.113.1", 7000), "--assist") == ("203.0.113.1", 7000)


def test_a_host_name_is_resolved_to_an_ip() -> None:
    host, port = _resolve(("localhost", 3478), "--stun")
    assert ipaddress.ip_address(host).is_loopback and port == 3478


def test_an_unknown_name_is_one_clear_error() -> None:
    with pytest.raises(LocalError, match="--assist: cannot resolve"):
        _resolve(("no-such-host.invalid", 1), "--assist")


@pytest.mark.parametrize("text", ["203.0.113.1", ":7000", "h:0", "h:65536", "h:x"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(LocalError):
        _parse_target(text, "--assist")


def test_bind_may_ask_for_any_port() -> None:
    assert _parse_target("127.0.0.1:0", "--bind", any_port=True) == ("127.0.0.1", 0)
    assert _parse_target("[::1]:7000", "--bind") == ("::1", 7000)
