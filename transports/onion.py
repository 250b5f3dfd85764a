"""The shared onion identity, and the rules that let two peers meet at one onion address.

Theory of operation
-------------------
**Identity.** Both peers run the same derivation on the same passphrase, so both hold the
same ``Params.onion_seed`` (32 bytes).  It is used as an Ed25519 seed (RFC 8032): the
public key is the v3 onion identity, the address is
``base32(pubkey || SHA3-256(".onion checksum" || pubkey || 0x03)[:2] || 0x03)`` in lower
case plus ``.onion`` (rend-spec-v3, "Encoding onion addresses"), and the key handed to
tor's ``ADD_ONION ED25519-V3:<blob>`` is the base64 of the 64-byte *expanded* secret key:
SHA-512 of the seed with its first half clamped (rend-spec-v3 appendix A.2).  Since we
pass the key, tor never returns it; it lives only in this process and in tor's memory,
never on disk and never in a log (:class:`OnionIdentity` keeps it out of ``repr``).

**Meeting at one address (the tie-break).**  Nothing tells the two peers apart before
they talk: both know the same key.  So each node does both jobs at once:

1. It *publishes* the onion service (an ephemeral ``ADD_ONION``) pointing at a loopback
   listener of its own, and it *connects* to the same address through its SOCKS port.
2. The first bytes on every Tor stream are a hello, ``HELLO_MAGIC || nonce``, with a fresh
   random 16-byte nonce per connect attempt.  The listener keeps the set of nonces its own
   node has sent and not yet settled: a hello carrying one of them is the node reaching
   *itself* (:func:`classify_hello`); it is closed without a reply.  Any other hello is
   the other peer: the listener answers ``ACCEPT`` and the stream carries framed
   datagrams from then on.  The connector waits for ``ACCEPT``; end of stream instead
   means "self" (its own listener refused it) or "failed".
3. When both peers publish the same key, the HSDirs keep one descriptor (the one with the
   higher revision counter, i.e. the later upload), so a connect reaches one publisher.
   The one whose descriptor won reaches itself, the other reaches it: one good stream.
4. Self-connection is not an error but information: "my descriptor is what my tor sees".
   A node that reached itself stops connecting and waits, as the listener, for
   :data:`SELF_WAIT` plus jitter, then connects again.  Reaching itself a second time
   (both peers saw their own descriptor: uploads in the same second split the HSDirs, or
   a cached descriptor), it *withdraws*: removes its service and only connects for
   :data:`WITHDRAW_TIME` plus jitter (its cached descriptor's intro points are gone, so
   tor refetches and finds the other peer's), then publishes again.  The random jitter
   makes "both withdraw at once" a coin flip that each new round repeats independently,
   so the expected number of rounds is small (:func:`plan_after`).
5. A failed connect (no descriptor yet, intro point timeout) is retried with exponential
   backoff and jitter, capped at :data:`RETRY_MAX`; the service stays published.
6. When both streams come up (each peer reached the other, which a split of the HSDirs
   allows), both peers keep the same one, the stream opened with the *lower* connector
   nonce, and close the other (:func:`keep_outbound`); each side knows both nonces (its own
   and the one in the hello it accepted), so they agree without another message.

No deadlock: at every moment a node is connecting (steps 1, 5, the withdrawal) or waiting
a bounded, jittered time (step 4), and its listener accepts throughout.  No
self-connection survives step 2.  Bounded time: the caller wraps the whole rendezvous in
one deadline (:data:`RENDEZVOUS_TIMEOUT`); every step inside is bounded too.  Noise runs
over the surviving stream as path ``tor``; a second stream, a stale one or a stranger's is
only a pipe, since every datagram over it is authenticated by the session.

Why not two keys ("lower" and "upper")?  Both peers would still have to pick one to
publish, with nothing to tell them apart; it moves the coin flip, it does not remove it,
and it doubles the descriptors to publish.  One key and the self-detecting hello let
Tor's own HSDirs break the symmetry in the common case.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field

import nacl.signing

from p2pd.errors import BadFrame, LocalError

#: Bytes of an Ed25519 seed (RFC 8032) and of the onion seed of the derivation.
SEED_SIZE = 32
#: Bytes of an Ed25519 public key, the v3 onion identity.
PUBLIC_KEY_SIZE = 32
#: Version byte of v3 onion addresses.
ONION_VERSION = 3
#: Prefix of the address checksum (rend-spec-v3).
CHECKSUM_PREFIX = b".onion checksum"
#: Bytes of the checksum kept in the address.
CHECKSUM_SIZE = 2
#: Suffix of onion host names.
ONION_SUFFIX = ".onion"
#: Key type tor's ADD_ONION takes for a v3 service key.
KEY_TYPE = "ED25519-V3"

#: First bytes of a hello: names the protocol, so a stray connection is dropped at once.
HELLO_MAGIC = b"p2pT"
#: Random bytes per connect attempt: 128 bits, so two attempts never share a nonce.
NONCE_SIZE = 16
#: Bytes of a whole hello.
HELLO_SIZE = len(HELLO_MAGIC) + NONCE_SIZE
#: The listener's answer to a hello from the other peer; the stream is framing after it.
ACCEPT = b"p2pA"

#: A node that reached itself waits this long (plus jitter) for the other peer to come in:
#: long enough for the other's connect through Tor (a few circuit builds, ~5-15 s; the wait
#: is 8-16 s with jitter).  Shorter than it was (20 s) since a node that reached itself
#: also purges tor's descriptor cache (NEWNYM): its next try sees what the HSDirs hold now.
SELF_WAIT = 8.0
#: A node that withdrew its service only connects for this long (plus jitter) before
#: publishing again: its tor refetches the descriptor (cache purged) and finds the other's.
WITHDRAW_TIME = 12.0
#: First retry delay after a failed connect; doubles per failure.
RETRY_BASE = 2.0
#: Longest retry delay after failed connects: descriptor uploads take seconds.
RETRY_MAX = 30.0
#: Jitter is up to this fraction of a delay, added, so two peers drift apart.
JITTER_FRACTION = 1.0
#: The whole rendezvous gives up after this long and reports Tor as unavailable.
RENDEZVOUS_TIMEOUT = 300.0


def _clamp(scalar: bytearray) -> bytes:
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return bytes(scalar)


def expand_seed(seed: bytes) -> bytes:
    """The 64-byte expanded Ed25519 secret key of ``seed`` (clamped scalar || prefix)."""
    if len(seed) != SEED_SIZE:
        raise LocalError(f"an onion seed is {SEED_SIZE} bytes, not {len(seed)}")
    digest = hashlib.sha512(seed).digest()
    return _clamp(bytearray(digest[:32])) + digest[32:]


def onion_address(public_key: bytes) -> str:
    """The v3 onion address (with ``.onion``) of an Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise LocalError(f"an onion public key is {PUBLIC_KEY_SIZE} bytes")
    version = bytes([ONION_VERSION])
    checksum = hashlib.sha3_256(CHECKSUM_PREFIX + public_key + version).digest()
    raw = public_key + checksum[:CHECKSUM_SIZE] + version
    return base64.b32encode(raw).decode("ascii").lower() + ONION_SUFFIX


