"""Offers: a short, expiring, sealed text that tells a peer where to find us.

Theory of operation
-------------------
``p2pd offer`` prints the candidates this node found (a mapped WAN address, a STUN-reflexive
address, a LAN address...) so that a peer can be pointed at them by hand, through any chat or
a QR code, when no rendezvous works.  Anyone may see the text; only holders of the passphrase
can open it.  An offer never contains the passphrase or a key.

Wire form, outermost first::

    text      = "P2PD" VERSION BASE32(sealed)        (RFC 4648 base32, upper case, no padding)
    sealed    = nonce(24) || XChaCha20-Poly1305(offer_key, nonce, plaintext, AD)
    AD        = b"p2pd offer v1"
    plaintext = CBOR map {1: exp, 2: candidates, 3: resume (optional)}
    candidates = one byte string, records back to back:
                 kind(1) || ip(4 or 16) || port(2, big-endian)
    kind      = path rank (transports.base.PATHS) | 0x80 when the address is IPv6

Why this shape:

* Upper-case base32 uses only ``A-Z2-7``: it is inside QR alphanumeric mode (5.5 bits per
  module pair instead of 8), needs no quoting in any shell, and a double click selects the
  whole of it in a terminal.  Parsing ignores case and whitespace, so a retyped or
  line-wrapped offer still opens.
* The format version is the text prefix (and part of the associated data), not a CBOR field:
  a newer offer is recognised as newer before any decryption, with its own clear error, and
  the plaintext spends no bytes on it.  Minor additions go in new map keys, which this
  version ignores.
* Addresses are packed binary records in one byte string, not CBOR strings or arrays: three
  IPv4 candidates take 21 bytes, so the whole offer is 117 characters (measured in the tests).
* ``exp`` is wall time (Unix seconds), like the epoch tags: two machines that never talked
  agree only on the wall clock.  An offer is accepted until ``exp`` plus :data:`CLOCK_SKEW`.
* ``resume`` (the "hybrid form") is a token of at most :data:`MAX_RESUME` bytes.  ``p2pd
  offer`` puts its node's static public key there (:data:`RESUME_KEY_SIZE` bytes): the
  joiner goes straight to the offered candidates and completes a session with that node
  only (a passphrase holder elsewhere on the network is refused), so a re-join after a
  drop lands on the same peer at once; when none of the candidates answers, the joiner's
  other paths (LAN, assists) still run.  This module only carries it, authenticated and
  secret; the node enforces it (``NodeConfig.expect_peer``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
)
from nacl.exceptions import CryptoError

from p2pd import vaddr
from p2pd.errors import LocalError
from p2pd.subkeys import offer_key
from p2pd.tags import TAG_EPOCH_SECONDS
from transports.base import PATHS, Candidate

#: Text prefix; the character after it is the format version.
MAGIC = "P2PD"
#: This module's format version (one base32-safe character after :data:`MAGIC`).
VERSION = "1"
#: Prefix of every offer this version makes.
PREFIX = MAGIC + VERSION
#: Associated data binding the ciphertext to this format and purpose.
ASSOCIATED_DATA = b"p2pd offer v1"
#: XChaCha20 nonce: 24 random bytes, large enough that random nonces never collide.
NONCE_SIZE: int = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#: Poly1305 tag appended to the ciphertext.
MAC_SIZE: int = crypto_aead_xchacha20poly1305_ietf_ABYTES
#: Default lifetime (one hour): long enough to pass an offer through a chat, short enough that
#: stale NAT mappings are not tried the next day.
DEFAULT_TTL = 3600.0
#: Longest lifetime accepted: an offer is a rendezvous, not a directory entry.
MAX_TTL = 7 * 24 * 3600.0
#: Clock difference tolerated between the two machines, as for the epoch tags.
CLOCK_SKEW = TAG_EPOCH_SECONDS
#: Most candidates in one offer: keeps the text and its QR code small.
MAX_CANDIDATES = 8
#: Longest resume token carried.
MAX_RESUME = 64
#: A resume token of this size is a node's static X25519 public key (see the module doc).
RESUME_KEY_SIZE = 32
#: Longest text even tried: bounds the work a pasted blob can cause.
MAX_TEXT = 1024

#: CBOR map keys.
KEY_EXPIRES = 1
KEY_CANDIDATES = 2
KEY_RESUME = 3

#: Bit of the record kind byte marking an IPv6 address; the low bits are the path rank.
KIND_IPV6 = 0x80
IPV4_SIZE = 4
IPV6_SIZE = 16
PORT_SIZE = 2
MAX_PORT = 0xFFFF


class OfferError(LocalError):
    """An offer cannot be made or opened; the message says why in one line."""


class OfferMalformedError(OfferError):
    """The text is not a p2pd offer (mistyped, truncated) or its content is invalid."""


class OfferAuthError(OfferError):
    """The offer does not open under this passphrase: another passphrase, or altered text."""


class OfferExpiredError(OfferError):
    """The offer's lifetime is over."""


