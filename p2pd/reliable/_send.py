"""Send side of the stream: queued messages, what was sent, acknowledged, or lost.

Theory of operation
-------------------
Messages are appended to one byte stream as ``length u32 · data``.  The stream is held
as a list of segments (memoryviews of the caller's bytes: no copy), with their start
offsets for bisection.  Three offsets move forward only:

    snd_una <= snd_nxt <= end

``snd_una``: every byte below was acknowledged, so its segments are released;
``snd_nxt``: the next byte never sent; ``end``: the stream's length so far.

Each transmitted STREAM frame covers a fixed range ``[offset, offset + length)`` chosen
when it is first sent.  A retransmission resends exactly that range, so two ranges the
peer acknowledges are either identical or disjoint: acknowledged ranges above
``snd_una`` are a dict keyed by offset, and lost ranges a dict plus a heap (lowest
offset resent first, so the receiver's in-order point advances soonest).

A message is delivered when ``snd_una`` passes its last byte.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator

from p2pd.reliable._reassembly import LENGTH_PREFIX

#: Messages up to this size are copied behind their length prefix into one segment,
#: so a stream of small messages is not twice as many segments.
COALESCE_LIMIT = 512
#: Released segments are compacted away once this many accumulate at the front.
COMPACT_THRESHOLD = 256

_EMPTY = memoryview(b"")


class SendStream:
    """The outgoing byte stream of one channel."""

    def __init__(self) -> None:
        self._segments: list[memoryview] = []
        self._starts: list[int] = []
        self._head = 0
        self._cursor = 0
        self.end = 0
        self.snd_nxt = 0
        self.snd_una = 0
        self._acked: dict[int, int] = {}
        self._lost: dict[int, int] = {}
        self._lost_heap: list[int] = []
        self._messages: deque[tuple[int, int, float]] = deque()
        self._next_id = 0

    def push(self, data: bytes, now: float) -> int:
        """Queue one message; returns its id (0, 1, 2, ... in order)."""
        prefix = LENGTH_PREFIX.pack(len(data))
        if len(data) <= COALESCE_LIMIT:
            self._append(memoryview(prefix + data))
        else:
            self._append(memoryview(prefix))
            self._append(memoryview(data))
        message_id = self._next_id
        self._next_id += 1
        self._messages.append((message_id, self.end, now))
        return message_id

    def _append(self, segment: memoryview) -> None:
        self._segments.append(segment)
        self._starts.append(self.end)
        self.end += len(segment)

    @property
    def unacked_messages(self) -> int:
        return len(self._messages)

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet acknowledged."""
        return self.end - self.snd_una

    def new_data_available(self, limit: int) -> bool:
        """Bytes never sent exist below the peer's window ``limit``."""
        return self.snd_nxt < self.end and self.snd_nxt < limit

    def take_new(self, max_length: int, limit: int) -> tuple[int, int, list[memoryview]]:
        """Up to ``max_length`` never-sent bytes below ``limit``: offset, length, pieces."""
        offset = self.snd_nxt
        length = min(max_length, self.end - offset, limit - offset)
        pieces, self._cursor = self._collect(self._cursor, offset, length)
        self.snd_nxt = offset + length
        return offset, length, pieces

    def read(self, offset: int, length: int) -> list[memoryview]:
        """The bytes ``[offset, offset + length)`` again, for a retransmission."""
        index = bisect.bisect_right(self._starts, offset, self._head) - 1
        pieces, _ = self._collect(index, offset, length)
        return pieces

    def _collect(self, index: int, offset: int, length: int) -> tuple[list[memoryview], int]:
        segments = self._segments
        pos = offset - self._starts[index]
        pieces: list[memoryview] = []
        while length > 0:
            segment = segments[index]
            available = len(segment) - pos
            if available <= length:
                pieces.append(segment[pos:] if pos else segment)
                length -= available
                index += 1
                pos = 0
            else:
                pieces.append(segment[pos : pos + length])
                length = 0
        return pieces, index

    def on_acked(self, offset: int, length: int) -> None:
        """The peer acknowledged the range ``[offset, offset + length)``."""
        end = offset + length
        if offset != self.snd_una:
            if offset > self.snd_una:
                self._acked.setdefault(offset, end)
            return
        acked = self._acked
        while True:
            following = acked.pop(end, None)
            if following is None:
                break
            end = following
        self.snd_una = end
        self._release()

    def _release(self) -> None:
        segments, starts, head = self._segments, self._starts, self._head
        limit = min(len(segments), self._cursor)
        while head < limit and starts[head] + len(segments[head]) <= self.snd_una:
            segments[head] = _EMPTY
            head += 1
        if head >= COMPACT_THRESHOLD and 2 * head >= len(segments):
            del segments[:head], starts[:head]
            self._cursor -= head
            head = 0
        self._head = head

    def is_acked(self, offset: int, length: int) -> bool:
        return offset + length <= self.snd_una or offset in self._acked

    def on_lost(self, offset: int, length: int) -> None:
        """The packet carrying ``[offset, offset + length)`` was declared lost."""
        if offset in self._lost or self.is_acked(offset, length):
            return
        self._lost[offset] = length
        heapq.heappush(self._lost_heap, offset)

    def next_lost(self) -> tuple[int, int] | None:
        """The lowest lost range still unacknowledged, without removing it."""
        heap = self._lost_heap
        while heap:
            offset = heap[0]
            length = self._lost[offset]
            if not self.is_acked(offset, length):
                return offset, length
            heapq.heappop(heap)
            del self._lost[offset]
        return None

    def pop_lost(self) -> None:
        """Remove the range :meth:`next_lost` returned (it is being resent)."""
        del self._lost[heapq.heappop(self._lost_heap)]

    def delivered(self, now: float) -> Iterator[tuple[int, float]]:
        """Ids of messages now wholly acknowledged, with seconds since they were queued."""
        messages = self._messages
        while messages and messages[0][1] <= self.snd_una:
            message_id, _, queued = messages.popleft()
            yield message_id, now - queued
