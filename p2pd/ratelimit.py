"""Token buckets per source address, and the global "under load" signal.

Theory of operation
-------------------
Diffie-Hellman is the expensive part of a handshake, and a handshake packet that passed
the tag and mac1 checks may still be a replay of a captured packet sent from a spoofed
address.  Following WireGuard's ``ratelimiter.c``:

* :class:`TokenBucket` refills at ``rate`` tokens per second up to ``burst``; a packet
  costs one token.  A bucket idle for ``burst / rate`` seconds (0.25 s with the defaults)
  is full again, indistinguishable from a new one.
* :class:`SourceLimiter` keeps one bucket per source: per IPv4 address, per IPv6 /64
  prefix (one host usually owns a whole /64, so finer keys would let it multiply its
  share).  IPv4-mapped IPv6 addresses count as their IPv4 address.  The port is ignored.
  The table is bounded by ``max_sources``; it is kept in least-recently-used order, so
  entries idle for ``SOURCE_IDLE_TIMEOUT`` are collected from its front in amortised O(1),
  and when it is full the stalest entry is evicted.  Because an idle bucket is full, both
  lose nothing but memory, which stays bounded whatever the number of sources.
* :class:`LoadMonitor` reports "under load" when ``UNDER_LOAD_PER_SECOND`` handshake
  packets arrived within a sliding second, and for ``UNDER_LOAD_AFTER_TIME``
  after.  Under load a responder demands cookies (:mod:`p2pd.cookie`).

Everything takes ``now`` (monotonic seconds) as a parameter; nothing here reads a clock.
"""

from __future__ import annotations

import collections
import ipaddress

from p2pd.errors import LocalError

