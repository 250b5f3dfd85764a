"""NewReno congestion control (RFC 9002 section 7) and a token-bucket pacer.

Theory of operation
-------------------
:class:`NewReno` owns ``bytes_in_flight`` and the congestion window ``cwnd``:

* slow start: while cwnd < ssthresh, every acknowledged byte grows cwnd by one byte;
* congestion avoidance: cwnd grows by one datagram per cwnd of acknowledged bytes;
* a loss of a packet sent after the current recovery period began is a congestion
  event: ssthresh = cwnd / 2, cwnd = ssthresh, and a new recovery period starts.
  Recovery periods are delimited by packet number (packets numbered below
  ``recovery_end_pn`` were sent before the reduction), which is what RFC 9002's send
  times express, without ties between packets sent in the same instant;
* persistent congestion (losses spanning 3 probe timeouts, decided by the caller)
  collapses cwnd to the minimum window;
* cwnd does not grow while it is under-used (RFC 9002 7.8): an acknowledged packet grows
  it only if at least half of cwnd was in flight when that packet was sent.

:class:`Pacer` spreads packets at ``rate`` bytes per second with a token bucket whose
depth is the burst allowance, max(``burst_packets`` datagrams, ``burst_time`` x rate).
Invariant: over any interval of length T the pacer releases at most
depth + rate x T bytes, and it never releases a packet unless a full datagram's worth
of tokens is available.
"""

from __future__ import annotations

import math

from p2pd.reliable._config import (
    INITIAL_WINDOW_PACKETS,
    LOSS_REDUCTION_FACTOR,
    MIN_WINDOW_PACKETS,
)

#: Float slack so that a pacer woken exactly at its release time is not refused by rounding.
PACING_EPSILON = 1e-6


class NewReno:
    """Congestion window and bytes in flight of one sender."""

    def __init__(self, max_datagram_size: int) -> None:
        self.max_datagram_size = max_datagram_size
        self.min_window = MIN_WINDOW_PACKETS * max_datagram_size
        self.cwnd = INITIAL_WINDOW_PACKETS * max_datagram_size
        self.ssthresh = math.inf
        self.bytes_in_flight = 0
        self.congestion_events = 0
        self._recovery_end_pn = 0
        self._avoidance_credit = 0

    @property
    def in_slow_start(self) -> bool:
        return self.cwnd < self.ssthresh

    def can_send(self) -> bool:
        """Whether a full-sized datagram fits in the window."""
        return self.bytes_in_flight + self.max_datagram_size <= self.cwnd

    def on_sent(self, size: int) -> bool:
        """A packet of ``size`` bytes left; returns whether it left with cwnd well used."""
        self.bytes_in_flight += size
        return 2 * self.bytes_in_flight >= self.cwnd

    def on_acked(self, size: int, pn: int, window_used: bool) -> None:
        """Packet ``pn`` of ``size`` bytes, sent with ``window_used``, was acknowledged."""
        self.bytes_in_flight -= size
        if pn < self._recovery_end_pn or not window_used:
            return
        if self.cwnd < self.ssthresh:
            self.cwnd += size
            return
        self._avoidance_credit += size
        if self._avoidance_credit >= self.cwnd:
            self._avoidance_credit -= self.cwnd
            self.cwnd += self.max_datagram_size

    def on_lost(self, size: int, largest_lost_pn: int, next_pn: int, persistent: bool) -> None:
        """Packets totalling ``size`` bytes, the newest numbered ``largest_lost_pn``, were lost."""
        self.bytes_in_flight -= size
        if largest_lost_pn >= self._recovery_end_pn:
            self.congestion_events += 1
            self._recovery_end_pn = next_pn
            self.ssthresh = max(self.cwnd * LOSS_REDUCTION_FACTOR, self.min_window)
            self.cwnd = int(self.ssthresh)
            self._avoidance_credit = 0
        if persistent:
            self.cwnd = self.min_window

    def discard(self, size: int) -> None:
        """Forget ``size`` bytes in flight without a congestion signal (channel closed)."""
        self.bytes_in_flight -= size


class Pacer:
    """Token bucket that releases datagrams at ``rate`` bytes/s with a bounded burst."""

    def __init__(
        self, *, max_datagram_size: int, burst_packets: int, burst_time: float, now: float
    ) -> None:
        self._mds = max_datagram_size
        self._min_depth = burst_packets * max_datagram_size
        self._burst_time = burst_time
        self.rate = 0.0
        self.depth = float(self._min_depth)
        self.tokens = self.depth
        self._last = now

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from ``now`` on (tokens earned so far are kept)."""
        self._refill(now)
        self.rate = rate
        self.depth = max(float(self._min_depth), rate * self._burst_time)
        self.tokens = min(self.tokens, self.depth)

    def _refill(self, now: float) -> None:
        if now > self._last:
            self.tokens = min(self.depth, self.tokens + self.rate * (now - self._last))
            self._last = now

    def can_send(self, now: float) -> bool:
        """Whether a full-sized datagram may leave at ``now``."""
        self._refill(now)
        return self.tokens >= self._mds - PACING_EPSILON

    def on_sent(self, size: int) -> None:
        self.tokens -= size

    def next_send_time(self) -> float:
        """When a full-sized datagram may leave (a time already past if it may now)."""
        missing = self._mds - self.tokens
        if missing <= PACING_EPSILON:
            return self._last
        if self.rate <= 0:
            return math.inf
        return self._last + missing / self.rate
