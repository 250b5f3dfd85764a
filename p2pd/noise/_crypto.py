"""The Noise primitives for one suite, 25519_ChaChaPoly_BLAKE2b, and the CipherState.

Theory of operation: Noise (revision 34, sections 4 and 5.1) needs a DH, an AEAD
and a hash; p2pd fixes them to X25519, ChaCha20-Poly1305 (IETF) and BLAKE2b, all
from libsodium through PyNaCl, and HMAC/HKDF built on BLAKE2b as the spec says.
Nothing here keeps state except :class:`CipherState`, whose invariant is that its
nonce ``n`` only ever moves forward, and only after a successful operation.

All-zero DH outputs: libsodium's ``crypto_scalarmult`` refuses to return one (a
peer key of small order) and we surface that as :class:`NoiseError`, as the spec
permits (section 12.1).  The official vectors never hit that case.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

import nacl.exceptions
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)

from p2pd.errors import BadFrame, LocalError

DHLEN = 32  # X25519 public keys, private keys and shared secrets are 32 bytes (spec 12.1).
KEYLEN = 32  # ChaCha20-Poly1305 keys are 32 bytes; HKDF outputs are truncated to this (spec 5.2).
TAGLEN = 16  # Poly1305 authentication tag appended to every ciphertext (spec 5.1).
HASHLEN = 64  # BLAKE2b-512 digest length (spec 12.8).
PSKLEN = 32  # Pre-shared keys must be exactly 32 bytes (spec 9.2).
MAX_NONCE = 2**64 - 1  # Reserved by the spec (5.1): a CipherState may never use it.
MAX_MESSAGE_LEN = 65535  # Largest Noise message (spec 3); a longer one is malformed.
_NONCE_PREFIX = bytes(4)  # ChaChaPoly nonce = 32 zero bits || 64-bit little-endian counter (12.3).

Rng = Callable[[int], bytes]


class NoiseError(BadFrame):
    """A Noise message failed authentication or was malformed; tells the peer only "no"."""


def hash_(data: bytes) -> bytes:
    """HASH(data): BLAKE2b with a 64-byte digest."""
    return hashlib.blake2b(data).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, bytes, bytes]:
    """HKDF(ck, ikm) of spec 4.3 with HMAC-BLAKE2b; returns three outputs, the third empty if 2."""
    temp_key = hmac.digest(chaining_key, ikm, hashlib.blake2b)
    out1 = hmac.digest(temp_key, b"\x01", hashlib.blake2b)
    out2 = hmac.digest(temp_key, out1 + b"\x02", hashlib.blake2b)
    out3 = hmac.digest(temp_key, out2 + b"\x03", hashlib.blake2b) if outputs == 3 else b""
    return out1, out2, out3


def dh(private: bytes, public: bytes) -> bytes:
    """X25519; a small-order ``public`` (all-zero result) raises NoiseError."""
    try:
        return crypto_scalarmult(private, public)
    except nacl.exceptions.RuntimeError:
        raise NoiseError("noise: unusable public key") from None


def keypair_from_private(priv: bytes) -> tuple[bytes, bytes]:
    """Return ``(private, public)`` for a 32-byte X25519 private key."""
    if not isinstance(priv, bytes) or len(priv) != DHLEN:
        raise LocalError(f"an X25519 private key must be {DHLEN} bytes")
    return priv, crypto_scalarmult_base(priv)


def generate_keypair(rng: Rng = os.urandom) -> tuple[bytes, bytes]:
    """Return a fresh ``(private, public)`` X25519 key pair drawn from ``rng``."""
    return keypair_from_private(rng(DHLEN))


def _nonce(n: int) -> bytes:
    return _NONCE_PREFIX + n.to_bytes(8, "little")


class CipherState:
    """A key and a counter nonce (spec 5.1); with no key it passes bytes through unchanged."""

    __slots__ = ("key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self.key: bytes | None = key
        self.n: int = 0

    def has_key(self) -> bool:
        return self.key is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt under the next nonce; LocalError once the nonce space is used up."""
        if self.key is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise LocalError("noise: nonce space exhausted; rekey or start a new session")
        out = crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _nonce(self.n), self.key)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt under the next nonce; NoiseError (and ``n`` unchanged) if it fails."""
        if self.key is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise NoiseError("noise: nonce space exhausted")
        if len(ciphertext) < TAGLEN:
            raise NoiseError("noise: ciphertext shorter than its tag")
        try:
            out = crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _nonce(self.n), self.key
            )
        except nacl.exceptions.CryptoError:
            raise NoiseError("noise: decryption failed") from None
        self.n += 1
        return out

    def __repr__(self) -> str:  # never show the key
        return f"CipherState(keyed={self.key is not None}, n={self.n})"
