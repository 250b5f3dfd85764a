"""Every constant of the reliable channel, and the few a caller may tune.

Theory of operation
-------------------
The channel is QUIC's loss recovery (RFC 9002) with RFC 6298's retransmission timer
arithmetic, NewReno congestion control with pacing, and a single byte stream carrying
length-prefixed messages.  Constants that both peers must agree on are *protocol*
constants (frame layouts in :mod:`._frames`, :data:`INITIAL_WINDOW`,
:data:`MAX_ACK_DELAY`); the rest only shape local behaviour and live in
:class:`ChannelConfig` so tests and drivers can change them.  ``docs/protocol.md``
("Reliable channel") lists them all with the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pd.errors import LocalError

#: Plaintext bytes per DATA packet: 1280 (IPv6 minimum MTU) - 40 (IPv6) - 8 (UDP) - 32
#: (p2pd DATA header 16 + Poly1305 tag 16), so a packet is never fragmented by IP.
MAX_PLAINTEXT = 1200
#: Smallest usable plaintext: room for the largest ACK frame (148 bytes) beside a header.
MIN_PLAINTEXT = 256
#: Largest usable plaintext: a STREAM frame's length field is a u16.
MAX_PLAINTEXT_LIMIT = 0xFFFF
#: Largest application message: four times the 16 MiB the application promises to use.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Stream bytes the sender may send before it hears the receiver's first window
#: (protocol constant; well above what slow start sends in its first round trips).
INITIAL_WINDOW = 1024 * 1024
#: Out-of-order stream bytes a receiver buffers at most (its advertised window): enough
#: for ~1.3 s of 100 Mbit/s, bounded so a peer cannot make us hold more.
RECV_WINDOW = 16 * 1024 * 1024

#: Delayed-ACK timer (RFC 9000's default max_ack_delay); protocol constant, since the
#: sender's probe timeout must wait at least this long for a delayed ACK.
MAX_ACK_DELAY = 0.025
#: Acknowledge at once after this many ack-eliciting packets (RFC 9000 13.2.2, RFC 1122).
ACK_ELICITING_THRESHOLD = 2
#: Most ACK ranges in one ACK frame (152 bytes); older ranges were acknowledged earlier.
MAX_ACK_RANGES = 32

#: A packet is lost once a packet this many numbers later is acknowledged (RFC 9002).
PACKET_THRESHOLD = 3
#: ... or once it is older than this many RTTs while a later one was acknowledged.
TIME_THRESHOLD = 9 / 8
#: Timer granularity G (RFC 6298, RFC 9002 kGranularity): drivers' timers are ~1 ms precise.
GRANULARITY = 0.001
#: RFC 6298 2.1: RTO before the first RTT sample.
INITIAL_RTO = 1.0
#: RTO floor.  RFC 6298 says 1 s to cover TCP's 200-500 ms delayed ACKs; our peers delay
#: ACKs at most MAX_ACK_DELAY and ACKs are not ambiguous, so Linux's TCP_RTO_MIN (200 ms)
#: keeps spurious timeouts rare while recovering a lost tail 5x sooner.
MIN_RTO = 0.2
#: RFC 6298 2.5: an upper bound on RTO, at least 60 s.
MAX_RTO = 60.0
#: Tail loss probe after this many SRTTs (+ MAX_ACK_DELAY) of silence (RFC 8985 7.2).
TAIL_PROBE_SRTTS = 2
#: RTT used to pace before the first sample (RFC 9002's kInitialRtt).
INITIAL_RTT = 0.333
#: Multiplier of the persistent-congestion period, in probe timeouts (RFC 9002 7.6.1).
PERSISTENT_CONGESTION_THRESHOLD = 3

#: Initial congestion window in packets (RFC 9002 7.2: 10 for 1200-byte datagrams).
INITIAL_WINDOW_PACKETS = 10
#: Smallest congestion window in packets (RFC 9002 7.2).
MIN_WINDOW_PACKETS = 2
#: Multiplicative decrease on a congestion event (NewReno).
LOSS_REDUCTION_FACTOR = 0.5
#: Pacing rate = gain x cwnd / srtt; 1.25 leaves headroom so pacing never caps the window.
PACING_GAIN = 1.25
#: Pacing gain in slow start, where cwnd doubles every RTT (Linux's pacing_ss_ratio 200%).
PACING_GAIN_SLOW_START = 2.0
#: Smallest burst, in full packets, the pacer lets through at once (RFC 9002 7.7 limits
#: bursts to the initial window).
PACING_BURST_PACKETS = 10
#: ... and at high rates, a burst of this much time at the pacing rate, because a driver's
#: timer cannot wake up more often than about once per GRANULARITY (Linux sends ~1 ms TSO
#: bursts for the same reason).
PACING_BURST_TIME = 0.001

#: Send a PING after this long without sending anything (WireGuard's KEEPALIVE_TIMEOUT).
KEEPALIVE_INTERVAL = 10.0
#: Give up after this long without hearing a valid packet: three missed keepalives.
IDLE_TIMEOUT = 30.0
#: After a clean close, keep answering the peer's retransmitted CLOSE for this many
#: RTOs (QUIC's draining period is 3 PTOs), in case our last ACK was lost.  While our
#: own CLOSE is unacknowledged we linger up to the idle timeout, retransmitting it.
CLOSE_LINGER_RTOS = 3


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Local tunables; the defaults are the constants above."""

    recv_window: int = RECV_WINDOW
    ack_delay: float = MAX_ACK_DELAY
    initial_rto: float = INITIAL_RTO
    min_rto: float = MIN_RTO
    max_rto: float = MAX_RTO
    pacing_gain: float = PACING_GAIN
    pacing_gain_slow_start: float = PACING_GAIN_SLOW_START
    pacing_burst_packets: int = PACING_BURST_PACKETS
    pacing_burst_time: float = PACING_BURST_TIME
    keepalive_interval: float = KEEPALIVE_INTERVAL
    idle_timeout: float = IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if self.recv_window < INITIAL_WINDOW:
            raise LocalError(f"recv_window must be at least INITIAL_WINDOW ({INITIAL_WINDOW})")
        if not 0 < self.ack_delay <= MAX_ACK_DELAY:
            raise LocalError(f"ack_delay must be in (0, {MAX_ACK_DELAY}]")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise LocalError("RTO bounds must satisfy 0 < min_rto <= initial_rto <= max_rto")
        if self.pacing_gain < 1 or self.pacing_gain_slow_start < 1:
            raise LocalError("pacing gains below 1 would cap the congestion window")
        if self.pacing_burst_packets < 1 or self.pacing_burst_time < 0:
            raise LocalError("pacing burst must allow at least one packet")
        if not 0 < self.keepalive_interval < self.idle_timeout:
            raise LocalError("keepalive_interval must be positive and below idle_timeout")
