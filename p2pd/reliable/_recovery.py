"""Sent-packet bookkeeping and loss detection (RFC 9002 sections 5-6).

Theory of operation
-------------------
Only ack-eliciting packets are tracked (ACK-only packets are neither retransmitted nor
counted in flight).  Each :class:`SentPacket` records what it carried, so that when it is
acknowledged or declared lost the channel can mark those stream ranges acknowledged or
queue them again.  Packets live in a dict by number, and in a deque in number order.

On an ACK (ranges of packet numbers, highest first):

1. every tracked packet in the ranges is newly acknowledged; ranges below the oldest
   tracked packet are skipped, so old ranges repeated in every ACK cost nothing;
2. if the largest acknowledged number is newly acknowledged and a newly acknowledged
   packet was ack-eliciting, ``now - time_sent`` of that largest one is an RTT sample
   (RFC 9002 5.1; the number was used once, so the sample is unambiguous).  The largest
   is often one of our ACK-only packets, so their recent send times are kept too;
3. any tracked packet numbered below the largest acknowledged is lost if it is
   ``PACKET_THRESHOLD`` numbers older, or older than ``TIME_THRESHOLD`` x
   max(SRTT, latest RTT); otherwise ``loss_time`` is set to when it will be.

Invariant after every ACK: tracked packets below ``largest_acked`` are at most the
``PACKET_THRESHOLD - 1`` just below it, so the deque front is scanned in O(1) amortised.

The probe timer (RFC 8985's RACK-TLP structure, QUIC's PTO role) runs while anything
is in flight, from the last ack-eliciting packet sent.  First a *tail loss probe* fires
after ``TAIL_PROBE_SRTTS`` x SRTT + MAX_ACK_DELAY + G (so it cannot race the
peer's delayed-ACK timer), so a lost tail (or a lost ACK) costs
about two RTTs rather than an RTO; if that probe is not answered either, the RFC 6298
RTO (+ MAX_ACK_DELAY) fires and doubles at each further expiry.  An ACK that newly
acknowledges a packet re-arms the tail loss probe.  Each expiry sends one probe.
"""

from __future__ import annotations

from collections import deque

from p2pd.reliable._config import (
    GRANULARITY,
    MAX_ACK_DELAY,
    PACKET_THRESHOLD,
    PERSISTENT_CONGESTION_THRESHOLD,
    TAIL_PROBE_SRTTS,
    TIME_THRESHOLD,
)
from p2pd.reliable._rtt import RttEstimator

#: Send times of this many recent ACK-only packets are kept: the peer's ACKs name our
#: newest packet, often an ACK-only one, and RFC 9002 5.1 samples RTT from it.
MAX_ACK_ONLY_TRACKED = 64


class SentPacket:
    """One ack-eliciting packet in flight and what it carried."""

    __slots__ = ("close", "done", "pn", "ranges", "size", "time_sent", "window_used")

    def __init__(
        self,
        pn: int,
        time_sent: float,
        size: int,
        ranges: list[tuple[int, int]],
        *,
        close: bool,
        window_used: bool,
    ) -> None:
        self.pn = pn
        self.window_used = window_used
        self.time_sent = time_sent
        self.size = size
        self.ranges = ranges
        self.close = close
        self.done = False


