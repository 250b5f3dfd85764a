"""Receive side of the stream: out-of-order data, in-order delivery, message framing.

Theory of operation
-------------------
The peer's messages travel as one byte stream, each message preceded by its length as a
u32 (little-endian).  ``rcv_next`` is the first stream byte not yet received in order.

* Data at ``rcv_next`` is consumed at once: it is cut into messages, each copied into a
  ``bytearray`` preallocated from its length prefix (one copy per byte, no joins).
* Data beyond ``rcv_next`` waits in ``_pending`` (a memoryview into the received packet,
  no copy), keyed by offset, with a heap of offsets; when ``rcv_next`` reaches them
  they are trimmed of anything already consumed and consumed in turn.
* Flow control: the receiver advertises ``max_data = rcv_next + window``; a frame ending
  past it, or pending bytes above ``window``, is a protocol violation.  So out-of-order
  memory is at most ``window`` bytes, plus the one message being assembled (at most
  ``MAX_MESSAGE_SIZE``, which the application asked for).

Checks (:meth:`check`) never change state, so a channel can validate a whole packet
before applying any of it.  Only a length prefix above ``MAX_MESSAGE_SIZE`` is found while
consuming; the stream is then unusable and :meth:`feed` raises :class:`BadFrame`.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable

from p2pd.errors import BadFrame
from p2pd.reliable._config import MAX_MESSAGE_SIZE

#: Bytes of the length prefix before each message in the stream.
LENGTH_PREFIX = struct.Struct("<I")


class Reassembler:
    """Turns STREAM frame payloads, in any order, into whole messages in order."""

    def __init__(self, window: int, on_message: Callable[[bytes], None]) -> None:
        self.window = window
        self.rcv_next = 0
        self.highest = 0
        self.final_offset: int | None = None
        self.duplicates = 0
        self._on_message = on_message
        self._pending: dict[int, memoryview] = {}
        self._heap: list[int] = []
        self.pending_bytes = 0
        self._header = bytearray()
        self._message: bytearray | None = None
        self._filled = 0

    @property
    def max_data(self) -> int:
        """The stream offset the peer may send up to (our advertised window)."""
        return self.rcv_next + self.window

    @property
    def complete(self) -> bool:
        """The peer closed and every byte up to its final offset was consumed."""
        return self.final_offset is not None and self.rcv_next == self.final_offset

    def check(self, offset: int, length: int, final_offset: int | None) -> int:
        """Raise BadFrame if a frame at ``offset`` is not allowed; else its pending cost."""
        end = offset + length
        if end > self.rcv_next + self.window:
            raise BadFrame("rel_flow_control")
        if final_offset is not None and end > final_offset:
            raise BadFrame("rel_final_offset")
        if offset > self.rcv_next and offset not in self._pending:
            return length
        return 0

    def check_final(self, final_offset: int, stream_end: int) -> None:
        """Raise BadFrame if a CLOSE with ``final_offset`` contradicts what we know."""
        if self.final_offset is not None and final_offset != self.final_offset:
            raise BadFrame("rel_final_offset")
        if final_offset < max(self.highest, stream_end):
            raise BadFrame("rel_final_offset")

    def feed(self, offset: int, data: memoryview) -> None:
        """Accept checked stream bytes ``data`` at ``offset`` (duplicates are ignored)."""
        end = offset + len(data)
        self.highest = max(self.highest, end)
        rcv_next = self.rcv_next
        if end <= rcv_next:
            self.duplicates += 1
            return
        if offset > rcv_next:
            if offset in self._pending:
                self.duplicates += 1
                return
            self._pending[offset] = data
            self.pending_bytes += len(data)
            heapq.heappush(self._heap, offset)
            return
        self._consume(data[rcv_next - offset :] if offset < rcv_next else data)
        self.rcv_next = end
        heap = self._heap
        while heap and heap[0] <= self.rcv_next:
            start = heapq.heappop(heap)
            chunk = self._pending.pop(start)
            self.pending_bytes -= len(chunk)
            chunk_end = start + len(chunk)
            if chunk_end > self.rcv_next:
                self._consume(chunk[self.rcv_next - start :])
                self.rcv_next = chunk_end

    def _consume(self, data: memoryview) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            message = self._message
            if message is None:
                header = self._header
                if not header and size - pos >= LENGTH_PREFIX.size:
                    (length,) = LENGTH_PREFIX.unpack_from(data, pos)
                    pos += LENGTH_PREFIX.size
                else:
                    take = min(LENGTH_PREFIX.size - len(header), size - pos)
                    header += data[pos : pos + take]
                    pos += take
                    if len(header) < LENGTH_PREFIX.size:
                        return
                    (length,) = LENGTH_PREFIX.unpack(header)
                    header.clear()
                if length > MAX_MESSAGE_SIZE:
                    raise BadFrame("rel_message_size")
                if length == 0:
                    self._on_message(b"")
                    continue
                message = self._message = bytearray(length)
                self._filled = 0
            filled = self._filled
            take = min(len(message) - filled, size - pos)
            message[filled : filled + take] = data[pos : pos + take]
            pos += take
            filled += take
            if filled == len(message):
                self._message = None
                self._on_message(bytes(message))
            else:
                self._filled = filled