def service_id(address: str) -> str:
    """The address without ``.onion``: what tor calls the ServiceID."""
    return address.removesuffix(ONION_SUFFIX)


@dataclass(frozen=True, slots=True)
class OnionIdentity:
    """The shared v3 onion identity; the secret never appears in ``repr``."""

    public_key: bytes
    address: str
    expanded_key: bytes = field(repr=False)

    @classmethod
    def from_seed(cls, seed: bytes) -> OnionIdentity:
        """The identity of ``Params.onion_seed`` (or any 32-byte Ed25519 seed)."""
        expanded = expand_seed(seed)
        public = bytes(nacl.signing.SigningKey(seed).verify_key)
        return cls(public_key=public, address=onion_address(public), expanded_key=expanded)

    @property
    def key_blob(self) -> str:
        """The ``ED25519-V3`` key content of ADD_ONION: base64 of the expanded key."""
        return base64.b64encode(self.expanded_key).decode("ascii")

    @property
    def service_id(self) -> str:
        """The address without ``.onion``, as tor reports it."""
        return service_id(self.address)


# --- the hello -----------------------------------------------------------------------


def encode_hello(nonce: bytes) -> bytes:
    """The first bytes a connector sends on a Tor stream."""
    if len(nonce) != NONCE_SIZE:
        raise LocalError(f"a hello nonce is {NONCE_SIZE} bytes")
    return HELLO_MAGIC + nonce


