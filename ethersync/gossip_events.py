"""What a :class:`~ethersync.gossip.GossipCore` tells its driver, via ``next_event()``.

Events are immutable values, queued as they happen and drained in order (h11 style).
Every item new to a node yields exactly one :class:`ItemReceived`, whichever way and
however many times it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

from ethersync.gossip_wire import Item


@dataclass(frozen=True, slots=True)
class ItemReceived:
    """An item new to this node arrived from ``peer``; delivered exactly once."""

    item: Item
    peer: bytes


@dataclass(frozen=True, slots=True)
class PeersLearned:
    """``peer`` told us of these peers we do not have; the driver may connect to them."""

    peer: bytes
    peers: tuple[bytes, ...]


Event = ItemReceived | PeersLearned
