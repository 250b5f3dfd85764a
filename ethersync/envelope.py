"""Envelopes: what a member publishes in a space, signed by its device and sealed for the space.

Theory of operation
-------------------
An envelope is five fields (docs/ethersync.md, "Envelopes")::

    fields    = {"author": bytes[32], "seq": uint >= 1, "ts": uint (unix ms),
                 "kind": str, "body": bytes or map}
    signed    = canonical CBOR of fields                (RFC 8949 core deterministic)
    signature = Ed25519(author's device key, SIGN_CONTEXT || space_id || signed)
    plaintext = CBOR [signed, signature]
    blob      = VERSION u8 || nonce[24] || XChaCha20-Poly1305(envelope_key, nonce,
                                                           AD = space_id, plaintext)
    id        = BLAKE2b-256(blob)

* The signature covers the space id and a context string, so a member of two spaces
  cannot lift a signed envelope from one space into the other, and no other Ed25519 use
  of the device key can be confused with an envelope.
* The signature is over the exact ``signed`` bytes carried inside, and those bytes must be
  the canonical encoding of what they decode to, so an envelope has exactly one valid
  signed form.
* The id names the whole blob: anyone, even without the passphrase, can check that a blob
  is the one asked for; only the author seals (with a random nonce), everybody else
  forwards the blob unchanged, so an envelope keeps one id wherever it goes.
* A peer without the passphrase sees the version byte, a random nonce and ciphertext.

:func:`open_untrusted` checks, cheapest first: size and version, AEAD, CBOR shape,
signature, then every field's type and range; any failure raises
:class:`p2pd.errors.BadFrame` with a short reason the caller counts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
import nacl.exceptions
import nacl.signing
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from ethersync.keys import AUTHOR_SIZE, SIGNATURE_SIZE, DeviceKey, SpaceKeys
from p2pd.errors import BadFrame, LocalError

#: Format version, the first byte of every blob; a new layout means a new value.
VERSION = 1
#: XChaCha20-Poly1305 nonce: 24 random bytes never repeat in practice, so a device needs
#: no nonce state that a crash or a restored backup could roll back.
NONCE_SIZE = 24
#: Poly1305 authenticator appended by the AEAD.
TAG_SIZE = 16
#: Bytes before the ciphertext: version and nonce.
HEADER_SIZE = 1 + NONCE_SIZE
#: Size of an envelope id (BLAKE2b-256 of the blob).
ID_SIZE = 32
#: Largest blob accepted, the same as one gossip item (:mod:`ethersync.gossip_wire`): a
#: file manifest lists 32 bytes per chunk, so 64 KiB holds ~2,000 chunk hashes, and one
#: envelope can make a peer hold little.
MAX_BLOB_SIZE = 64 * 1024
#: Domain separation of envelope signatures.
SIGN_CONTEXT = b"ethersync v1 envelope"
#: Kinds this version publishes: a text message, a file manifest (:mod:`ethersync.manifest`).
KIND_MSG = "msg"
KIND_FILE = "file"
#: Longest kind accepted. Unknown kinds of the right shape are accepted and relayed, so a
#: newer kind spreads through older peers; applications ignore kinds they do not know.
MAX_KIND_LENGTH = 16
#: Largest sequence number and timestamp: SQLite stores signed 64-bit integers.
MAX_UINT = 2**63 - 1
#: An author's first envelope has this seq; 0 in a version vector means "none yet".
FIRST_SEQ = 1
#: Deepest nesting of a body map (CBOR decoding stops deeper still).
MAX_BODY_DEPTH = 8
#: CBOR nesting limit of the decoder, above what any valid envelope needs.
MAX_CBOR_DEPTH = MAX_BODY_DEPTH + 4

_FIELDS = frozenset({"author", "seq", "ts", "kind", "body"})

#: A body: raw bytes, or a map of CBOR-plain values (see :func:`_check_value`).
Body = bytes | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Envelope:
    """An opened (or freshly sealed) envelope; ``id`` names its blob."""

    id: bytes
    author: bytes
    seq: int
    ts: int
    kind: str
    body: Body


@dataclass(frozen=True, slots=True)
class SealedEnvelope:
    """What :func:`seal` returns: the blob to store and send, its id, and what it says."""

    id: bytes
    blob: bytes
    envelope: Envelope


def envelope_id(blob: bytes) -> bytes:
    """BLAKE2b-256 of the blob: the envelope's name in stores and summaries."""
    return hashlib.blake2b(blob, digest_size=ID_SIZE).digest()


def _signed_message(space_id: bytes, signed: bytes) -> bytes:
    return SIGN_CONTEXT + space_id + signed


def _check_kind(kind: object) -> bool:
    return (
        isinstance(kind, str)
        and 0 < len(kind) <= MAX_KIND_LENGTH
        and kind.isascii()
        and kind.isalnum()
        and kind == kind.lower()
    )


