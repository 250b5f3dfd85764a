"""The persistent static identity: created once, 0600, stable, refused when exposed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2pd.errors import StateDirError
from p2pd.identity import IDENTITY_FILE, Identity, fingerprint, load_or_create


def test_created_once_with_private_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_or_create(state)
    again = load_or_create(state)
    assert first == again
    assert stat.S_IMODE((state / IDENTITY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_two_state_dirs_two_identities(tmp_path: Path) -> None:
    assert load_or_create(tmp_path / "a").public != load_or_create(tmp_path / "b").public


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    os.chmod(tmp_path / IDENTITY_FILE, 0o640)
    with pytest.raises(StateDirError, match="chmod 600"):
        load_or_create(tmp_path)


def test_damaged_key_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / IDENTITY_FILE).write_bytes(b"short")
    with pytest.raises(StateDirError, match="damaged"):
        load_or_create(tmp_path)


def test_world_writable_state_dir_is_refused(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    with pytest.raises(StateDirError, match="chmod 700"):
        load_or_create(tmp_path)


def test_fingerprint_format_and_repr() -> None:
    ident = Identity.generate()
    fp = fingerprint(ident.public)
    groups = fp.split("-")
    assert len(groups) == 8 and all(len(g) == 4 for g in groups)
    assert ident.fingerprint == fp
    assert ident.private.hex() not in repr(ident)


def test_public_key_matches_private() -> None:
    ident = Identity.generate()
    assert Identity.from_private(ident.private).public == ident.public
