"""What gossip needs from an item store, and an in-memory store for tests and simulation.

Gossip only ever asks five things of a store (:class:`ItemStore`): do you have this id,
give me this item, keep this item, what is your version vector, and which items of this
author come after this sequence number.  The SQLite store of :mod:`ethersync.store`
answers the same questions through a thin adapter; :class:`MemoryStore` answers them
from dictionaries, for the simulation of thousands of nodes.

:class:`EnvelopeStore` is that adapter: an item is genuine when its blob opens under the
space key (AEAD, signature) and the envelope inside names the same id, author and seq.

A *version vector* maps each author to the highest sequence number ``s`` such that the
store holds that author's items ``1..s`` (contiguous).  It is compact (one entry per
author, never per item) and it is all two peers must exchange to learn what one lacks.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Protocol

from ethersync.envelope import envelope_id, open_untrusted
from ethersync.gossip_wire import Item
from ethersync.keys import SpaceKeys
from ethersync.store import Store
from p2pd.errors import BadFrame


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


class EnvelopeStore:
    """The SQLite :class:`~ethersync.store.Store` as an :class:`ItemStore`.

    ``put`` opens every blob (XChaCha20-Poly1305 under the space key, then the author's
    Ed25519 signature) before storing it, so a peer without the passphrase, or one that
    lies about an envelope's author or seq, stores nothing here; such items are counted
    in ``drops`` by reason.
    """

    def __init__(self, store: Store, keys: SpaceKeys) -> None:
        self.store = store
        self.keys = keys
        #: Items refused, by reason (``envelope_*`` from the opener, ``gossip_mismatch``).
        self.drops: collections.Counter[str] = collections.Counter()

    def has(self, item_id: bytes) -> bool:
        return self.store.has(item_id)

    def get(self, item_id: bytes) -> Item | None:
        meta = self.store.get_meta(item_id)
        blob = self.store.get(item_id)
        if meta is None or blob is None:
            return None
        return Item(item_id, meta.author, meta.seq, blob)

    def put(self, item: Item) -> bool:
        if envelope_id(item.blob) != item.item_id:
            self.drops["gossip_mismatch"] += 1
            return False
        try:
            envelope = open_untrusted(item.blob, self.keys)
        except BadFrame as exc:
            self.drops[exc.reason] += 1
            return False
        if envelope.author != item.author or envelope.seq != item.seq:
            self.drops["gossip_mismatch"] += 1
            return False
        return self.store.put_envelope(envelope, item.blob)

    def version_vector(self) -> dict[bytes, int]:
        return self.store.version_vector()

    def missing_after(self, author: bytes, seq: int, limit: int) -> list[Item]:
        found = (self.get(i) for i in self.store.missing_after(author, seq, limit))
        return [item for item in found if item is not None]
