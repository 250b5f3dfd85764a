"""Round-trip time estimation and the retransmission timeout, exactly as RFC 6298.

Theory of operation
-------------------
RFC 6298 section 2, with alpha = 1/8, beta = 1/4, K = 4 and clock granularity G:

* first sample R:  SRTT = R, RTTVAR = R/2
* later sample R': RTTVAR = (1 - beta) RTTVAR + beta |SRTT - R'|  (with the *old* SRTT),
  then SRTT = (1 - alpha) SRTT + alpha R'
* RTO = SRTT + max(G, K RTTVAR), clamped to [min_rto, max_rto]; before any sample RTO is
  the initial RTO (1 s).  Each expiry of the timer doubles RTO (section 5.5, "back off")
  up to max_rto; the next RTT sample recomputes RTO from SRTT and RTTVAR (section 5.7).

Karn's rule (never sample a retransmitted segment) is unnecessary here: a retransmission
travels in a packet with a new number, so an acknowledgement names one transmission.

What we feed the RFC's formulas follows QUIC (RFC 9002 5.3): the peer reports how long
it held the ACK, and that delay is subtracted from the raw sample unless the result
would fall below the smallest RTT seen, so delayed ACKs do not inflate SRTT.
"""

from __future__ import annotations

import math

from p2pd.reliable._config import GRANULARITY, INITIAL_RTO, INITIAL_RTT, MAX_RTO, MIN_RTO

#: RFC 6298 alpha: gain of a new sample in SRTT.
RTT_ALPHA = 1 / 8
#: RFC 6298 beta: gain of a new deviation in RTTVAR.
RTT_BETA = 1 / 4
#: RFC 6298 K: RTTVAR multiplier in RTO.
RTT_K = 4


class RttEstimator:
    """SRTT, RTTVAR and RTO of one path, fed with RTT samples in seconds."""

    def __init__(
        self,
        *,
        initial_rto: float = INITIAL_RTO,
        min_rto: float = MIN_RTO,
        max_rto: float = MAX_RTO,
        granularity: float = GRANULARITY,
    ) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.latest_rtt = 0.0
        self.min_rtt = math.inf
        self._min_rto = min_rto
        self._max_rto = max_rto
        self._granularity = granularity
        self._initial_rto = initial_rto
        self._base_rto = initial_rto
        self._backoff = 0

    def reset(self) -> None:
        """Forget every sample: the path changed (RFC 9000 9.4), its round trip is unknown."""
        self.srtt, self.rttvar, self.latest_rtt, self.min_rtt = None, 0.0, 0.0, math.inf
        self._base_rto, self._backoff = self._initial_rto, 0

    def on_sample(self, rtt: float) -> None:
        """Fold one RTT measurement ``rtt`` into SRTT, RTTVAR and RTO (RFC 6298 2.2-2.3)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - RTT_BETA) * self.rttvar + RTT_BETA * abs(self.srtt - rtt)
            self.srtt = (1 - RTT_ALPHA) * self.srtt + RTT_ALPHA * rtt
        raw = self.srtt + max(self._granularity, RTT_K * self.rttvar)
        self._base_rto = min(self._max_rto, max(self._min_rto, raw))
        self._backoff = 0

    def on_ack_sample(self, latest_rtt: float, ack_delay: float) -> None:
        """Sample from an ACK: the raw RTT minus the peer's reported ACK delay when plausible."""
        self.latest_rtt = latest_rtt
        self.min_rtt = min(self.min_rtt, latest_rtt)
        adjusted = latest_rtt - ack_delay
        self.on_sample(adjusted if adjusted >= self.min_rtt else latest_rtt)

    def back_off(self) -> None:
        """The retransmission timer expired: double RTO (RFC 6298 5.5), up to max_rto."""
        if self.rto < self._max_rto:
            self._backoff += 1

    @property
    def backoff(self) -> int:
        """How many times RTO was doubled since the last sample."""
        return self._backoff

    @property
    def rto(self) -> float:
        """The current retransmission timeout, backed off, in seconds."""
        return min(self._max_rto, self._base_rto * (1 << self._backoff))

    @property
    def smoothed(self) -> float:
        """SRTT, or the initial RTT guess before any sample (for pacing and loss delay)."""
        return self.srtt if self.srtt is not None else INITIAL_RTT
