"""The WAN sub-keys: deterministic, distinct per purpose and per epoch, and checked inputs."""

from __future__ import annotations

import hashlib

import pytest

from p2pd.errors import LocalError
from p2pd.subkeys import offer_key, punch_key, relay_tag

KEY = bytes(range(32))


def test_each_purpose_has_its_own_key() -> None:
    keys = {punch_key(KEY), offer_key(KEY), relay_tag(KEY, 7)}
    assert len(keys) == 3


def test_relay_tag_is_keyed_blake2b_of_context_and_epoch() -> None:
    expected = hashlib.blake2b(
        b"p2pd v1 relay tag" + (7).to_bytes(8, "little"), key=KEY, digest_size=16
    ).digest()
    assert relay_tag(KEY, 7) == expected


def test_relay_tag_rotates_with_the_epoch() -> None:
    assert relay_tag(KEY, 7) != relay_tag(KEY, 8)


def test_another_passphrase_gets_other_keys() -> None:
    other = bytes(32)
    assert punch_key(KEY) != punch_key(other)
    assert relay_tag(KEY, 7) != relay_tag(other, 7)


@pytest.mark.parametrize("epoch", [-1, 2**64])
def test_epoch_out_of_range_is_refused(epoch: int) -> None:
    with pytest.raises(LocalError):
        relay_tag(KEY, epoch)


def test_short_key_is_refused() -> None:
    with pytest.raises(LocalError):
        punch_key(b"short")