def _check_value(value: object, depth: int) -> bool:
    """True for CBOR-plain data: bytes, str, int, bool, None, lists and str-keyed maps."""
    if depth > MAX_BODY_DEPTH:
        return False
    if value is None or isinstance(value, bytes | str | bool):
        return True
    if isinstance(value, int):
        return -MAX_UINT - 1 <= value <= MAX_UINT
    if isinstance(value, list):
        return all(_check_value(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and _check_value(item, depth + 1) for key, item in value.items()
        )
    return False


def _check_body(body: object) -> bool:
    return isinstance(body, bytes) or (isinstance(body, dict) and _check_value(body, 0))


def seal(
    keys: SpaceKeys,
    device: DeviceKey,
    *,
    seq: int,
    ts: int,
    kind: str,
    body: Body,
    rng: Callable[[int], bytes] = os.urandom,
) -> SealedEnvelope:
    """Sign and encrypt one envelope; raise :class:`LocalError` for fields a peer would refuse."""
    if not FIRST_SEQ <= seq <= MAX_UINT or not 0 <= ts <= MAX_UINT:
        raise LocalError(f"seq must be {FIRST_SEQ}..2^63-1 and ts 0..2^63-1")
    if not _check_kind(kind):
        raise LocalError(f"kind must be 1-{MAX_KIND_LENGTH} lowercase ASCII letters or digits")
    plain_body: Body = body if isinstance(body, bytes) else dict(body)
    if not _check_body(plain_body):
        raise LocalError("body must be bytes or a map of plain CBOR values")
    signed = cbor2.dumps(
        {"author": device.public, "seq": seq, "ts": ts, "kind": kind, "body": plain_body},
        canonical=True,
    )
    signature = device.sign(_signed_message(keys.space_id, signed))
    plaintext = cbor2.dumps([signed, signature], canonical=True)
    nonce = rng(NONCE_SIZE)
    ciphertext = crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, keys.space_id, nonce, keys.envelope_key
    )
    blob = bytes([VERSION]) + nonce + ciphertext
    if len(blob) > MAX_BLOB_SIZE:
        raise LocalError(f"envelope is {len(blob)} bytes sealed, at most {MAX_BLOB_SIZE}")
    ident = envelope_id(blob)
    envelope = Envelope(id=ident, author=device.public, seq=seq, ts=ts, kind=kind, body=plain_body)
    return SealedEnvelope(id=ident, blob=blob, envelope=envelope)


def _loads_untrusted(data: bytes) -> Any:
    try:
        return cbor2.loads(
            data,
            max_depth=MAX_CBOR_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
        raise BadFrame("envelope_cbor") from None


def open_untrusted(blob: bytes, keys: SpaceKeys) -> Envelope:
    """Decrypt, verify and parse a blob from the network or the store."""
    if len(blob) < HEADER_SIZE + TAG_SIZE or len(blob) > MAX_BLOB_SIZE:
        raise BadFrame("envelope_size")
    if blob[0] != VERSION:
        raise BadFrame("envelope_version")
    nonce = blob[1:HEADER_SIZE]
    try:
        plaintext = crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[HEADER_SIZE:], keys.space_id, nonce, keys.envelope_key
        )
    except nacl.exceptions.CryptoError:
        raise BadFrame("envelope_aead") from None
    outer = _loads_untrusted(plaintext)
    if (
        not isinstance(outer, list)
        or len(outer) != 2
        or not isinstance(outer[0], bytes)
        or not isinstance(outer[1], bytes)
        or len(outer[1]) != SIGNATURE_SIZE
    ):
        raise BadFrame("envelope_shape")
    signed, signature = outer
    fields = _loads_untrusted(signed)
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        raise BadFrame("envelope_fields")
    if not _check_body(fields["body"]):
        raise BadFrame("envelope_body")
    if cbor2.dumps(fields, canonical=True) != signed:
        raise BadFrame("envelope_not_canonical")
    author = fields["author"]
    if not isinstance(author, bytes) or len(author) != AUTHOR_SIZE:
        raise BadFrame("envelope_author")
    try:
        nacl.signing.VerifyKey(author).verify(_signed_message(keys.space_id, signed), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        raise BadFrame("envelope_signature") from None
    seq, ts, kind, body = fields["seq"], fields["ts"], fields["kind"], fields["body"]
    for number, least in ((seq, FIRST_SEQ), (ts, 0)):
        if type(number) is not int or not least <= number <= MAX_UINT:
            raise BadFrame("envelope_number")
    if not _check_kind(kind):
        raise BadFrame("envelope_kind")
    return Envelope(id=envelope_id(blob), author=author, seq=seq, ts=ts, kind=kind, body=body)
