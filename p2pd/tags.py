"""Epoch tags: the first, cheapest test a handshake packet must pass.

Theory of operation
-------------------
Every handshake packet (INIT, RESP, FINISH) carries a 16-byte ``tag`` computed from a
passphrase-derived ``tag_key`` and the current time epoch::

    tag = BLAKE2b(key=tag_key, data=b"p2pd v1 tag" || epoch u64 LE, 16)
    epoch = floor(unix_time / TAG_EPOCH_SECONDS)

A responder keeps the tags of epochs ``e-1, e, e+1`` precomputed (three hashes once per
epoch) and compares an incoming tag with *all three* using :func:`hmac.compare_digest`,
never stopping at the first match.  So the check costs the same for every packet, hashes
nothing in steady state, and says nothing through timing about which epoch matched.

Why tags rotate: a tag is visible on the wire; rotating it every five minutes makes a
captured tag go stale, so a stranger who once saw our traffic cannot keep probing us.
Accepting the neighbouring epochs tolerates several minutes of clock skew between peers.

Invariant: a tag only proves knowledge of ``tag_key`` (hence of the passphrase) within
about +-10 minutes; it does *not* prove freshness, since a replayed packet carries a
valid tag.  Replays are bounded by the per-source rate limits and cookies
(:mod:`p2pd.ratelimit`, :mod:`p2pd.cookie`) and finally rejected by the handshake itself.

Time: this is the **one place in p2pd where wall-clock time matters**.  ``now`` here is
Unix time (the driver passes ``time.time()``), because two peers that never talked must
agree on the epoch; everywhere else ``now`` is a monotonic clock.
"""

from __future__ import annotations

import hashlib
import math
from hmac import compare_digest

from p2pd.errors import LocalError

#: Length of an epoch: a captured tag goes stale within minutes, while +-1 epoch tolerates
#: several minutes of clock skew between peers.
TAG_EPOCH_SECONDS = 300.0
#: How many epochs either side of ours are accepted (1: the previous and the next).
TAG_ACCEPT_EPOCHS = 1
#: Tag length on the wire: 128 bits, as WireGuard's MACs; unguessable by brute force.
TAG_SIZE = 16
#: Size of ``tag_key`` as derive.py produces it.
TAG_KEY_SIZE = 32
#: Domain separation, so a tag is never equal to any other BLAKE2b output of the same key.
TAG_CONTEXT = b"p2pd v1 tag"
#: Epochs are encoded as u64; larger (or negative) values cannot be put on the wire.
MAX_EPOCH = 2**64 - 1


def epoch_of(unix_time: float) -> int:
    """The tag epoch containing ``unix_time`` (seconds since 1970, wall clock)."""
    if not math.isfinite(unix_time) or unix_time < 0:
        raise LocalError(f"wall-clock time must be a finite non-negative number, got {unix_time}")
    return math.floor(unix_time / TAG_EPOCH_SECONDS)


def make_tag(tag_key: bytes, epoch: int) -> bytes:
    """The 16-byte tag of ``epoch`` under ``tag_key``."""
    if len(tag_key) != TAG_KEY_SIZE:
        raise LocalError(f"tag_key must be {TAG_KEY_SIZE} bytes, got {len(tag_key)}")
    if not 0 <= epoch <= MAX_EPOCH:
        raise LocalError(f"epoch {epoch} does not fit in a u64")
    data = TAG_CONTEXT + epoch.to_bytes(8, "little")
    return hashlib.blake2b(data, key=tag_key, digest_size=TAG_SIZE).digest()


class TagChecker:
    """Holds ``tag_key``; checks incoming tags and gives the current one to senders.

    ``now`` is wall-clock Unix time (see the module docstring).
    """

    __slots__ = ("_epoch", "_key", "_window")

    def __init__(self, tag_key: bytes) -> None:
        if len(tag_key) != TAG_KEY_SIZE:
            raise LocalError(f"tag_key must be {TAG_KEY_SIZE} bytes, got {len(tag_key)}")
        self._key = tag_key
        self._epoch: int | None = None
        self._window: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return f"TagChecker(epoch={self._epoch})"

    def _window_at(self, now: float) -> tuple[bytes, ...]:
        epoch = epoch_of(now)
        if epoch != self._epoch:
            # Clamp at 0 rather than shrink the window: the number of comparisons
            # stays 2 * TAG_ACCEPT_EPOCHS + 1 whatever the epoch.
            self._window = tuple(
                make_tag(self._key, max(0, e))
                for e in range(epoch - TAG_ACCEPT_EPOCHS, epoch + TAG_ACCEPT_EPOCHS + 1)
            )
            self._epoch = epoch
        return self._window

    def current(self, now: float) -> bytes:
        """The tag a sender puts in a handshake packet at wall-clock time ``now``."""
        return self._window_at(now)[TAG_ACCEPT_EPOCHS]

    def accepts(self, tag: bytes, now: float) -> bool:
        """Whether ``tag`` is the tag of an epoch within +-TAG_ACCEPT_EPOCHS of ``now``.

        Compares against every tag of the window, without early exit.
        """
        ok = False
        for candidate in self._window_at(now):
            ok = compare_digest(candidate, tag) | ok
        return ok
