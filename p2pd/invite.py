"""Invites: a short-lived, one-time onion that lets a peer without the passphrase connect once.

Theory of operation
-------------------
Two peers that share a passphrase meet at the onion derived from it (:mod:`transports.onion`).
Someone who does not share one yet gets an *invite* instead: ``p2pd invite`` makes

* a fresh random 32-byte Ed25519 seed: the invite's onion service, *not* derived from
  anything, so no public value (the address, a descriptor) can be used to test guesses of
  a passphrase or of the secret, and two invites are never linkable;
* a fresh random 16-byte secret: the session's parameters (Noise pre-shared key, early-drop
  keys...) are ``params_from_master(BLAKE2b-256(key=secret, data=CTX_INVITE))``.  No
  Argon2id here: the secret is 128 random bits, out of reach of guessing with or without a
  costly KDF, and the keyed BLAKE2b with its own context keeps these parameters apart from
  every passphrase's (those come from an Argon2id output and other contexts).

Wire form (the text a person passes on, upper case so a QR code uses alphanumeric mode)::

    P2PD-INVITE:<service id, 56 base32>:<base32(secret || check), 32 chars>:<expiry, unix s>

``check`` is 4 bytes of BLAKE2b over the three fields: it is not a MAC (whoever holds the
invite holds the secret) but typo detection, so a mistyped invite fails here with one clear
line instead of as a handshake that never completes.  The service id carries its own
checksum (rend-spec-v3), checked too.  Parsing ignores case and whitespace (a line-wrapped
or retyped invite still parses).

The invite is a bearer secret until it is used or expires: whoever has the text can connect
in the place of the intended peer.  The inviter therefore withdraws the onion after the
first peer completes the handshake, and exits when the lifetime passes unused; the joiner
refuses an invite past its expiry (plus :data:`CLOCK_SKEW`).  See docs/invite.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Final

from p2pd.derive import Params, params_from_master, subkey
from p2pd.errors import LocalError, P2pdError
from transports.onion import ONION_SUFFIX, SEED_SIZE, OnionIdentity, onion_address

#: Text prefix; a future format gets another one (and this version's error for it).
PREFIX: Final = "P2PD-INVITE:"
#: Bytes of the one-time secret: 128 random bits.
SECRET_SIZE: Final = 16
#: Bytes of the typo check appended to the secret (16 + 4 = 20 bytes: 32 base32 chars, no
#: padding).
CHECK_SIZE: Final = 4
#: Characters of a v3 onion service id (35 bytes in base32).
SERVICE_ID_LENGTH: Final = 56
#: Context of the session's master key; never used for anything else.
CTX_INVITE: Final = b"p2pd v1 invite master"
#: Context of the typo check.
CTX_CHECK: Final = b"p2pd v1 invite check"
#: Default lifetime (``p2pd invite --ttl``): ten minutes to pass the text on and use it.
DEFAULT_TTL: Final = 600.0
#: Longest lifetime: an invite is for a person at hand, not a standing door.
MAX_TTL: Final = 24 * 3600.0
#: Clock difference tolerated between the two machines (the inviter enforces its own
#: lifetime anyway: a joiner's generous clock admits nobody after the inviter left).
CLOCK_SKEW: Final = 60.0
#: Longest text even tried: bounds the work a pasted blob can cause.
MAX_TEXT: Final = 512
#: Most digits of the expiry (unix seconds well past the year 33000).
MAX_EXPIRY_DIGITS: Final = 12


class InviteError(LocalError):
    """An invite cannot be made or used; the message says why in one line (exit code 2)."""


class InviteMalformedError(InviteError):
    """The text is not an invite, or it was mistyped or cut short."""


class InviteExpiredError(InviteError):
    """The invite's lifetime is over: ask for a new one."""


class InviteUnusedError(P2pdError):
    """The lifetime passed and no peer came (or the inviter never answered): exit code 3."""

    exit_code = 3


@dataclass(frozen=True, slots=True)
class Invite:
    """What an invite says: where to connect, the session secret, until when."""

    service_id: str
    secret: bytes = field(repr=False)
    expires_at: int

    @property
    def address(self) -> str:
        """The onion host name (with ``.onion``) the joiner connects to."""
        return self.service_id + ONION_SUFFIX

    def params(self) -> Params:
        """The session parameters both ends derive from the secret."""
        return invite_params(self.secret)

    def text(self) -> str:
        """The invite as a person passes it on."""
        return encode_invite(self)


