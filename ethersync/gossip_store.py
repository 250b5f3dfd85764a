"""What gossip needs from an item store, and an in-memory store for tests and simulation.

Gossip only ever asks five things of a store (:class:`ItemStore`): do you have this id,
give me this item, keep this item, what is your version vector, and which items of this
author come after this sequence number.  The SQLite store of :mod:`ethersync.store`
answers the same questions through a thin adapter; :class:`MemoryStore` answers them
from dictionaries, for the simulation of thousands of nodes.

A *version vector* maps each author to the highest sequence number ``s`` such that the
store holds that author's items ``1..s`` (contiguous).  It is compact (one entry per
author, never per item) and it is all two peers must exchange to learn what one lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ethersync.gossip_wire import Item


class ItemStore(Protocol):
    """The store behind a :class:`~ethersync.gossip.GossipCore`."""

    def has(self, item_id: bytes) -> bool:
        """Whether the item named ``item_id`` is stored."""
        ...

    def get(self, item_id: bytes) -> Item | None:
        """The stored item named ``item_id``, or None."""
        ...

    def put(self, item: Item) -> bool:
        """Keep ``item`` if it is genuine and new; False rejects it (forged, conflicting)."""
        ...

    def version_vector(self) -> dict[bytes, int]:
        """Author -> highest contiguous sequence number held."""
        ...

    def missing_after(self, author: bytes, seq: int, limit: int) -> list[Item]:
        """Up to ``limit`` stored items of ``author`` with sequence number above ``seq``."""
        ...


class MemoryStore:
    """An :class:`ItemStore` in dictionaries; ``validate`` plays the envelope checks.

    Memory is what the caller puts in: one entry per item.  An item whose (author, seq)
    is already held under another id is refused (an author never reuses a number, so
    such an item is a forgery or equivocation).
    """

    def __init__(self, validate: Callable[[Item], bool] | None = None) -> None:
        self._items: dict[bytes, Item] = {}
        self._by_author: dict[bytes, dict[int, bytes]] = {}
        self._vector: dict[bytes, int] = {}
        self._validate = validate

    def __len__(self) -> int:
        return len(self._items)

    def has(self, item_id: bytes) -> bool:
        return item_id in self._items

    def get(self, item_id: bytes) -> Item | None:
        return self._items.get(item_id)

    def put(self, item: Item) -> bool:
        if item.item_id in self._items:
            return False
        seqs = self._by_author.setdefault(item.author, {})
        if item.seq in seqs or (self._validate is not None and not self._validate(item)):
            return False
        seqs[item.seq] = item.item_id
        self._items[item.item_id] = item
        top = self._vector.get(item.author, 0)
        while top + 1 in seqs:
            top += 1
        if top:
            self._vector[item.author] = top
        return True

    def version_vector(self) -> dict[bytes, int]:
        return dict(self._vector)

    def missing_after(self, author: bytes, seq: int, limit: int) -> list[Item]:
        seqs = self._by_author.get(author, {})
        wanted = sorted(s for s in seqs if s > seq)[:limit]
        return [self._items[seqs[s]] for s in wanted]