class OfferVersionError(OfferError):
    """The offer was made by a newer p2pd, in a format this version cannot read."""


@dataclass(frozen=True, slots=True)
class Offer:
    """An opened offer: where the peer may answer, until when (Unix seconds), and its token."""

    candidates: tuple[Candidate, ...]
    expires_at: float
    resume: bytes | None = None


def _pack_candidate(candidate: Candidate) -> bytes:
    host, port = candidate.addr
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise OfferError(f"offer candidates must be IP addresses, not {host!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise OfferError(f"a scoped address ({host}) means nothing to a remote peer")
    if vaddr.parse(candidate.addr) is not None:
        raise OfferError(f"a virtual address ({host}) means nothing to a remote peer")
    if not 0 < port <= MAX_PORT:
        raise OfferError(f"port {port} is out of range")
    kind = candidate.rank | (KIND_IPV6 if ip.version == 6 else 0)
    return bytes([kind]) + ip.packed + port.to_bytes(PORT_SIZE, "big")


def _unpack_candidates(blob: bytes) -> tuple[Candidate, ...]:
    out: list[Candidate] = []
    position = 0
    while position < len(blob):
        kind = blob[position]
        rank = kind & ~KIND_IPV6
        if rank >= len(PATHS):
            raise OfferMalformedError("this offer names an unknown kind of address")
        size = IPV6_SIZE if kind & KIND_IPV6 else IPV4_SIZE
        end = position + 1 + size + PORT_SIZE
        if end > len(blob):
            raise OfferMalformedError("this offer's address list is truncated")
        raw_ip = blob[position + 1 : position + 1 + size]
        ip = ipaddress.IPv6Address(raw_ip) if size == IPV6_SIZE else ipaddress.IPv4Address(raw_ip)
        port = int.from_bytes(blob[end - PORT_SIZE : end], "big")
        if port == 0:
            raise OfferMalformedError("this offer names port 0")
        out.append(Candidate(addr=(str(ip), port), path=PATHS[rank], found_at=0.0))
        position = end
    if len(out) > MAX_CANDIDATES:
        raise OfferMalformedError(f"this offer has more than {MAX_CANDIDATES} addresses")
    return tuple(out)


def make_offer(
    tag_key: bytes,
    candidates: Sequence[Candidate],
    *,
    now_wall: float,
    ttl: float = DEFAULT_TTL,
    resume: bytes | None = None,
) -> str:
    """The offer text for ``candidates``, valid for ``ttl`` seconds from ``now_wall``.

    ``tag_key`` is ``Params.tag_key`` of the passphrase; the offer is sealed under
    :func:`p2pd.subkeys.offer_key` of it.  Raises :class:`OfferError` for what cannot be
    carried (no or too many candidates, host names, a lifetime out of range, a long token).
    """
    if not candidates:
        raise OfferError("an offer needs at least one address; none was found")
    if len(candidates) > MAX_CANDIDATES:
        raise OfferError(f"an offer carries at most {MAX_CANDIDATES} addresses")
    if not 0 < ttl <= MAX_TTL:
        raise OfferError(f"an offer's lifetime must be between 0 and {MAX_TTL:.0f} s")
    if resume is not None and not 0 < len(resume) <= MAX_RESUME:
        raise OfferError(f"a resume token is 1 to {MAX_RESUME} bytes")
    plain: dict[int, Any] = {
        KEY_EXPIRES: int(now_wall + ttl),
        KEY_CANDIDATES: b"".join(_pack_candidate(c) for c in candidates),
    }
    if resume is not None:
        plain[KEY_RESUME] = bytes(resume)
    nonce = os.urandom(NONCE_SIZE)
    sealed = nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(
        cbor2.dumps(plain), ASSOCIATED_DATA, nonce, offer_key(tag_key)
    )
    return PREFIX + base64.b32encode(sealed).decode("ascii").rstrip("=")


def _sealed_from_text(text: str) -> bytes:
    if len(text) > MAX_TEXT:
        raise OfferMalformedError("this is far too long to be a p2pd offer")
    compact = "".join(text.split()).upper()
    if not compact.startswith(MAGIC) or len(compact) <= len(MAGIC):
        raise OfferMalformedError(f"this is not a p2pd offer (an offer starts with {PREFIX})")
    version = compact[len(MAGIC)]
    if version != VERSION:
        raise OfferVersionError(
            "this offer was made by a newer p2pd (format "
            f"{version}, this one reads {VERSION}); upgrade p2pd to use it"
        )
    body = compact[len(PREFIX) :]
    try:
        sealed = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise OfferMalformedError(
            "this offer is mistyped or truncated (copy it again, whole)"
        ) from None
    if len(sealed) < NONCE_SIZE + MAC_SIZE + 1:
        raise OfferMalformedError("this offer is truncated (copy it again, whole)")
    return sealed


def parse_offer_untrusted(text: str, tag_key: bytes, *, now_wall: float) -> Offer:
    """Open the offer ``text`` under the passphrase's ``tag_key`` and check it is current.

    The text comes from the user, who got it from anywhere: every failure is an
    :class:`OfferError` subclass with a one-line message naming the likely cause.
    """
    sealed = _sealed_from_text(text)
    nonce, ciphertext = sealed[:NONCE_SIZE], sealed[NONCE_SIZE:]
    try:
        plaintext = crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, ASSOCIATED_DATA, nonce, offer_key(tag_key)
        )
    except CryptoError:
        raise OfferAuthError(
            "this offer does not open with this passphrase (wrong passphrase, or altered text)"
        ) from None
    try:
        plain = cbor2.loads(plaintext)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError):
        raise OfferMalformedError(
            "this offer's content is not valid (made by a buggy peer?)"
        ) from None
    if not isinstance(plain, dict):
        raise OfferMalformedError("this offer's content is not a map")
    expires = plain.get(KEY_EXPIRES)
    blob = plain.get(KEY_CANDIDATES)
    resume = plain.get(KEY_RESUME)
    if not isinstance(expires, int) or isinstance(expires, bool) or not isinstance(blob, bytes):
        raise OfferMalformedError("this offer lacks its lifetime or its addresses")
    if resume is not None and not (isinstance(resume, bytes) and 0 < len(resume) <= MAX_RESUME):
        raise OfferMalformedError("this offer's resume token is invalid")
    if now_wall > expires + CLOCK_SKEW:
        minutes = (now_wall - expires) / 60
        raise OfferExpiredError(f"this offer expired {minutes:.0f} min ago; ask for a new one")
    if expires > now_wall + MAX_TTL + CLOCK_SKEW:
        raise OfferMalformedError("this offer claims to be valid for too long (check the clock)")
    candidates = _unpack_candidates(blob)
    if not candidates:
        raise OfferMalformedError("this offer carries no address")
    return Offer(candidates=candidates, expires_at=float(expires), resume=resume)
