"""Envelopes: signed by the author, sealed for the space, named by their content hash."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from ethersync.envelope import (
    HEADER_SIZE,
    KIND_FILE,
    KIND_MSG,
    MAX_BLOB_SIZE,
    SIGN_CONTEXT,
    VERSION,
    open_untrusted,
    seal,
)
from ethersync.keys import DeviceKey, SpaceKeys
from p2pd.errors import BadFrame, LocalError

KEYS = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
OTHER_SPACE = SpaceKeys.from_space_key(b"j" * 16, b"l" * 32)
SAME_ID_OTHER_KEY = SpaceKeys.from_space_key(b"i" * 16, b"m" * 32)
ALICE = DeviceKey.from_seed(b"a" * 32)
MALLORY = DeviceKey.from_seed(b"m" * 32)


def _seal(**overrides: object) -> bytes:
    fields: dict[str, object] = {"seq": 1, "ts": 1_700_000_000_000, "kind": KIND_MSG}
    fields["body"] = b"hello"
    fields.update(overrides)
    return seal(KEYS, ALICE, **fields).blob  # type: ignore[arg-type]


def _reseal(plaintext: bytes, keys: SpaceKeys = KEYS) -> bytes:
    """A blob a member could craft by hand: any plaintext under the space key."""
    nonce = b"n" * 24
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, keys.space_id, nonce, keys.envelope_key
    )
    return bytes([VERSION]) + nonce + sealed


def _signed_by(device: DeviceKey, fields: dict[str, object], keys: SpaceKeys = KEYS) -> bytes:
    signed = cbor2.dumps(fields, canonical=True)
    signature = device.sign(SIGN_CONTEXT + keys.space_id + signed)
    return _reseal(cbor2.dumps([signed, signature]), keys)


def _fields(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "author": ALICE.public,
        "seq": 1,
        "ts": 5,
        "kind": "msg",
        "body": b"x",
    }
    fields.update(overrides)
    return fields


def test_round_trip_and_id_is_the_blob_hash() -> None:
    sealed = seal(KEYS, ALICE, seq=7, ts=123, kind=KIND_FILE, body={"name": "a", "n": [1, b"2"]})
    opened = open_untrusted(sealed.blob, KEYS)
    assert opened == sealed.envelope
    assert opened.id == sealed.id == hashlib.blake2b(sealed.blob, digest_size=32).digest()
    assert (opened.author, opened.seq, opened.ts, opened.kind) == (ALICE.public, 7, 123, "file")
    assert opened.body == {"name": "a", "n": [1, b"2"]}


_LEAF = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.binary() | st.text()
_PLAIN = _LEAF | st.lists(_LEAF, max_size=4) | st.dictionaries(st.text(), _LEAF, max_size=4)


@settings(max_examples=200)
@given(
    body=st.binary(max_size=2000) | st.dictionaries(st.text(), _PLAIN, max_size=5),
    seq=st.integers(1, 2**63 - 1),
    ts=st.integers(0, 2**63 - 1),
    kind=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=16),
)
def test_any_plain_envelope_round_trips(body: object, seq: int, ts: int, kind: str) -> None:
    sealed = seal(KEYS, ALICE, seq=seq, ts=ts, kind=kind, body=body)  # type: ignore[arg-type]
    assert open_untrusted(sealed.blob, KEYS) == sealed.envelope


def test_blob_shows_no_plaintext_and_fresh_nonces_give_fresh_ids() -> None:
    one, two = _seal(body=b"secret words"), _seal(body=b"secret words")
    assert b"secret words" not in one and ALICE.public not in one
    assert one != two and one[0] == VERSION


@settings(max_examples=200)
@given(st.data())
def test_any_flipped_byte_is_refused(data: st.DataObject) -> None:
    blob = bytearray(_seal())
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BadFrame):
        open_untrusted(bytes(blob), KEYS)


def test_truncated_and_oversized_blobs_are_refused() -> None:
    blob = _seal()
    for bad in (b"", blob[:HEADER_SIZE], blob[:-1], blob + b"x", b"\x01" * (MAX_BLOB_SIZE + 1)):
        with pytest.raises(BadFrame):
            open_untrusted(bad, KEYS)


def test_wrong_space_is_refused() -> None:
    for keys in (OTHER_SPACE, SAME_ID_OTHER_KEY):
        with pytest.raises(BadFrame, match="envelope_aead"):
            open_untrusted(_seal(), keys)


def test_signature_by_another_key_is_refused() -> None:
    forged = _signed_by(MALLORY, _fields(author=ALICE.public))
    with pytest.raises(BadFrame, match="envelope_signature"):
        open_untrusted(forged, KEYS)
    assert open_untrusted(_signed_by(MALLORY, _fields(author=MALLORY.public)), KEYS)


def test_signature_is_bound_to_the_space() -> None:
    """A member of two spaces cannot lift an envelope from one into the other."""
    fields = _fields()
    signed = cbor2.dumps(fields, canonical=True)
    signature = ALICE.sign(SIGN_CONTEXT + OTHER_SPACE.space_id + signed)
    with pytest.raises(BadFrame, match="envelope_signature"):
        open_untrusted(_reseal(cbor2.dumps([signed, signature])), KEYS)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"seq": 0}, "envelope_number"),
        ({"seq": -1}, "envelope_number"),
        ({"seq": 2**63}, "envelope_number"),
        ({"seq": True}, "envelope_number"),
        ({"ts": "now"}, "envelope_number"),
        ({"kind": ""}, "envelope_kind"),
        ({"kind": "Msg"}, "envelope_kind"),
        ({"kind": "x" * 17}, "envelope_kind"),
        ({"kind": b"msg"}, "envelope_kind"),
        ({"body": 5}, "envelope_body"),
        ({"body": {1: b"x"}}, "envelope_body"),
        ({"body": {"f": 1.5}}, "envelope_body"),
        ({"author": b"short"}, "envelope_author"),
    ],
)
def test_bad_fields_are_refused_even_when_signed(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(BadFrame, match=reason):
        open_untrusted(_signed_by(ALICE, _fields(**overrides)), KEYS)


def test_missing_or_extra_fields_are_refused() -> None:
    fields = _fields()
    del fields["ts"]
    with pytest.raises(BadFrame, match="envelope_fields"):
        open_untrusted(_signed_by(ALICE, fields), KEYS)
    with pytest.raises(BadFrame, match="envelope_fields"):
        open_untrusted(_signed_by(ALICE, _fields(extra=1)), KEYS)


def test_non_canonical_signed_bytes_are_refused() -> None:
    signed = cbor2.dumps(_fields())  # insertion order, not canonical order
    assert signed != cbor2.dumps(_fields(), canonical=True)
    signature = ALICE.sign(SIGN_CONTEXT + KEYS.space_id + signed)
    with pytest.raises(BadFrame, match="envelope_not_canonical"):
        open_untrusted(_reseal(cbor2.dumps([signed, signature])), KEYS)


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"\xff", b"\x9f\x40\x40\xff", cbor2.dumps([b"x"]), cbor2.dumps({"a": 1}), b"\x81" * 500],
)
def test_garbage_plaintext_from_a_member_is_refused(plaintext: bytes) -> None:
    with pytest.raises(BadFrame):
        open_untrusted(_reseal(plaintext), KEYS)


def test_local_misuse_raises_local_error() -> None:
    with pytest.raises(LocalError):
        _seal(seq=0)
    with pytest.raises(LocalError):
        _seal(kind="no spaces")
    with pytest.raises(LocalError):
        _seal(body={"f": 1.5})
    with pytest.raises(LocalError):
        _seal(body=b"x" * MAX_BLOB_SIZE)