#: Handshake packets per second allowed from one source (WireGuard's PACKETS_PER_SECOND).
PACKETS_PER_SECOND = 20.0
#: Packets a source may send at once before the rate applies (WireGuard's PACKETS_BURSTABLE).
PACKETS_BURSTABLE = 5.0
#: Most sources tracked at once: 4096 small entries, a few hundred KiB at worst.
MAX_SOURCES = 4096
#: A source idle this long is forgotten (WireGuard collects after 1 s); its bucket was full.
SOURCE_IDLE_TIMEOUT = 1.0
#: IPv6 sources are grouped by this prefix length, as WireGuard does.
IPV6_PREFIX_BITS = 64
#: Handshake packets per sliding second that mean "under load".  One responder handshake
#: costs about 0.5 ms of Python and X25519 (about 40 us per DH on the reference machine),
#: so 200/s keeps handshake work near 10% of a core, while honest peers send a handful.
UNDER_LOAD_PER_SECOND = 200
#: Width of the sliding window over which arrivals are counted.
UNDER_LOAD_WINDOW = 1.0
#: Stay under load this long after the last overload (WireGuard's UNDER_LOAD_AFTER_TIME).
UNDER_LOAD_AFTER_TIME = 1.0
#: Float slack, so a source sending at exactly the allowed rate is not refused by rounding.
TOKEN_EPSILON = 1e-9

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def source_ip(host: str) -> Address:
    """The IP address of a source as the socket reported it; IPv4-mapped IPv6 becomes IPv4.

    Raises :class:`LocalError` when ``host`` is not an IP literal: sources come from the
    operating system, so a bad one is the driver's mistake, not the network's.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise LocalError(f"source host must be an IP address literal, got {host!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def bucket_key(host: str) -> bytes:
    """The rate-limiting key of a source: 4 bytes for IPv4, the /64 prefix for IPv6."""
    address = source_ip(host)
    if isinstance(address, ipaddress.IPv4Address):
        return address.packed
    return address.packed[: IPV6_PREFIX_BITS // 8]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; starts full."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        if not rate > 0 or not burst > 0:
            raise LocalError(f"token bucket needs rate > 0 and burst > 0, got {rate}, {burst}")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last: float | None = None

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate}, burst={self._burst}, tokens={self._tokens:.3f})"

    @property
    def last_used(self) -> float | None:
        """The ``now`` of the last :meth:`allow` call, or None if never used."""
        return self._last

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (no side effect)."""
        if self._last is None:
            return self._tokens
        return min(self._burst, self._tokens + max(0.0, now - self._last) * self._rate)

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if available at ``now``; a clock going back refills nothing."""
        if cost < 0:
            raise LocalError(f"cost must be non-negative, got {cost}")
        self._tokens = self.tokens(now)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens + TOKEN_EPSILON >= cost:
            self._tokens = max(0.0, self._tokens - cost)
            return True
        return False


class LoadMonitor:
    """Counts handshake arrivals over a sliding window and says when we are under load.

    Under load means ``per_second`` arrivals within one UNDER_LOAD_WINDOW.  Memory: the
    last ``per_second`` arrival times, no more.
    """

    __slots__ = ("_arrivals", "_last_overload")

    def __init__(self, per_second: int = UNDER_LOAD_PER_SECOND) -> None:
        if per_second < 1:
            raise LocalError(f"per_second must be at least 1, got {per_second}")
        self._arrivals: collections.deque[float] = collections.deque(maxlen=per_second)
        self._last_overload: float | None = None

    def note_arrival(self, now: float) -> None:
        """Record one handshake packet arriving at ``now``."""
        self._arrivals.append(now)
        maxlen = self._arrivals.maxlen
        if len(self._arrivals) == maxlen and now - self._arrivals[0] < UNDER_LOAD_WINDOW:
            self._last_overload = now

    def under_load(self, now: float) -> bool:
        """True within UNDER_LOAD_AFTER_TIME of the last time the rate was exceeded."""
        return self._last_overload is not None and now - self._last_overload < (
            UNDER_LOAD_AFTER_TIME
        )


class SourceLimiter:
    """Per-source token buckets in a bounded table, plus the global load signal."""

    __slots__ = ("_burst", "_idle", "_load", "_max", "_rate", "_table", "evictions")

    def __init__(
        self,
        rate: float = PACKETS_PER_SECOND,
        burst: float = PACKETS_BURSTABLE,
        max_sources: int = MAX_SOURCES,
        idle_timeout: float = SOURCE_IDLE_TIMEOUT,
        under_load_per_second: int = UNDER_LOAD_PER_SECOND,
    ) -> None:
        if max_sources < 1:
            raise LocalError(f"max_sources must be at least 1, got {max_sources}")
        TokenBucket(rate, burst)  # validates rate and burst once, here
        self._rate = rate
        self._burst = burst
        self._max = max_sources
        self._idle = idle_timeout
        self._table: collections.OrderedDict[bytes, TokenBucket] = collections.OrderedDict()
        self._load = LoadMonitor(under_load_per_second)
        #: Entries evicted because the table was full (not counting idle collection).
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"SourceLimiter(sources={len(self._table)}, evictions={self.evictions})"

    def _collect(self, now: float) -> None:
        table = self._table
        while table:
            bucket = next(iter(table.values()))
            last = bucket.last_used
            if last is not None and now - last < self._idle:
                return
            table.popitem(last=False)

    def allow(self, source: tuple[str, int], now: float) -> bool:
        """Spend one token of ``source``'s bucket at ``now``; False means drop the packet."""
        self._collect(now)
        key = bucket_key(source[0])
        table = self._table
        bucket = table.get(key)
        if bucket is None:
            if len(table) >= self._max:
                table.popitem(last=False)
                self.evictions += 1
            bucket = TokenBucket(self._rate, self._burst)
            table[key] = bucket
        else:
            table.move_to_end(key)
        return bucket.allow(now)

    def note_handshake(self, now: float) -> None:
        """Count one handshake packet towards the global load (see :class:`LoadMonitor`)."""
        self._load.note_arrival(now)

    def under_load(self, now: float) -> bool:
        """Whether the handshake rate reached its limit within UNDER_LOAD_AFTER_TIME."""
        return self._load.under_load(now)