def invite_master(secret: bytes) -> bytes:
    """``BLAKE2b-256(key=secret, data=CTX_INVITE)``: the master key of an invite's session."""
    if len(secret) != SECRET_SIZE:
        raise InviteError(f"an invite secret is {SECRET_SIZE} bytes, not {len(secret)}")
    return subkey(secret, CTX_INVITE)


def invite_params(secret: bytes) -> Params:
    """The parameter set of an invite's session (pure and cheap; see the module doc)."""
    return params_from_master(invite_master(secret))


def _check(service_id: str, secret: bytes, expires_at: int) -> bytes:
    data = CTX_CHECK + f"{service_id}:{expires_at}:".encode("ascii") + secret
    return hashlib.blake2b(data, digest_size=CHECK_SIZE).digest()


def new_invite(now_wall: float, ttl: float = DEFAULT_TTL) -> tuple[Invite, bytes]:
    """A fresh invite and the onion seed only the inviter keeps (both from os.urandom)."""
    if not 0 < ttl <= MAX_TTL:
        raise InviteError(f"an invite's lifetime must be between 0 and {MAX_TTL:.0f} s")
    seed = os.urandom(SEED_SIZE)
    identity = OnionIdentity.from_seed(seed)
    invite = Invite(identity.service_id, os.urandom(SECRET_SIZE), math.ceil(now_wall + ttl))
    return invite, seed


def encode_invite(invite: Invite) -> str:
    """``P2PD-INVITE:<service id>:<secret and check>:<expiry>``, upper case."""
    blob = invite.secret + _check(invite.service_id, invite.secret, invite.expires_at)
    secret = base64.b32encode(blob).decode("ascii")
    return f"{PREFIX}{invite.service_id.upper()}:{secret}:{invite.expires_at}"


def _service_id_untrusted(text: str) -> str:
    if len(text) != SERVICE_ID_LENGTH:
        raise InviteMalformedError("this invite's onion address is cut short or too long")
    try:
        raw = base64.b32decode(text.upper())
    except (binascii.Error, ValueError):
        raise InviteMalformedError("this invite's onion address is not base32") from None
    service_id = text.lower()
    if onion_address(raw[:32]) != service_id + ONION_SUFFIX:
        raise InviteMalformedError("this invite's onion address is mistyped (its checksum fails)")
    return service_id


def parse_invite_untrusted(text: str, *, now_wall: float) -> Invite:
    """The invite in ``text``; InviteMalformedError or InviteExpiredError with one clear line."""
    if len(text) > MAX_TEXT:
        raise InviteMalformedError("this is not a p2pd invite (far too long)")
    compact = "".join(text.split()).upper()
    if not compact.startswith(PREFIX):
        raise InviteMalformedError(f"this is not a p2pd invite (one starts with {PREFIX})")
    fields = compact[len(PREFIX) :].split(":")
    if len(fields) != 3:
        raise InviteMalformedError("this invite is incomplete: copy the whole line again")
    service_text, secret_text, expiry_text = fields
    service_id = _service_id_untrusted(service_text)
    try:
        blob = base64.b32decode(secret_text)
    except (binascii.Error, ValueError):
        raise InviteMalformedError("this invite's secret is not base32: copy it again") from None
    if len(blob) != SECRET_SIZE + CHECK_SIZE:
        raise InviteMalformedError("this invite's secret is cut short or too long")
    if not expiry_text.isascii() or not expiry_text.isdigit():
        raise InviteMalformedError("this invite's expiry is not a number")
    if len(expiry_text) > MAX_EXPIRY_DIGITS:
        raise InviteMalformedError("this invite's expiry is out of range")
    expires_at = int(expiry_text)
    secret, check = blob[:SECRET_SIZE], blob[SECRET_SIZE:]
    if _check(service_id, secret, expires_at) != check:
        raise InviteMalformedError("this invite is mistyped (its check fails): copy it again")
    if now_wall > expires_at + CLOCK_SKEW:
        minutes = (now_wall - expires_at) / 60
        raise InviteExpiredError(f"this invite expired {minutes:.0f} min ago; ask for a new one")
    if expires_at > now_wall + MAX_TTL + CLOCK_SKEW:
        raise InviteMalformedError("this invite claims to be valid for too long (check the clock)")
    return Invite(service_id, secret, expires_at)
