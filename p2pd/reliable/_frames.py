"""Wire format of reliable-channel packets: one header, then frames (all little-endian).

Theory of operation
-------------------
A packet is the authenticated plaintext of one session DATA packet::

    packet_number u64 · frame_count u8 · frame x frame_count

Packet numbers start at 0 and are never reused (QUIC), so an acknowledgement names
exactly one transmission and every RTT sample is unambiguous (no Karn's rule needed).
``frame_count`` makes the frames tile the packet exactly: any truncation, even at a
frame boundary, is detected.  Frames:

* ``ACK  0x01 · largest u64 · ack_delay_us u32 · max_data u64 · first_range u16 ·
  range_count u8 · (gap u16 · length u16) x range_count`` -- ranges in descending order;
  the first covers ``[largest - first_range, largest]``; each next range ends ``gap + 1``
  below the previous range's start (``gap`` >= 1 numbers are missing) and spans
  ``length + 1`` numbers.  ``max_data`` is the receive window: the stream offset the
  sender may send up to.
* ``STREAM 0x02 · offset u64 · length u16 · data[length]`` -- ``length`` >= 1.
* ``PING 0x03`` -- elicits an ACK (keepalive, probe).
* ``CLOSE 0x04 · final_offset u64`` -- the sender's stream ends at ``final_offset``.

Every frame but ACK is ack-eliciting.  Parsing here is syntax only; checks against
channel state (window, packet numbers never sent) are the channel's.  Every
:class:`BadFrame` the reliable channel raises has a short ``rel_*`` reason, stable
enough for a driver to count drops under it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from p2pd.errors import BadFrame
from p2pd.reliable._config import MAX_ACK_RANGES

FRAME_ACK = 0x01
FRAME_STREAM = 0x02
FRAME_PING = 0x03
FRAME_CLOSE = 0x04

#: Packet header: packet number u64, frame count u8.
PACKET_HEADER = struct.Struct("<QB")
#: Packet header immediately followed by a STREAM frame header (the common packet).
PACKET_STREAM_HEADER = struct.Struct("<QBBQH")
#: STREAM frame header: type, offset u64, length u16.
STREAM_HEADER = struct.Struct("<BQH")
#: ACK frame fixed part: type, largest, ack delay (us), max_data, first range, range count.
ACK_HEADER = struct.Struct("<BQIQHB")
#: One additional ACK range: gap u16, length u16.
ACK_RANGE = struct.Struct("<HH")
#: CLOSE frame: type, final offset u64.
CLOSE_FRAME = struct.Struct("<BQ")
PING_FRAME = bytes([FRAME_PING])

#: Largest value of the u16 fields (STREAM length, ACK range fields).
MAX_U16 = 0xFFFF
#: Largest ack_delay_us representable.
MAX_U32 = 0xFFFF_FFFF
#: Stream offsets stay below 2**62 (as in QUIC), so offset + length never overflows u64.
MAX_STREAM_OFFSET = (1 << 62) - 1
#: Most frames in one packet (frame_count is a u8).
MAX_FRAMES = 0xFF


class AckFrame(NamedTuple):
    """Acknowledged packet-number ranges ``(low, high)``, highest first, and the window."""

    ranges: list[tuple[int, int]]
    ack_delay: float
    max_data: int


class StreamFrame(NamedTuple):
    offset: int
    data: memoryview


class PingFrame(NamedTuple):
    pass


class CloseFrame(NamedTuple):
    final_offset: int


Frame = AckFrame | StreamFrame | PingFrame | CloseFrame

_PING = PingFrame()


def encode_ack(ranges: list[tuple[int, int]], ack_delay: float, max_data: int) -> bytes:
    """ACK frame for ``ranges`` (descending, disjoint, non-adjacent); drops what won't fit.

    A range longer than a u16 allows is shortened to its top part, and the frame ends
    there: acknowledging a subset is always truthful.
    """
    largest_low, largest = ranges[0]
    first = largest - largest_low
    more: list[bytes] = []
    if first <= MAX_U16:
        previous_low = largest_low
        for low, high in ranges[1:MAX_ACK_RANGES]:
            gap = previous_low - high - 1
            length = high - low
            if gap > MAX_U16:
                break
            if length > MAX_U16:
                more.append(ACK_RANGE.pack(gap, MAX_U16))
                break
            more.append(ACK_RANGE.pack(gap, length))
            previous_low = low
    else:
        first = MAX_U16
    delay_us = min(MAX_U32, max(0, round(ack_delay * 1e6)))
    head = ACK_HEADER.pack(FRAME_ACK, largest, delay_us, max_data, first, len(more))
    return head + b"".join(more)


def encode_close(final_offset: int) -> bytes:
    return CLOSE_FRAME.pack(FRAME_CLOSE, final_offset)


def parse_packet_untrusted(data: bytes) -> tuple[int, list[Frame]]:
    """Packet number and frames of ``data``; :class:`BadFrame` if it is not exactly that.

    STREAM data are memoryview slices of ``data`` (no copy).
    """
    size = len(data)
    if size < PACKET_HEADER.size:
        raise BadFrame("rel_short")
    pn, count = PACKET_HEADER.unpack_from(data, 0)
    if count == 0:
        raise BadFrame("rel_no_frames")
    view = memoryview(data)
    pos = PACKET_HEADER.size
    frames: list[Frame] = []
    for _ in range(count):
        if pos >= size:
            raise BadFrame("rel_frame_count")
        kind = data[pos]
        if kind == FRAME_STREAM:
            if pos + STREAM_HEADER.size > size:
                raise BadFrame("rel_stream_truncated")
            _, offset, length = STREAM_HEADER.unpack_from(data, pos)
            pos += STREAM_HEADER.size
            end = pos + length
            if length == 0 or end > size:
                raise BadFrame("rel_stream_length")
            if offset + length > MAX_STREAM_OFFSET:
                raise BadFrame("rel_stream_offset")
            frames.append(StreamFrame(offset, view[pos:end]))
            pos = end
        elif kind == FRAME_ACK:
            frame, pos = _parse_ack(data, pos, size)
            frames.append(frame)
        elif kind == FRAME_PING:
            frames.append(_PING)
            pos += 1
        elif kind == FRAME_CLOSE:
            if pos + CLOSE_FRAME.size > size:
                raise BadFrame("rel_close_truncated")
            _, final_offset = CLOSE_FRAME.unpack_from(data, pos)
            if final_offset > MAX_STREAM_OFFSET:
                raise BadFrame("rel_close_offset")
            frames.append(CloseFrame(final_offset))
            pos += CLOSE_FRAME.size
        else:
            raise BadFrame("rel_frame_type")
    if pos != size:
        raise BadFrame("rel_trailing")
    return pn, frames


def _parse_ack(data: bytes, pos: int, size: int) -> tuple[AckFrame, int]:
    if pos + ACK_HEADER.size > size:
        raise BadFrame("rel_ack_truncated")
    _, largest, delay_us, max_data, first, count = ACK_HEADER.unpack_from(data, pos)
    pos += ACK_HEADER.size
    if pos + count * ACK_RANGE.size > size:
        raise BadFrame("rel_ack_truncated")
    if max_data > MAX_STREAM_OFFSET:
        raise BadFrame("rel_ack_window")
    low = largest - first
    if low < 0:
        raise BadFrame("rel_ack_range")
    ranges = [(low, largest)]
    for _ in range(count):
        gap, length = ACK_RANGE.unpack_from(data, pos)
        pos += ACK_RANGE.size
        high = low - gap - 1
        low = high - length
        if gap == 0 or low < 0:
            raise BadFrame("rel_ack_range")
        ranges.append((low, high))
    return AckFrame(ranges, delay_us / 1e6, max_data), pos
