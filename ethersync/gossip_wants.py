"""Items heard of by id but not yet received, and whom to ask for them when.

Theory of operation
-------------------
An ``ihave`` names an item; the eager tree will probably deliver it anyway, so the first
``want`` goes out only ``want_delay`` after the first announcement, to the first
announcer, then to the next one every ``want_timeout``.  An entry ends when its item
arrives (:meth:`WantTable.arrived`) or when its last announcer had its turn.

Memory is bounded whatever peers claim: at most ``max_pending`` entries of at most
``max_announcers`` peers each; the deadline heap holds one live entry per want plus stale
ones, and is rebuilt when stale ones reach twice the cap.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from ethersync.gossip_config import GossipConfig


@dataclass(slots=True)
class _Want:
    announcers: list[bytes]
    deadline: float


class WantTable:
    """Pending wants keyed by item id; see the module docstring."""

    def __init__(self, config: GossipConfig) -> None:
        self._config = config
        self._wants: dict[bytes, _Want] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._wants)

    @property
    def heap_size(self) -> int:
        """Entries in the deadline heap, live and stale (bounded, for tests)."""
        return len(self._heap)

    def announce(self, item_id: bytes, peer: bytes, now: float) -> bool:
        """``peer`` has ``item_id``; False when the table is full and the id is new."""
        want = self._wants.get(item_id)
        if want is not None:
            if peer not in want.announcers and len(want.announcers) < self._config.max_announcers:
                want.announcers.append(peer)
            return True
        if len(self._wants) >= self._config.max_pending_wants:
            return False
        deadline = now + self._config.want_delay
        self._wants[item_id] = _Want([peer], deadline)
        heapq.heappush(self._heap, (deadline, item_id))
        return True

    def arrived(self, item_id: bytes) -> bool:
        """Forget ``item_id``; True if it was wanted."""
        return self._wants.pop(item_id, None) is not None

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has something to do (maybe a stale entry), or None."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[tuple[bytes, bytes]]:
        """``(peer, item_id)`` pairs to ask now; each want moves on to its next announcer."""
        asks: list[tuple[bytes, bytes]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, item_id = heapq.heappop(heap)
            want = self._wants.get(item_id)
            if want is None or want.deadline != deadline:
                continue
            if not want.announcers:
                del self._wants[item_id]
                continue
            asks.append((want.announcers.pop(0), item_id))
            want.deadline = now + self._config.want_timeout
            heapq.heappush(heap, (want.deadline, item_id))
        if len(heap) > 2 * self._config.max_pending_wants:
            self._heap = [(w.deadline, i) for i, w in self._wants.items()]
            heapq.heapify(self._heap)
        return asks
