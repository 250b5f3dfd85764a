"""Assembling outgoing packets: packet numbers, and which frames go in each packet.

Theory of operation
-------------------
Each call builds one packet of at most ``max_plaintext`` bytes, filling it in priority
order: a pending ACK (piggybacked, so a busy peer rarely needs ACK-only packets), a
CLOSE, lost STREAM ranges (lowest offset first, each resent whole, never split), then
as many never-sent bytes as fit below the peer's window; a PING only if nothing else
would elicit an ACK.  The packet is one ``bytes.join`` of the header and memoryview
slices of the send stream: one copy per byte, no per-byte work.

Packet numbers increase by one per packet, ACK-only packets included, and are never
reused.  The packetizer does not decide *whether* to send (congestion window, pacing,
probes): that is the channel's job.
"""

from __future__ import annotations

from p2pd.reliable._acks import AckTracker
from p2pd.reliable._frames import (
    CLOSE_FRAME,
    FRAME_STREAM,
    MAX_FRAMES,
    MAX_U16,
    PACKET_HEADER,
    PING_FRAME,
    STREAM_HEADER,
    encode_close,
)
from p2pd.reliable._reassembly import Reassembler
from p2pd.reliable._recovery import SentPacket
from p2pd.reliable._send import SendStream

Parts = list[bytes | memoryview]


class Packetizer:
    """Builds the packets of one channel from its send stream and ACK state."""

    def __init__(
        self,
        max_plaintext: int,
        stream: SendStream,
        acks: AckTracker,
        reassembler: Reassembler,
    ) -> None:
        self._mds = max_plaintext
        self._stream = stream
        self._acks = acks
        self._reassembler = reassembler
        self.next_pn = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.acks_sent = 0
        self.stream_bytes_sent = 0
        self.retransmits = 0
        self.retransmitted_bytes = 0

    def build(
        self,
        now: float,
        *,
        close_offset: int | None,
        ping: bool,
        peer_max_data: int,
        stream: bool = True,
    ) -> tuple[bytes, SentPacket | None] | None:
        """The next packet, and its record if it is ack-eliciting; None if nothing to send.

        ``close_offset`` asks for a CLOSE frame (the record says if it fit), ``ping`` for
        a PING should nothing else be ack-eliciting; ``stream=False`` leaves data out.
        """
        pn = self.next_pn
        parts: Parts = [b""]
        room = self._mds - PACKET_HEADER.size
        count = 0
        if self._acks.pending:
            ack = self._acks.encode(now, self._reassembler.max_data)
            parts.append(ack)
            room -= len(ack)
            count += 1
            self.acks_sent += 1
        close = False
        if close_offset is not None and room >= CLOSE_FRAME.size:
            parts.append(encode_close(close_offset))
            room -= CLOSE_FRAME.size
            count += 1
            close = True
        ranges: list[tuple[int, int]] = []
        if stream and room > STREAM_HEADER.size:
            room, count = self._add_retransmissions(parts, ranges, room, count)
        if (
            stream
            and room > STREAM_HEADER.size
            and count < MAX_FRAMES
            and self._stream.new_data_available(peer_max_data)
        ):
            self._add_new_data(parts, ranges, room, peer_max_data)
            count += 1
        eliciting = close or bool(ranges)
        if not eliciting and ping:
            parts.append(PING_FRAME)
            count += 1
            eliciting = True
        if count == 0:
            return None
        parts[0] = PACKET_HEADER.pack(pn, count)
        datagram = b"".join(parts)
        self.next_pn = pn + 1
        size = len(datagram)
        self.packets_sent += 1
        self.bytes_sent += size
        if not eliciting:
            return datagram, None
        return datagram, SentPacket(pn, now, size, ranges, close=close, window_used=False)

    def _add_retransmissions(
        self, parts: Parts, ranges: list[tuple[int, int]], room: int, count: int
    ) -> tuple[int, int]:
        """Append lost ranges that fit, lowest offset first; returns room and frame count."""
        stream = self._stream
        while room > STREAM_HEADER.size and count < MAX_FRAMES:
            lost = stream.next_lost()
            if lost is None or STREAM_HEADER.size + lost[1] > room:
                break
            offset, length = lost
            stream.pop_lost()
            parts.append(STREAM_HEADER.pack(FRAME_STREAM, offset, length))
            parts.extend(stream.read(offset, length))
            ranges.append(lost)
            room -= STREAM_HEADER.size + length
            count += 1
            self.retransmits += 1
            self.retransmitted_bytes += length
        return room, count

    def _add_new_data(
        self, parts: Parts, ranges: list[tuple[int, int]], room: int, peer_max_data: int
    ) -> None:
        """Append one STREAM frame of never-sent bytes, as many as fit in ``room``."""
        limit = min(room - STREAM_HEADER.size, MAX_U16)
        offset, length, pieces = self._stream.take_new(limit, peer_max_data)
        parts.append(STREAM_HEADER.pack(FRAME_STREAM, offset, length))
        parts.extend(pieces)
        ranges.append((offset, length))
        self.stream_bytes_sent += length

    def build_ack_only(self, now: float) -> bytes:
        """A packet carrying only an ACK frame (not ack-eliciting, not in flight)."""
        pn = self.next_pn
        self.next_pn = pn + 1
        datagram = PACKET_HEADER.pack(pn, 1) + self._acks.encode(now, self._reassembler.max_data)
        self.acks_sent += 1
        self.packets_sent += 1
        self.bytes_sent += len(datagram)
        return datagram

    def counters(self) -> dict[str, int]:
        return {
            "packets_sent": self.packets_sent,
            "bytes_sent": self.bytes_sent,
            "acks_sent": self.acks_sent,
            "stream_bytes_sent": self.stream_bytes_sent,
            "retransmits": self.retransmits,
            "retransmitted_bytes": self.retransmitted_bytes,
        }
