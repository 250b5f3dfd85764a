"""Space keys split by purpose; the device key is created once, 0600, and shown as a fingerprint."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.signing
import pytest

from ethersync.keys import DEVICE_KEY_FILE, DeviceKey, SpaceKeys, load_or_create_device
from p2pd.derive import params_from_master
from p2pd.errors import LocalError, StateDirError
from p2pd.identity import IDENTITY_FILE, fingerprint


def test_space_keys_come_from_the_passphrase_derivation() -> None:
    params = params_from_master(bytes(range(32)))
    keys = SpaceKeys.from_params(params)
    assert keys.space_id == params.space_id
    assert keys == SpaceKeys.from_params(params_from_master(bytes(range(32))))
    assert keys != SpaceKeys.from_params(params_from_master(bytes(32)))


def test_every_purpose_gets_its_own_key() -> None:
    keys = SpaceKeys.from_space_key(bytes(16), b"k" * 32)
    purposes = {keys.envelope_key, keys.frame_tag_key, keys.chunk_key, keys.nonce_key}
    assert len(purposes) == 4
    assert b"k" * 32 not in purposes


def test_keys_never_appear_in_repr() -> None:
    keys = SpaceKeys.from_space_key(bytes(16), b"k" * 32)
    text = repr(keys)
    for secret in (keys.envelope_key, keys.frame_tag_key, keys.chunk_key, keys.nonce_key):
        assert secret.hex() not in text and repr(secret) not in text
    device = DeviceKey.from_seed(b"s" * 32)
    assert "sss" not in repr(device)


def test_wrong_sizes_are_local_errors() -> None:
    with pytest.raises(LocalError):
        SpaceKeys.from_space_key(bytes(15), bytes(32))
    with pytest.raises(LocalError):
        SpaceKeys.from_space_key(bytes(16), bytes(31))
    with pytest.raises(LocalError):
        DeviceKey.from_seed(bytes(31))


def test_device_key_created_once_private_and_apart_from_identity(tmp_path: Path) -> None:
    first = load_or_create_device(tmp_path)
    assert load_or_create_device(tmp_path) == first
    assert stat.S_IMODE((tmp_path / DEVICE_KEY_FILE).stat().st_mode) == 0o600
    assert not (tmp_path / IDENTITY_FILE).exists()
    assert load_or_create_device(tmp_path / "other").public != first.public


def test_exposed_device_key_is_refused(tmp_path: Path) -> None:
    load_or_create_device(tmp_path)
    os.chmod(tmp_path / DEVICE_KEY_FILE, 0o644)
    with pytest.raises(StateDirError, match="chmod 600"):
        load_or_create_device(tmp_path)


def test_fingerprint_is_the_identity_format() -> None:
    device = DeviceKey.from_seed(b"s" * 32)
    assert device.fingerprint == fingerprint(device.public)
    assert len(device.fingerprint.split("-")) == 8


def test_signature_verifies_with_the_public_key() -> None:
    device = DeviceKey.from_seed(b"s" * 32)
    nacl.signing.VerifyKey(device.public).verify(b"hello", device.sign(b"hello"))
