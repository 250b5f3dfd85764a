"""Keys and tags for the WAN paths, split off the passphrase's ``tag_key`` by keyed BLAKE2b.

Why here and not in :mod:`p2pd.derive`: the derivation's sub-keys are pinned by known-answer
vectors; these come one step later, each from an existing sub-key and an ASCII context of its
own, so adding a path never changes an existing key.  Every holder of the passphrase computes
the same values; a non-holder sees only their outputs (a relay tag, a probe MAC) and learns
nothing it could not learn from the epoch tags already on the wire.
"""

from __future__ import annotations

import hashlib

from p2pd.errors import LocalError

#: Contexts, one per purpose; never reuse one for another purpose.
PUNCH_CONTEXT = b"p2pd v1 punch key"
RELAY_TAG_CONTEXT = b"p2pd v1 relay tag"
OFFER_CONTEXT = b"p2pd v1 offer key"

KEY_SIZE = 32
RELAY_TAG_SIZE = 16
MAX_EPOCH = 2**64 - 1


def _keyed(key: bytes, data: bytes, size: int) -> bytes:
    if len(key) != KEY_SIZE:
        raise LocalError(f"sub-key source must be {KEY_SIZE} bytes, got {len(key)}")
    return hashlib.blake2b(data, key=key, digest_size=size).digest()


def punch_key(tag_key: bytes) -> bytes:
    """MAC key of hole-punching probes (:mod:`transports.punch`)."""
    return _keyed(tag_key, PUNCH_CONTEXT, KEY_SIZE)


def offer_key(tag_key: bytes) -> bytes:
    """XChaCha20-Poly1305 key that seals offers (:mod:`p2pd.offer`)."""
    return _keyed(tag_key, OFFER_CONTEXT, KEY_SIZE)


def relay_tag(tag_key: bytes, epoch: int) -> bytes:
    """The 16-byte name under which the peers of one passphrase meet at a relay in ``epoch``.

    ``epoch`` is :func:`p2pd.tags.epoch_of` of the wall clock: the tag rotates with the
    early-drop tags, so a relay cannot link one passphrase's registrations across epochs
    by the tag alone.
    """
    if not 0 <= epoch <= MAX_EPOCH:
        raise LocalError(f"epoch {epoch} does not fit in a u64")
    return _keyed(tag_key, RELAY_TAG_CONTEXT + epoch.to_bytes(8, "little"), RELAY_TAG_SIZE)
