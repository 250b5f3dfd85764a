"""mac1, mac2 and cookie replies: WireGuard's DoS defence for handshake packets.

Theory of operation
-------------------
Every handshake packet ends with ``mac1[16] · mac2[16]`` (docs/protocol.md, "Packets")::

    mac1 = BLAKE2b(key=mac1_key, data=packet[:-32], 16)
    mac2 = BLAKE2b(key=cookie,   data=packet[:-16], 16)   or 16 zero bytes

* ``mac1`` lets a responder drop, for one BLAKE2b and no allocation, anything not made
  by a holder of the passphrase-derived ``mac1_key``.
* Under load (:mod:`p2pd.ratelimit`) the responder also demands a valid ``mac2``.  A
  sender without one gets a COOKIE_REPLY instead of a handshake: the cookie is
  ``BLAKE2b(key=secret, data=source IP packed || port u16 BE, 16)``, where ``secret`` is
  random and replaced every COOKIE_SECRET_MAX_AGE seconds.  Only a sender that really
  receives at that address learns the cookie, so mac2 proves the address is not spoofed.
  The cookie travels encrypted with XChaCha20-Poly1305 under ``cookie_key``, with the
  triggering packet's mac1 as associated data, so a reply is bound to one packet the
  initiator sent and is useless to anyone without the passphrase.

What this does *not* prove: tag and mac1 only prove knowledge of the passphrase-derived
keys, not freshness.  A captured INIT replayed within the tag's epochs passes both; the
per-source rate limits, the cookies (which pin replays to addresses the attacker can
receive at) and finally the handshake's own replay defence are what bound it.

:class:`CookieChecker` is the responder's side, :class:`CookieJar` the initiator's.
Both are sans-IO: ``now`` is monotonic seconds and randomness is injected.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Callable
from hmac import compare_digest

import nacl.exceptions
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from p2pd.errors import BadFrame, LocalError
from p2pd.ratelimit import source_ip
from p2pd.wire import (
    COOKIE_NONCE_SIZE,
    COOKIE_REPLY_SIZE,
    HANDSHAKE_FINISH_SIZE,
    HANDSHAKE_INIT_SIZE,
    HANDSHAKE_RESP_SIZE,
    HEADER_SIZE,
    MAC_SIZE,
    MACS_SIZE,
    MAX_INDEX,
    SENDER_INDEX_OFFSET,
    TYPE_COOKIE_REPLY,
    TYPE_HANDSHAKE_FINISH,
    TYPE_HANDSHAKE_INIT,
    TYPE_HANDSHAKE_RESP,
)
from p2pd.wire import ZERO_MAC as _ZERO_MAC

#: Size of the cookie (a 16-byte BLAKE2b output, as in WireGuard).
COOKIE_SIZE = MAC_SIZE
#: Size of mac1_key, cookie_key and the cookie secret.
KEY_SIZE = 32
#: The cookie secret is replaced this often, so a cookie dies within two minutes (WireGuard).
COOKIE_SECRET_MAX_AGE = 120.0
#: An initiator stops using a cookie this much before the secret could change (WireGuard).
COOKIE_SECRET_LATENCY = 5.0
#: Fixed size of each handshake packet, by type byte (sizes from p2pd.wire).
HANDSHAKE_SIZES = {
    TYPE_HANDSHAKE_INIT: HANDSHAKE_INIT_SIZE,
    TYPE_HANDSHAKE_RESP: HANDSHAKE_RESP_SIZE,
    TYPE_HANDSHAKE_FINISH: HANDSHAKE_FINISH_SIZE,
}
RESERVED = b"\x00\x00\x00"
#: mac1s remembered by a CookieJar: a few handshake attempts in flight (WireGuard keeps 1).
MAX_PENDING_MAC1 = 8

Rng = Callable[[int], bytes]


def _check_key(name: str, key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise LocalError(f"{name} must be {KEY_SIZE} bytes, got {len(key)}")


def _check_macs_room(packet: bytes) -> None:
    if len(packet) < MACS_SIZE:
        raise LocalError(f"packet of {len(packet)} bytes has no room for mac1 and mac2")


def compute_mac1(mac1_key: bytes, packet: bytes) -> bytes:
    """mac1 of a full packet: keyed BLAKE2b over everything before mac1."""
    _check_macs_room(packet)
    return hashlib.blake2b(packet[:-MACS_SIZE], key=mac1_key, digest_size=MAC_SIZE).digest()


def compute_mac2(cookie: bytes, packet: bytes) -> bytes:
    """mac2 of a full packet: keyed BLAKE2b (key = cookie) over everything before mac2."""
    _check_macs_room(packet)
    return hashlib.blake2b(packet[:-MAC_SIZE], key=cookie, digest_size=MAC_SIZE).digest()


def stamp(packet: bytes, mac1_key: bytes, cookie: bytes | None) -> bytes:
    """Return the handshake ``packet`` with mac1 and mac2 filled in.

    ``packet`` is either the full packet (whatever is in its mac slots is replaced) or
    the packet without its last 32 bytes; the type byte tells which.  mac2 is zero when
    ``cookie`` is None.
    """
    _check_key("mac1_key", mac1_key)
    size = HANDSHAKE_SIZES.get(packet[0]) if packet else None
    if size is None:
        raise LocalError("stamp() takes a handshake packet (types 0x01..0x03)")
    if len(packet) == size - MACS_SIZE:
        body = bytes(packet)
    elif len(packet) == size:
        body = bytes(packet[:-MACS_SIZE])
    else:
        raise LocalError(f"handshake packet of type {packet[0]} must be {size} bytes")
    mac1 = hashlib.blake2b(body, key=mac1_key, digest_size=MAC_SIZE).digest()
    if cookie is None:
        return body + mac1 + _ZERO_MAC
    mac2 = hashlib.blake2b(body + mac1, key=cookie, digest_size=MAC_SIZE).digest()
    return body + mac1 + mac2


def source_bytes(source: tuple[str, int]) -> bytes:
    """The bytes a cookie is made from: packed IP (4 or 16 bytes) || port u16 BE."""
    host, port = source
    if not 0 <= port <= 0xFFFF:
        raise LocalError(f"source port out of range: {port}")
    return source_ip(host).packed + port.to_bytes(2, "big")


class CookieChecker:
    """Responder side: checks mac1 and mac2, and builds cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_rng", "_secret", "_secret_born")

    def __init__(self, mac1_key: bytes, cookie_key: bytes, rng: Rng = os.urandom) -> None:
        _check_key("mac1_key", mac1_key)
        _check_key("cookie_key", cookie_key)
        self._mac1_key = mac1_key
        self._cookie_key = cookie_key
        self._rng = rng
        self._secret = b""
        self._secret_born: float | None = None

    def __repr__(self) -> str:
        return f"CookieChecker(secret_born={self._secret_born})"

    def _secret_at(self, now: float) -> bytes:
        born = self._secret_born
        if born is None or not 0 <= now - born < COOKIE_SECRET_MAX_AGE:
            secret = self._rng(KEY_SIZE)
            if len(secret) != KEY_SIZE:
                raise LocalError(f"rng returned {len(secret)} bytes, wanted {KEY_SIZE}")
            self._secret = secret
            self._secret_born = now
        return self._secret

    def cookie_for(self, source: tuple[str, int], now: float) -> bytes:
        """The cookie ``source`` must prove it received, valid until the secret rotates."""
        secret = self._secret_at(now)
        return hashlib.blake2b(source_bytes(source), key=secret, digest_size=COOKIE_SIZE).digest()

    def check_mac1(self, packet: bytes) -> bool:
        """Whether ``packet``'s mac1 is valid (constant time; False if it is too short)."""
        if len(packet) < MACS_SIZE:
            return False
        expected = compute_mac1(self._mac1_key, packet)
        return compare_digest(expected, packet[-MACS_SIZE:-MAC_SIZE])

    def check_mac2(self, packet: bytes, source: tuple[str, int], now: float) -> bool:
        """Whether ``packet``'s mac2 was made with the current cookie of ``source``."""
        if len(packet) < MACS_SIZE:
            return False
        expected = compute_mac2(self.cookie_for(source, now), packet)
        return compare_digest(expected, packet[-MAC_SIZE:])

    def make_reply(
        self, packet: bytes, source: tuple[str, int], receiver_index: int, now: float
    ) -> bytes:
        """A COOKIE_REPLY datagram answering ``packet`` (already checked: mac1 valid).

        ``receiver_index`` is the sender_index of ``packet``.
        """
        _check_macs_room(packet)
        if not 0 <= receiver_index <= MAX_INDEX:
            raise LocalError(f"receiver_index out of u32 range: {receiver_index}")
        nonce = self._rng(COOKIE_NONCE_SIZE)
        if len(nonce) != COOKIE_NONCE_SIZE:
            raise LocalError(f"rng returned {len(nonce)} bytes, wanted {COOKIE_NONCE_SIZE}")
        mac1 = bytes(packet[-MACS_SIZE:-MAC_SIZE])
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
            self.cookie_for(source, now), mac1, nonce, self._cookie_key
        )
        header = bytes([TYPE_COOKIE_REPLY]) + RESERVED + receiver_index.to_bytes(4, "little")
        return header + nonce + sealed