def parse_hello_untrusted(data: bytes) -> bytes:
    """The nonce of a hello; BadFrame when ``data`` is not one."""
    if len(data) != HELLO_SIZE:
        raise BadFrame("tor_hello_size")
    if data[: len(HELLO_MAGIC)] != HELLO_MAGIC:
        raise BadFrame("tor_hello_magic")
    return data[len(HELLO_MAGIC) :]


class Peer(enum.Enum):
    """Who is at the other end of an accepted stream."""

    SELF = "self"
    OTHER = "other"


def classify_hello(nonce: bytes, own_nonces: Collection[bytes]) -> Peer:
    """SELF when ``nonce`` is one this node sent (it reached its own service)."""
    return Peer.SELF if nonce in own_nonces else Peer.OTHER


def keep_outbound(own_nonce: bytes, peer_nonce: bytes) -> bool:
    """With streams both ways, keep ours (True) iff it was opened with the lower nonce.

    Both peers compare the same two nonces, so they keep the same stream.  Equal nonces
    mean the "peer" is this node; that is never a stream to keep, handled by
    :func:`classify_hello` before this is asked.
    """
    if own_nonce == peer_nonce:
        raise LocalError("equal nonces: a self-connection, not two streams")
    return own_nonce < peer_nonce


# --- what to do after a connect attempt ----------------------------------------------


class Outcome(enum.Enum):
    """How one connect attempt ended."""

    OTHER = "other"
    SELF = "self"
    FAILED = "failed"


class Action(enum.Enum):
    """The next step of a node's rendezvous."""

    DONE = "done"  # a stream to the other peer is up
    RETRY = "retry"  # stay published, connect again after the delay
    WAIT_AS_SERVICE = "wait"  # stay published, only listen for the delay
    WITHDRAW = "withdraw"  # remove the service, only connect for the delay, then publish


@dataclass(frozen=True, slots=True)
class Plan:
    """An action and how long it lasts (seconds)."""

    action: Action
    delay: float


def _jittered(base: float, jitter: float) -> float:
    if not 0.0 <= jitter <= 1.0:
        raise LocalError("jitter is a fraction in [0, 1]")
    return base * (1.0 + JITTER_FRACTION * jitter)


def plan_after(outcome: Outcome, failures: int, selfs: int, jitter: float) -> Plan:
    """The next step after a connect attempt (pure; ``jitter`` is a uniform [0, 1] draw).

    ``failures`` counts consecutive failed attempts including this one; ``selfs`` counts
    self-connections since the node last published, including this one.  The first
    self-connection means "wait as the service"; a second one in the same round (nobody
    came while we waited) means "withdraw" so the other peer's descriptor can be found.
    """
    if outcome is Outcome.OTHER:
        return Plan(Action.DONE, 0.0)
    if outcome is Outcome.SELF:
        if selfs <= 1:
            return Plan(Action.WAIT_AS_SERVICE, _jittered(SELF_WAIT, jitter))
        return Plan(Action.WITHDRAW, _jittered(WITHDRAW_TIME, jitter))
    exponent = max(0, failures - 1)
    base = min(RETRY_MAX, RETRY_BASE * 2.0**exponent)
    return Plan(Action.RETRY, _jittered(base, jitter))
