"""The reliable, ordered message channel: a sans-IO state machine over a datagram session.

Theory of operation
-------------------
Below the channel, an encrypted session carries plaintexts of up to ``max_plaintext``
bytes that may be lost, reordered or duplicated, never forged.  Above it, the caller
sends whole messages and receives them exactly once, in order.  The pieces:

* :mod:`._send` and :mod:`._reassembly`: one byte stream per direction carrying
  ``length u32 · message`` records; fixed STREAM ranges, reassembly into preallocated
  buffers, a receive window advertised in every ACK (flow control).
* :mod:`._acks`: which packet numbers arrived; ACK every 2nd packet, after
  ``ack_delay``, or at once on reordering.
* :mod:`._recovery` and :mod:`._rtt`: loss detection by packet and time thresholds,
  RFC 6298 RTO, probe timeout with back-off.
* :mod:`._congestion`: NewReno window and the pacer; ACK-only packets and probes bypass
  both.
* :mod:`._packetizer`: what goes into each packet.

Like aioquic's ``QuicConnection``, the channel never reads a clock: every entry point
takes ``now``, :meth:`Channel.get_timer` says when :meth:`Channel.handle_timer` must run,
and after anything happens the driver calls :meth:`Channel.datagrams_to_send` and
drains :meth:`Channel.next_event`.

Closing (states and their one table of transitions live in :mod:`._state`): ``close()``
or the peer's CLOSE moves OPEN to CLOSING, where no new message is accepted, queued ones
are still delivered, and each side sends CLOSE carrying its stream's final offset
(retransmitted until acknowledged, like data). When all our data is acknowledged and the
peer's stream was received up to its final offset, nothing more can happen to the
messages: the channel reports ``ChannelClosed("closed")`` and enters CLOSED. There it
lingers, still retransmitting its own CLOSE until acknowledged (the peer needs it to
finish) and acknowledging the peer's, for at least ``CLOSE_LINGER_RTOS`` RTOs and at
most ``idle_timeout``; then it is TERMINATED (``get_timer()`` returns None). So neither
side's report waits on the last ACK of the exchange (the two generals' problem): a lost
final ACK only makes the peer retransmit its CLOSE a little longer. Drivers should keep
calling the channel until ``get_timer()`` returns None. Hearing nothing for
``idle_timeout`` ends the channel with reason "idle"; a peer that breaks message
framing, with "protocol_error".
"""

from __future__ import annotations

from collections import deque

from p2pd.errors import BadFrame, LocalError
from p2pd.reliable._acks import AckTracker
from p2pd.reliable._config import (
    CLOSE_LINGER_RTOS,
    GRANULARITY,
    INITIAL_WINDOW,
    MAX_MESSAGE_SIZE,
    MAX_PLAINTEXT,
    MAX_PLAINTEXT_LIMIT,
    MIN_PLAINTEXT,
    ChannelConfig,
)
from p2pd.reliable._congestion import NewReno, Pacer
from p2pd.reliable._events import (
    REASON_CLOSED,
    REASON_IDLE,
    REASON_PROTOCOL_ERROR,
    ChannelClosed,
    Event,
    MessageDelivered,
    MessageReceived,
)
from p2pd.reliable._frames import AckFrame, CloseFrame, Frame, StreamFrame, parse_packet_untrusted
from p2pd.reliable._packetizer import Packetizer
from p2pd.reliable._reassembly import Reassembler
from p2pd.reliable._recovery import Recovery, SentPacket
from p2pd.reliable._rtt import RttEstimator
from p2pd.reliable._send import SendStream
from p2pd.reliable._state import State, Trigger, next_state


