"""Which packet numbers we received, and when to acknowledge them (the ACK side).

Theory of operation
-------------------
Received packet numbers are kept as disjoint, non-adjacent ranges in ascending order
(two parallel lists); the common case, the next number in sequence, extends the last
range in O(1).  Only the newest ``MAX_TRACKED_RANGES`` ranges are kept: older ones were
reported in many earlier ACKs (we ACK every second packet), and a sender that missed
them all has long since declared those packets lost and resent their data.

ACK timing follows RFC 9000 13.2: acknowledge after ``ACK_ELICITING_THRESHOLD``
ack-eliciting packets, or ``ack_delay`` after the first unacknowledged one, or at once
when a packet arrives out of order (so the sender detects loss quickly).  Packets that
only carry ACKs are recorded but never acknowledged on their own.
"""

from __future__ import annotations

import bisect

from p2pd.reliable._config import ACK_ELICITING_THRESHOLD, MAX_ACK_RANGES
from p2pd.reliable._frames import encode_ack

#: Ranges remembered; one more than an ACK can carry is enough.
MAX_TRACKED_RANGES = MAX_ACK_RANGES + 1


class AckTracker:
    """Received packet numbers and the delayed-ACK state of one receiver."""

    def __init__(self, ack_delay: float) -> None:
        self._ack_delay = ack_delay
        self._lows: list[int] = []
        self._highs: list[int] = []
        self._largest_time = 0.0
        self._unacked = 0
        self._deadline: float | None = None
        self._immediate = False

    def on_packet(self, pn: int, ack_eliciting: bool, now: float) -> None:
        """Record packet ``pn``, received at ``now``."""
        highs = self._highs
        in_order = True
        if highs and pn == highs[-1] + 1:
            highs[-1] = pn
            self._largest_time = now
        elif not highs or pn > highs[-1]:
            in_order = not highs
            self._lows.append(pn)
            highs.append(pn)
            self._largest_time = now
        else:
            in_order = False
            self._insert(pn)
        if len(highs) > MAX_TRACKED_RANGES:
            del self._lows[0], highs[0]
        if ack_eliciting:
            self._unacked += 1
            if self._deadline is None:
                self._deadline = now + self._ack_delay
            if not in_order:
                self._immediate = True

    def _insert(self, pn: int) -> None:
        lows, highs = self._lows, self._highs
        i = bisect.bisect_left(highs, pn)
        if i < len(highs) and lows[i] <= pn:
            return
        joins_next = i < len(highs) and lows[i] == pn + 1
        joins_previous = i > 0 and highs[i - 1] == pn - 1
        if joins_previous and joins_next:
            highs[i - 1] = highs[i]
            del lows[i], highs[i]
        elif joins_previous:
            highs[i - 1] = pn
        elif joins_next:
            lows[i] = pn
        else:
            lows.insert(i, pn)
            highs.insert(i, pn)

    def ack_now(self) -> None:
        """Acknowledge the packet just recorded without delay (it carried a CLOSE)."""
        self._immediate = True

    @property
    def pending(self) -> bool:
        """Ack-eliciting packets arrived since the last ACK we sent."""
        return self._unacked > 0

    def due(self, now: float) -> bool:
        """An ACK must leave now, even on its own."""
        if self._unacked == 0:
            return False
        if self._immediate or self._unacked >= ACK_ELICITING_THRESHOLD:
            return True
        return self._deadline is not None and now >= self._deadline

    @property
    def deadline(self) -> float | None:
        """When the delayed-ACK timer fires, if an ACK is owed."""
        return self._deadline if self._unacked else None

    def encode(self, now: float, max_data: int) -> bytes:
        """An ACK frame for everything tracked; resets the delayed-ACK state."""
        self._unacked = 0
        self._deadline = None
        self._immediate = False
        ranges = list(zip(reversed(self._lows), reversed(self._highs), strict=True))
        return encode_ack(ranges, now - self._largest_time, max_data)

    def ranges(self) -> list[tuple[int, int]]:
        """Tracked ranges, ascending (for tests and stats)."""
        return list(zip(self._lows, self._highs, strict=True))
