"""Early drop: decide a handshake packet's fate before any Diffie-Hellman or allocation.

Theory of operation
-------------------
:meth:`EarlyDrop.classify` runs the cheapest tests first and stops at the first failure,
so that work spent on a packet grows only as the packet proves more::

    1. size, type and reserved bytes, by the fixed length table   -> DROP_SIZE
    2. tag, against three cached tags in constant time (no hash)   -> DROP_TAG
    3. mac1, one BLAKE2b over the packet                           -> DROP_MAC1
    4. under load only: mac2 must be valid for the source address,
       else a COOKIE_REPLY, itself limited per source              -> COOKIE / DROP_RATE
    5. the source's token bucket                                   -> DROP_RATE
    6. ACCEPT: only now may the caller parse the packet and do Diffie-Hellman.

Garbage (anything without a valid tag) therefore costs a length lookup and three
constant-time comparisons, and allocates nothing that outlives the call.  Only packets
with a valid mac1 count towards the global load, since only they could cost a handshake.
Cookie replies draw on their own per-source buckets, so replays sent from a spoofed
address under load cannot spend the real owner's handshake tokens.

Caveat (see :mod:`p2pd.cookie`): a valid tag and mac1 prove knowledge of the passphrase
keys, not freshness; replays of captured packets pass steps 1-3 and are bounded by steps
4-5 and, after ACCEPT, by the handshake itself.

``classify`` is for handshake packets (types 0x01..0x03) only: the driver routes DATA and
COOKIE_REPLY elsewhere, and any other type is DROP_SIZE.  ``wall_time`` is Unix time (for
the tag epochs); ``now`` is monotonic (buckets, load, cookie secret).
"""

from __future__ import annotations

import collections
import enum
import os

from p2pd.cookie import HANDSHAKE_SIZES, RESERVED, CookieChecker, Rng
from p2pd.ratelimit import SourceLimiter
from p2pd.tags import TAG_SIZE, TagChecker
from p2pd.wire import (
    HEADER_SIZE,
    INIT_TAG_OFFSET,
    REPLY_TAG_OFFSET,
    SENDER_INDEX_OFFSET,
    TYPE_HANDSHAKE_FINISH,
    TYPE_HANDSHAKE_INIT,
    TYPE_HANDSHAKE_RESP,
)

#: Where the tag sits in each handshake packet: after the indices (docs/protocol.md).
TAG_OFFSETS = {
    TYPE_HANDSHAKE_INIT: INIT_TAG_OFFSET,
    TYPE_HANDSHAKE_RESP: REPLY_TAG_OFFSET,
    TYPE_HANDSHAKE_FINISH: REPLY_TAG_OFFSET,
}


class Verdict(enum.Enum):
    """What the driver does with a handshake packet; the value names its counter."""

    ACCEPT = "accept"
    DROP_SIZE = "drop_size"
    DROP_TAG = "drop_tag"
    DROP_MAC1 = "drop_mac1"
    DROP_RATE = "drop_rate"
    COOKIE = "cookie"


class EarlyDrop:
    """A responder's gate in front of the handshake (see the module docstring)."""

    __slots__ = ("cookies", "counters", "limiter", "reply_limiter", "tags")

    def __init__(
        self,
        tag_key: bytes,
        mac1_key: bytes,
        cookie_key: bytes,
        *,
        rng: Rng = os.urandom,
        limiter: SourceLimiter | None = None,
        reply_limiter: SourceLimiter | None = None,
    ) -> None:
        self.tags = TagChecker(tag_key)
        self.cookies = CookieChecker(mac1_key, cookie_key, rng)
        #: Per-source handshake buckets; also holds the global load signal.
        self.limiter = limiter if limiter is not None else SourceLimiter()
        #: Per-source buckets for cookie replies.
        self.reply_limiter = reply_limiter if reply_limiter is not None else SourceLimiter()
        #: Packets seen, by :class:`Verdict` value.
        self.counters: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"EarlyDrop(counters={dict(self.counters)})"

    def classify(
        self, packet: bytes, source: tuple[str, int], wall_time: float, now: float
    ) -> tuple[Verdict, bytes | None]:
        """The verdict on ``packet`` from ``source``, and the cookie reply to send if COOKIE."""
        verdict, reply = self._classify(packet, source, wall_time, now)
        self.counters[verdict.value] += 1
        return verdict, reply

    def _classify(
        self, packet: bytes, source: tuple[str, int], wall_time: float, now: float
    ) -> tuple[Verdict, bytes | None]:
        if not packet:
            return Verdict.DROP_SIZE, None
        kind = packet[0]
        if HANDSHAKE_SIZES.get(kind) != len(packet) or packet[1:HEADER_SIZE] != RESERVED:
            return Verdict.DROP_SIZE, None
        tag_at = TAG_OFFSETS[kind]
        if not self.tags.accepts(packet[tag_at : tag_at + TAG_SIZE], wall_time):
            return Verdict.DROP_TAG, None
        if not self.cookies.check_mac1(packet):
            return Verdict.DROP_MAC1, None
        self.limiter.note_handshake(now)
        if self.limiter.under_load(now) and not self.cookies.check_mac2(packet, source, now):
            if not self.reply_limiter.allow(source, now):
                return Verdict.DROP_RATE, None
            index_bytes = packet[SENDER_INDEX_OFFSET : SENDER_INDEX_OFFSET + 4]
            index = int.from_bytes(index_bytes, "little")
            return Verdict.COOKIE, self.cookies.make_reply(packet, source, index, now)
        if not self.limiter.allow(source, now):
            return Verdict.DROP_RATE, None
        return Verdict.ACCEPT, None