class Channel:
    """One endpoint of a reliable, ordered message channel (sans-IO)."""

    def __init__(
        self, *, now: float, max_plaintext: int = MAX_PLAINTEXT, config: ChannelConfig | None = None
    ) -> None:
        if not MIN_PLAINTEXT <= max_plaintext <= MAX_PLAINTEXT_LIMIT:
            raise LocalError(f"max_plaintext must be in [{MIN_PLAINTEXT}, {MAX_PLAINTEXT_LIMIT}]")
        self.config = config = config or ChannelConfig()
        self._state = State.OPEN
        self._events: deque[Event] = deque()
        self._rtt = RttEstimator(
            initial_rto=config.initial_rto, min_rto=config.min_rto, max_rto=config.max_rto
        )
        self._cc = NewReno(max_plaintext)
        self._pacer = Pacer(
            max_datagram_size=max_plaintext,
            burst_packets=config.pacing_burst_packets,
            burst_time=config.pacing_burst_time,
            now=now,
        )
        self._recovery = Recovery(self._rtt)
        self._acks = AckTracker(config.ack_delay)
        self._stream = SendStream()
        self._reassembler = Reassembler(config.recv_window, self._on_message)
        self._packetizer = Packetizer(max_plaintext, self._stream, self._acks, self._reassembler)
        self._peer_max_data = INITIAL_WINDOW
        self._final_offset = 0
        self._close_pending = False
        self._close_acked = False
        self._ping_pending = False
        self._probes = 0
        self._last_sent = now
        self._last_received = now
        self._closed_at = 0.0
        self._counters = dict.fromkeys(
            (
                "packets_received",
                "tail_probes",
                "rto_count",
                "path_changes",
                "messages_sent",
                "messages_received",
            ),
            0,
        )
        self._update_pacing(now)

    # -- public API -----------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def send_message(self, data: bytes, now: float) -> int:
        """Queue ``data`` for delivery; returns its message id (0, 1, 2, ...)."""
        if self._state is not State.OPEN:
            raise LocalError(f"cannot send on a channel that is {self._state.value}")
        if len(data) > MAX_MESSAGE_SIZE:
            raise LocalError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
        if type(data) is not bytes:
            data = bytes(data)
        self._counters["messages_sent"] += 1
        return self._stream.push(data, now)

    def path_changed(self, now: float) -> None:
        """The peer is reached over another path now (roaming, an upgrade, a fallback).

        As QUIC on a new path (RFC 9000 9.4): the old path's round trip and back-off say
        nothing of this one, so the RTT estimate starts afresh, and whatever is in flight
        is probed at once here.  A fallback after a dead path would otherwise wait out an
        RTO doubled by every unanswered probe on the dead one.
        """
        if self._state is State.TERMINATED:
            return
        self._rtt.reset()
        self._update_pacing(now)
        self._counters["path_changes"] += 1
        if len(self._recovery):
            self._probe()

    def close(self, now: float) -> None:
        """Stop accepting messages; deliver what is queued, then close both directions."""
        if self._state is State.OPEN:
            self._begin_closing(Trigger.LOCAL_CLOSE)
            self._check_flushed(now)

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def receive_datagram_untrusted(self, plaintext: bytes, now: float) -> None:
        """Process one authenticated plaintext from the peer; BadFrame if malformed.

        A packet is parsed and checked whole before any of it takes effect, so a
        rejected packet leaves the channel exactly as it was.
        """
        if self._state is State.TERMINATED:
            return
        if type(plaintext) is not bytes:
            plaintext = bytes(plaintext)
        pn, frames = parse_packet_untrusted(plaintext)
        self._check(frames)
        self._last_received = now
        self._counters["packets_received"] += 1
        eliciting = False
        for frame in frames:
            if type(frame) is StreamFrame:
                eliciting = True
                self._on_stream(frame)
            elif type(frame) is AckFrame:
                self._on_ack(frame, now)
            elif type(frame) is CloseFrame:
                eliciting = True
                self._on_close(frame)
            else:
                eliciting = True
        self._acks.on_packet(pn, eliciting, now)
        self._check_flushed(now)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Plaintexts to seal and send now, within the congestion window and pacing."""
        state = self._state
        out: list[bytes] = []
        if state is State.TERMINATED:
            return out
        cc, pacer = self._cc, self._pacer
        while self._has_frames():
            if self._probes > 0:
                self._probes -= 1
            elif not (cc.can_send() and pacer.can_send(now)):
                break
            datagram = self._send_packet(now)
            if datagram is None:
                break
            out.append(datagram)
        if self._acks.due(now):
            if state is not State.OPEN and not self._close_acked:
                # Until our CLOSE is acknowledged, every ACK we owe carries it again: the
                # peer may be waiting for it, pinging us.
                self._close_pending = True
                datagram = self._send_packet(now, control_only=True)
            else:
                datagram = None
            if datagram is None:
                self._recovery.on_ack_only_sent(self._packetizer.next_pn, now)
                datagram = self._packetizer.build_ack_only(now)
                self._last_sent = now
            out.append(datagram)
        return out

    def get_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` must run, or None when terminated."""
        state = self._state
        if state is State.TERMINATED:
            return None
        timer = self._last_received + self.config.idle_timeout
        ack_deadline = self._acks.deadline
        if ack_deadline is not None:
            timer = min(timer, ack_deadline)
        if state is State.CLOSED:
            timer = min(timer, self._linger_end())
        keepalive = self._keepalive_deadline()
        if keepalive is not None:
            timer = min(timer, keepalive)
        loss_time = self._recovery.loss_time
        if loss_time is not None:
            timer = min(timer, loss_time)
        else:
            pto = self._recovery.pto_deadline()
            if pto is not None:
                timer = min(timer, pto)
        if self._probes == 0 and self._cc.can_send() and self._has_frames():
            timer = min(timer, self._pacer.next_send_time())
        return timer

    def handle_timer(self, now: float) -> None:
        """Run whatever :meth:`get_timer` announced (and anything else now due)."""
        state = self._state
        if state is State.TERMINATED:
            return
        if now >= self._last_received + self.config.idle_timeout:
            self._terminate(Trigger.IDLE, REASON_IDLE)
            return
        if state is State.CLOSED and now >= self._linger_end():
            self._transition(Trigger.LINGER_EXPIRED)
            self._cc.discard(self._recovery.discard_all())
            return
        recovery = self._recovery
        if recovery.loss_time is not None:
            if now >= recovery.loss_time:
                lost = recovery.detect_lost(now)
                if lost:
                    self._on_lost(lost, now)
        else:
            pto = recovery.pto_deadline()
            if pto is not None and now >= pto:
                self._on_probe_timeout()
        keepalive = self._keepalive_deadline()
        if keepalive is not None and now >= keepalive:
            self._ping_pending = True

    def _keepalive_deadline(self) -> float | None:
        """When to PING; never while CLOSED, or while packets in flight will be probed."""
        if self._state is State.CLOSED or self._ping_pending or len(self._recovery):
            return None
        return self._last_sent + self.config.keepalive_interval

    @property
    def stats(self) -> dict[str, int | float]:
        """Estimates and counters, for logs and tests (the key names are stable)."""
        rtt, cc = self._rtt, self._cc
        stats: dict[str, int | float] = {
            "srtt": rtt.srtt if rtt.srtt is not None else 0.0,
            "rttvar": rtt.rttvar,
            "min_rtt": rtt.min_rtt if rtt.srtt is not None else 0.0,
            "rto": rtt.rto,
            "cwnd": cc.cwnd,
            "ssthresh": cc.ssthresh,
            "bytes_in_flight": cc.bytes_in_flight,
            "congestion_events": cc.congestion_events,
            "pacing_rate": self._pacer.rate,
            "pacing_burst": self._pacer.depth,
            "packets_lost": self._recovery.packets_lost,
            "duplicates": self._reassembler.duplicates,
            "send_buffered": self._stream.buffered,
            "recv_pending": self._reassembler.pending_bytes,
            "peer_max_data": self._peer_max_data,
        }
        stats.update(self._counters)
        stats.update(self._packetizer.counters())
        return stats

    # -- receiving ------------------------------------------------------------------

    def _check(self, frames: list[Frame]) -> None:
        """Raise BadFrame if any frame contradicts our state; change nothing."""
        reassembler = self._reassembler
        final: int | None = reassembler.final_offset
        close: CloseFrame | None = None
        for frame in frames:
            if type(frame) is CloseFrame:
                close = frame
                final = frame.final_offset
        stream_end = 0
        pending = 0
        for frame in frames:
            if type(frame) is StreamFrame:
                pending += reassembler.check(frame.offset, len(frame.data), final)
                stream_end = max(stream_end, frame.offset + len(frame.data))
            elif type(frame) is AckFrame and frame.ranges[0][1] >= self._packetizer.next_pn:
                raise BadFrame("rel_ack_unsent")
        if pending and reassembler.pending_bytes + pending > reassembler.window:
            raise BadFrame("rel_flow_control")
        if close is not None:
            reassembler.check_final(close.final_offset, stream_end)

    def _on_stream(self, frame: StreamFrame) -> None:
        try:
            self._reassembler.feed(frame.offset, frame.data)
        except BadFrame:
            self._terminate(Trigger.PROTOCOL_ERROR, REASON_PROTOCOL_ERROR)
            raise

    def _on_message(self, data: bytes) -> None:
        self._counters["messages_received"] += 1
        self._events.append(MessageReceived(data))

    def _on_close(self, frame: CloseFrame) -> None:
        self._reassembler.final_offset = frame.final_offset
        self._acks.ack_now()
        if self._state is State.OPEN:
            self._begin_closing(Trigger.PEER_CLOSE)

    def _on_ack(self, frame: AckFrame, now: float) -> None:
        self._peer_max_data = max(self._peer_max_data, frame.max_data)
        acked, lost = self._recovery.on_ack(frame.ranges, frame.ack_delay, now)
        if not acked:
            return
        cc, stream = self._cc, self._stream
        for packet in acked:
            cc.on_acked(packet.size, packet.pn, packet.window_used)
            for offset, length in packet.ranges:
                stream.on_acked(offset, length)
            if packet.close:
                self._close_acked = True
        for message_id, elapsed in stream.delivered(now):
            self._events.append(MessageDelivered(message_id, elapsed))
        if lost:
            self._on_lost(lost, now)
        else:
            self._update_pacing(now)

    def _on_lost(self, lost: list[SentPacket], now: float) -> None:
        stream = self._stream
        size = 0
        for packet in lost:
            size += packet.size
            for offset, length in packet.ranges:
                stream.on_lost(offset, length)
            if packet.close and not self._close_acked:
                self._close_pending = True
        self._cc.on_lost(
            size, lost[-1].pn, self._packetizer.next_pn, self._recovery.persistent_congestion
        )
        self._update_pacing(now)

    def _on_probe_timeout(self) -> None:
        """Send one ack-eliciting probe, preferably the oldest data (RFC 9002 6.2.4)."""
        if self._recovery.on_probe_timeout():
            self._counters["rto_count"] += 1
        else:
            self._counters["tail_probes"] += 1
        self._probe()

    def _probe(self) -> None:
        """Send one ack-eliciting probe next, preferably the oldest data in flight."""
        self._probes = 1
        oldest = self._recovery.oldest()
        if oldest is not None:
            for offset, length in oldest.ranges:
                self._stream.on_lost(offset, length)
            if oldest.close and not self._close_acked:
                self._close_pending = True
        if not self._has_frames():
            self._ping_pending = True

    def _update_pacing(self, now: float) -> None:
        config, cc = self.config, self._cc
        gain = config.pacing_gain_slow_start if cc.in_slow_start else config.pacing_gain
        srtt = max(self._rtt.smoothed, GRANULARITY)
        self._pacer.set_rate(gain * cc.cwnd / srtt, now)

    # -- sending --------------------------------------------------------------------

    def _has_frames(self) -> bool:
        """Something ack-eliciting waits to be sent."""
        stream = self._stream
        return (
            self._close_pending
            or self._ping_pending
            or stream.new_data_available(self._peer_max_data)
            or stream.next_lost() is not None
        )

    def _send_packet(self, now: float, *, control_only: bool = False) -> bytes | None:
        """Build the next packet and account for it in flight."""
        built = self._packetizer.build(
            now,
            close_offset=self._final_offset if self._close_pending else None,
            ping=self._ping_pending,
            peer_max_data=self._peer_max_data,
            stream=not control_only,
        )
        if built is None:
            return None
        datagram, packet = built
        if packet is not None:
            if packet.close:
                self._close_pending = False
            self._ping_pending = False
            packet.window_used = self._cc.on_sent(packet.size)
            self._recovery.on_sent(packet)
            self._pacer.on_sent(packet.size)
        self._last_sent = now
        return datagram

    # -- closing --------------------------------------------------------------------

    def _transition(self, trigger: Trigger) -> None:
        self._state = next_state(self._state, trigger)

    def _begin_closing(self, trigger: Trigger) -> None:
        self._transition(trigger)
        self._final_offset = self._stream.end
        self._close_pending = True

    def _check_flushed(self, now: float) -> None:
        if (
            self._state is State.CLOSING
            and self._stream.snd_una == self._final_offset
            and self._reassembler.complete
        ):
            self._transition(Trigger.FLUSHED)
            self._closed_at = now
            self._ping_pending = False
            self._events.append(ChannelClosed(REASON_CLOSED))

    def _linger_end(self) -> float:
        """When a CLOSED channel terminates: a few RTOs once our CLOSE is acknowledged."""
        if self._close_acked:
            return self._closed_at + CLOSE_LINGER_RTOS * self._rtt.rto
        return self._closed_at + self.config.idle_timeout

    def _terminate(self, trigger: Trigger, reason: str) -> None:
        if self._state is not State.CLOSED:
            self._events.append(ChannelClosed(reason))
        self._transition(trigger)
        self._cc.discard(self._recovery.discard_all())
