"""A session's recent events, numbered, bounded in count and bytes (sans-IO).

Theory of operation
-------------------
Events get ids 1, 2, 3 ... in the order they happen; the ring keeps the newest
:data:`EVENT_RING` of them and at most :data:`RING_BYTES` of their JSON (always at least
the newest one).  Readers are cursors — the id of the last event they consumed — so
nothing is stored per reader, and a reader that falls behind by more than the ring holds
learns it (:class:`Overflow`) instead of silently skipping events.

Invariants: the ids in the ring are consecutive and end at ``next_id - 1``;
:meth:`EventRing.after` returns events in id order, each exactly once, for any sequence
of reads interleaved with appends, unless it raises :class:`Overflow`.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any

#: Events kept per session for late or reconnecting subscribers.
EVENT_RING = 1000
#: Bytes of event JSON kept per session, whatever their number: a peer may send
#: messages of up to 64 MiB, and 1000 of them must not become 64 GiB.
RING_BYTES = 64 * 1024 * 1024


class Overflow(Exception):
    """The reader's next event has already left the ring."""


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    name: str
    data: str  # the JSON text, serialised once for every reader


class EventRing:
    """See the module docstring."""

    def __init__(self, max_events: int = EVENT_RING, max_bytes: int = RING_BYTES) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.next_id = 1
        self._events: deque[Event] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def first_id(self) -> int:
        """Id of the oldest event kept (``next_id`` when empty)."""
        return self._events[0].id if self._events else self.next_id

    def append(self, name: str, data: dict[str, Any]) -> Event:
        """Record an event ``{"event": name, **data}``, evicting the oldest beyond bounds."""
        text = json.dumps({"event": name, **data}, ensure_ascii=True, sort_keys=True)
        event = Event(self.next_id, name, text)
        self._events.append(event)
        self.next_id += 1
        self._bytes += len(text)
        while len(self._events) > self.max_events or (
            self._bytes > self.max_bytes and len(self._events) > 1
        ):
            self._bytes -= len(self._events.popleft().data)
        return event

    def after(self, last: int) -> Event | None:
        """The event following id ``last``, None if none yet, :class:`Overflow` if it
        has left the ring."""
        wanted = last + 1
        if wanted >= self.next_id:
            return None
        first = self.first_id
        if wanted < first:
            raise Overflow
        return self._events[wanted - first]

    def cursor(self, since: int | None) -> int:
        """Where a new reader starts: after ``since`` clamped to what is still kept (so
        it gets every kept event with a larger id), or at the live end for None."""
        if since is None:
            return self.next_id - 1
        return min(max(since, self.first_id - 1), self.next_id - 1)