class CookieJar:
    """Initiator side: stamps outgoing handshake packets and keeps the latest cookie.

    It remembers the mac1 of the last packets it stamped, by their sender_index, because
    a cookie reply is encrypted with that mac1 as associated data.
    """

    __slots__ = ("_cookie", "_cookie_at", "_cookie_key", "_mac1_key", "_sent")

    def __init__(self, mac1_key: bytes, cookie_key: bytes) -> None:
        _check_key("mac1_key", mac1_key)
        _check_key("cookie_key", cookie_key)
        self._mac1_key = mac1_key
        self._cookie_key = cookie_key
        self._sent: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cookie: bytes | None = None
        self._cookie_at = 0.0

    def __repr__(self) -> str:
        return f"CookieJar(pending={len(self._sent)}, has_cookie={self._cookie is not None})"

    def cookie(self, now: float) -> bytes | None:
        """The cookie to use for mac2 at ``now``, or None if none or too old."""
        if self._cookie is None:
            return None
        if now - self._cookie_at >= COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY:
            return None
        return self._cookie

    def remember_sent(self, packet: bytes) -> None:
        """Record the mac1 of a stamped handshake ``packet`` about to be sent."""
        _check_macs_room(packet)
        if len(packet) < SENDER_INDEX_OFFSET + 4:
            raise LocalError("packet too short to carry a sender_index")
        index = int.from_bytes(packet[SENDER_INDEX_OFFSET : SENDER_INDEX_OFFSET + 4], "little")
        self._sent[index] = bytes(packet[-MACS_SIZE:-MAC_SIZE])
        self._sent.move_to_end(index)
        while len(self._sent) > MAX_PENDING_MAC1:
            self._sent.popitem(last=False)

    def stamp(self, packet: bytes, now: float) -> bytes:
        """Fill mac1 and mac2 (with the current cookie, if any) and remember mac1."""
        stamped = stamp(packet, self._mac1_key, self.cookie(now))
        self.remember_sent(stamped)
        return stamped

    def consume_reply_untrusted(self, reply: bytes, now: float) -> None:
        """Take the cookie out of a COOKIE_REPLY datagram; BadFrame on anything wrong.

        A reply is accepted once: the mac1 it answers is forgotten after it is used.
        """
        if len(reply) != COOKIE_REPLY_SIZE:
            raise BadFrame("cookie reply has the wrong size")
        if reply[0] != TYPE_COOKIE_REPLY or reply[1:HEADER_SIZE] != RESERVED:
            raise BadFrame("cookie reply has a bad header")
        index = int.from_bytes(reply[HEADER_SIZE : HEADER_SIZE + 4], "little")
        mac1 = self._sent.get(index)
        if mac1 is None:
            raise BadFrame("cookie reply for no packet we sent")
        nonce_at = HEADER_SIZE + 4
        nonce = bytes(reply[nonce_at : nonce_at + COOKIE_NONCE_SIZE])
        sealed = bytes(reply[nonce_at + COOKIE_NONCE_SIZE :])
        try:
            cookie = crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, mac1, nonce, self._cookie_key
            )
        except nacl.exceptions.CryptoError:
            raise BadFrame("cookie reply failed authentication") from None
        del self._sent[index]
        self._cookie = cookie
        self._cookie_at = now