class Recovery:
    """Packets in flight of one sender, and which of them an ACK acknowledged or lost."""

    def __init__(self, rtt: RttEstimator) -> None:
        self.rtt = rtt
        self._sent: dict[int, SentPacket] = {}
        self._order: deque[SentPacket] = deque()
        self._ack_only: deque[tuple[int, float]] = deque()
        self.largest_acked = -1
        self.loss_time: float | None = None
        self.last_ack_eliciting_time = 0.0
        self.packets_lost = 0
        self.persistent_congestion = False
        self._tail_probe_armed = True

    def __len__(self) -> int:
        return len(self._sent)

    def on_sent(self, packet: SentPacket) -> None:
        self._sent[packet.pn] = packet
        self._order.append(packet)
        self.last_ack_eliciting_time = packet.time_sent

    def on_ack_only_sent(self, pn: int, now: float) -> None:
        """Remember when ACK-only packet ``pn`` left, in case the peer's ACK names it."""
        ack_only = self._ack_only
        ack_only.append((pn, now))
        if len(ack_only) > MAX_ACK_ONLY_TRACKED:
            ack_only.popleft()

    def _ack_only_sent_at(self, pn: int) -> float | None:
        ack_only = self._ack_only
        while ack_only and ack_only[0][0] < pn:
            ack_only.popleft()
        if ack_only and ack_only[0][0] == pn:
            return ack_only.popleft()[1]
        return None

    def oldest(self) -> SentPacket | None:
        """The oldest packet still in flight."""
        self._trim()
        return self._order[0] if self._order else None

    def _trim(self) -> None:
        order = self._order
        while order and order[0].done:
            order.popleft()

    def on_ack(
        self, ranges: list[tuple[int, int]], ack_delay: float, now: float
    ) -> tuple[list[SentPacket], list[SentPacket]]:
        """Newly acknowledged and newly lost packets for an ACK frame's ``ranges``."""
        self._trim()
        sent = self._sent
        floor = self._order[0].pn if self._order else ranges[0][1] + 1
        acked: list[SentPacket] = []
        for low, high in reversed(ranges):
            if high < floor:
                continue
            for pn in range(max(low, floor), high + 1):
                packet = sent.pop(pn, None)
                if packet is not None:
                    packet.done = True
                    acked.append(packet)
        largest = ranges[0][1]
        new_largest = largest > self.largest_acked
        self.largest_acked = max(self.largest_acked, largest)
        if not acked:
            return acked, []
        self._tail_probe_armed = True
        sent_at = acked[-1].time_sent if acked[-1].pn == largest else None
        if new_largest and sent_at is None:
            sent_at = self._ack_only_sent_at(largest)
        if sent_at is not None:
            self.rtt.on_ack_sample(now - sent_at, min(ack_delay, MAX_ACK_DELAY))
        return acked, self.detect_lost(now)

    def detect_lost(self, now: float) -> list[SentPacket]:
        """Declare lost what the thresholds say is lost; re-arm ``loss_time``."""
        rtt = self.rtt
        loss_delay = max(TIME_THRESHOLD * max(rtt.latest_rtt, rtt.smoothed), GRANULARITY)
        largest = self.largest_acked
        self.loss_time = None
        lost: list[SentPacket] = []
        contiguous = True
        acked_after_loss = False
        sent = self._sent
        for packet in self._order:
            if packet.pn > largest:
                break
            if packet.done:
                acked_after_loss = bool(lost)
                continue
            deadline = packet.time_sent + loss_delay
            if deadline <= now or packet.pn + PACKET_THRESHOLD <= largest:
                if acked_after_loss:
                    contiguous = False
                del sent[packet.pn]
                packet.done = True
                lost.append(packet)
            elif self.loss_time is None or deadline < self.loss_time:
                self.loss_time = deadline
        self._trim()
        self.packets_lost += len(lost)
        self.persistent_congestion = (
            contiguous
            and len(lost) > 1
            and rtt.srtt is not None
            and lost[-1].time_sent - lost[0].time_sent > self.persistent_congestion_period()
        )
        return lost

    def persistent_congestion_period(self) -> float:
        """RFC 9002 7.6.1: three probe timeouts (without back-off)."""
        rtt = self.rtt
        pto = rtt.smoothed + max(4 * rtt.rttvar, GRANULARITY) + MAX_ACK_DELAY
        return PERSISTENT_CONGESTION_THRESHOLD * pto

    def pto_deadline(self) -> float | None:
        """When the probe timer fires, if anything ack-eliciting is in flight."""
        if not self._sent:
            return None
        rtt = self.rtt
        rto_deadline = self.last_ack_eliciting_time + rtt.rto + MAX_ACK_DELAY
        if self._tail_probe_armed and rtt.srtt is not None:
            wait = TAIL_PROBE_SRTTS * rtt.srtt + MAX_ACK_DELAY + GRANULARITY
            tail_probe = self.last_ack_eliciting_time + wait
            return min(tail_probe, rto_deadline)
        return rto_deadline

    def on_probe_timeout(self) -> bool:
        """The probe timer fired; True if it was the RTO (which the caller backs off)."""
        if self._tail_probe_armed and self.rtt.srtt is not None:
            self._tail_probe_armed = False
            return False
        self.rtt.back_off()
        return True

    def discard_all(self) -> int:
        """Forget every packet in flight (channel closed); returns their total size."""
        size = sum(packet.size for packet in self._sent.values())
        for packet in self._sent.values():
            packet.done = True
        self._sent.clear()
        self._order.clear()
        self.loss_time = None
        return size
