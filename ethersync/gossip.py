"""Gossip core: spreads opaque items through a space's peers (sans-IO).

Theory of operation
-------------------
Three mechanisms, cheapest first, each covering what the previous one missed:

1. **Eager push along a tree** (Plumtree, Leitao et al. 2007).  A new item -- published
   here, or received for the first time in an eager or requested ``push`` -- goes in full
   to the *eager* peers (at first ``fanout`` of them) except the one it came from.  A node
   that receives an eager copy it already had marks the sender lazy and answers
   ``prune``, which makes the sender mark it lazy too; a new eager copy marks the sender
   eager.  The eager links thus shrink towards a spanning tree, but each node keeps
   ``min_eager`` of them so the tree stays shallow for every author, not just the first.
2. **Lazy push of ids** (``ihave``), batched every ``ihave_delay``, to ``lazy_fanout``
   random lazy peers.  A node that hears of an item it lacks waits ``want_delay`` for
   the eager copy, then asks one announcer (``want``, which also grafts the link back
   onto the tree), and the next announcer after each ``want_timeout``
   (:mod:`ethersync.gossip_wants`).
3. **Anti-entropy** every ``anti_entropy_interval`` (jittered) with one random peer:
   ``digest`` (a 16-byte hash of the version vector) costs ~30 bytes when both agree,
   which is the steady state.  On a mismatch the peers swap version vectors (``sum``)
   and each streams what the other lacks through a per-author cursor refilled as its
   send queue drains, so a backlog of any size goes out in one round at the send rate.
   While one peer streams to us we leave other peers' digests unanswered (no backlog is
   sent twice), and if the stream goes quiet before we hold what its vector promised, we
   ask again.

Bounds: duplicates are suppressed by the store (item ids and per-author sequence numbers
below the contiguous version vector); pending ``want``s are capped at
``max_pending_wants`` with at most ``max_announcers`` each; each peer has a bounded send
queue behind a byte token bucket, and a byte token bucket on what we accept from it; the
peer table is capped at ``max_peers``.  Everything from the network goes through
:func:`~ethersync.gossip_wire.decode_untrusted`; drops are counted in ``drops``.
"""

from __future__ import annotations

import collections
import hashlib
import random
from dataclasses import dataclass, field

from ethersync.gossip_config import GossipConfig
from ethersync.gossip_events import Event, ItemReceived, PeersLearned
from ethersync.gossip_pull import Pull, behind
from ethersync.gossip_store import ItemStore, MemoryStore
from ethersync.gossip_wants import WantTable
from ethersync.gossip_wire import (
    DIGEST_SIZE,
    MAX_IDS,
    MAX_ITEM_WIRE_SIZE,
    Digest,
    IHave,
    Item,
    Message,
    Peers,
    Prune,
    Push,
    Summary,
    Want,
    decode_untrusted,
    encode,
    item_wire_size,
)
from p2pd.errors import BadFrame, LocalError
from p2pd.ratelimit import TokenBucket

__all__ = ["Event", "GossipCore", "ItemReceived", "PeersLearned"]

#: Bytes of CBOR framing around a ``push`` message's item list (map, keys, list head).
PUSH_OVERHEAD = 32


@dataclass(slots=True)
class _Peer:
    name: bytes
    send_bucket: TokenBucket
    recv_bucket: TokenBucket
    eager: bool
    queue: collections.deque[bytes] = field(default_factory=collections.deque)
    queued_bytes: int = 0
    ihave: list[bytes] = field(default_factory=list)
    catchup: dict[bytes, int] = field(default_factory=dict)


class GossipCore:
    """One node's gossip state machine; see the module docstring."""

    def __init__(
        self,
        node_id: bytes,
        now: float,
        *,
        fanout: int | None = None,
        config: GossipConfig | None = None,
        rng: random.Random | None = None,
        store: ItemStore | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = config or GossipConfig()
        self.fanout = self.config.fanout if fanout is None else fanout
        if self.fanout < 0:
            raise LocalError(f"fanout must be non-negative, got {self.fanout}")
        # Gossip choices need to be unpredictable to nobody: a seeded PRNG keeps the
        # simulation reproducible, and no secret depends on it.
        self._rng = rng or random.Random()  # noqa: S311
        self.store: ItemStore = store if store is not None else MemoryStore()
        self._peers: dict[bytes, _Peer] = {}
        self._wants = WantTable(self.config)
        self._events: collections.deque[Event] = collections.deque()
        self._vector: dict[bytes, int] | None = None
        self._vector_digest: bytes | None = None
        # A node that just started runs its first round soon: after a week offline, it
        # catches up at once instead of one full interval later.
        self._next_anti_entropy = now + self._jitter(self.config.startup_anti_entropy)
        self._next_peer_exchange = now + self._jitter(self.config.peer_exchange_interval)
        self._ihave_flush: float | None = None
        self._pull = Pull(now, self.config.want_timeout)
        #: Network input dropped, by reason (``gossip_*`` parse errors and policy drops).
        self.drops: collections.Counter[str] = collections.Counter()
        #: Messages sent, by type, and totals of bytes sent and accepted.
        self.sent: collections.Counter[str] = collections.Counter()
        self.sent_bytes: collections.Counter[str] = collections.Counter()
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- peers ------------------------------------------------------------------------

    @property
    def peers(self) -> list[bytes]:
        return list(self._peers)

    def add_peer(self, peer: bytes) -> bool:
        """Start gossiping with ``peer``; False when the table is full or it is us."""
        if peer == self.node_id or peer in self._peers:
            return False
        if len(self._peers) >= self.config.max_peers:
            return False
        eager = sum(p.eager for p in self._peers.values()) < self.fanout
        cfg = self.config
        self._peers[peer] = _Peer(
            peer,
            TokenBucket(cfg.send_rate, cfg.send_burst),
            TokenBucket(cfg.recv_rate, cfg.recv_burst),
            eager,
        )
        return True

    def remove_peer(self, peer: bytes) -> None:
        """Forget ``peer`` and whatever was queued for it."""
        self._peers.pop(peer, None)

    # -- input ------------------------------------------------------------------------

    def publish(self, item: Item, now: float) -> None:
        """Store a local item and push it; raises LocalError if the store refuses it."""
        if not self.store.put(item):
            raise LocalError("the store refused the item (duplicate or invalid)")
        self._vector = None
        self._spread(item, None, now)

    def receive_untrusted(self, peer: bytes, data: bytes, now: float) -> None:
        """Handle one message from ``peer``; garbage is counted in ``drops``, never raised."""
        state = self._peers.get(peer)
        if state is None:
            if not self.add_peer(peer):
                self.drops["gossip_peer_table_full"] += 1
                return
            state = self._peers[peer]
        if not state.recv_bucket.allow(now, len(data)):
            self.drops["gossip_rate_limited"] += 1
            return
        try:
            message = decode_untrusted(data)
        except BadFrame as exc:
            self.drops[exc.reason] += 1
            return
        self.bytes_received += len(data)
        self._dispatch(peer, state, message, now)

    def _dispatch(self, peer: bytes, state: _Peer, message: Message, now: float) -> None:
        match message:
            case Push(items, eager):
                self._on_push(peer, items, eager, now)
            case IHave(ids):
                self._on_ihave(peer, ids, now)
            case Want(ids):
                state.eager = True
                self._send_items(peer, [i for i in map(self.store.get, ids) if i], False)
            case Digest(digest, _):
                # Our vector in answer makes the peer stream what we lack: a pull.
                if digest != self._digest() and self._pull.claim(peer, now):
                    self._send(peer, Summary(self._vector_now(), True))
            case Summary(vector, reply):
                self._on_summary(peer, vector, reply, now)
            case Prune():
                state.eager = False
            case Peers(peers):
                fresh = tuple(p for p in peers if p != self.node_id and p not in self._peers)
                if fresh:
                    self._events.append(PeersLearned(peer, fresh))

    def _on_push(self, peer: bytes, items: tuple[Item, ...], eager: bool, now: float) -> None:
        new = 0
        for item in items:
            if self.store.has(item.item_id):
                self.drops["gossip_duplicate"] += 1
                continue
            if not self.store.put(item):
                self.drops["gossip_rejected"] += 1
                continue
            new += 1
            self._vector = None
            wanted = self._wants.arrived(item.item_id)
            self._events.append(ItemReceived(item, peer))
            if eager or wanted:
                # Only items being disseminated spread further; one that came in an
                # anti-entropy answer is old news that our other peers already hold.
                self._spread(item, peer, now)
            else:
                self._pull.claim(peer, now)  # an anti-entropy stream: it is our pull now
        state = self._peers.get(peer)
        if state is None or not eager or not items:
            return
        if new:
            # A tree link carries items both ways: the sender treats us as eager, so we
            # treat it as eager too (Plumtree starts every link eager on both ends).
            state.eager = True
        elif sum(p.eager for p in self._peers.values()) > self.config.min_eager:
            # A duplicate: this link closes a cycle.  Keeping min_eager links anyway
            # keeps the tree bushy, so items from every author reach us in few hops.
            state.eager = False
            self._send(peer, Prune())

    def _on_ihave(self, peer: bytes, ids: tuple[bytes, ...], now: float) -> None:
        for item_id in ids:
            if not self.store.has(item_id) and not self._wants.announce(item_id, peer, now):
                self.drops["gossip_wants_full"] += 1

    def _on_summary(self, peer: bytes, theirs: dict[bytes, int], reply: bool, now: float) -> None:
        """Start sending what the peer lacks; ask for what we lack if ``reply``."""
        state = self._peers.get(peer)
        if state is None:
            return
        ours = self._vector_now()
        for author, top in ours.items():
            known = theirs.get(author, 0)
            if top > known:
                state.catchup[author] = max(state.catchup.get(author, 0), known)
        self._refill(state)
        if reply and behind(ours, theirs) and self._pull.claim(peer, now, theirs):
            self._send(peer, Summary(ours, False))

    def _refill(self, state: _Peer) -> None:
        """Queue catch-up items for a peer while its queue has room for a batch.

        ``catchup`` maps each author the peer lacks to the last seq queued for it, so a
        backlog of any size streams out at the send rate in one anti-entropy round,
        holding at most ``max_queue_bytes`` of it in memory.
        """
        catchup = state.catchup
        room = self.config.max_queue_bytes - self.config.catchup_batch * MAX_ITEM_WIRE_SIZE
        while catchup and state.queued_bytes <= room:
            author, cursor = next(iter(catchup.items()))
            batch = self.store.missing_after(author, cursor, self.config.catchup_batch)
            if not batch:
                del catchup[author]
                continue
            catchup[author] = batch[-1].seq
            self._send_items(state.name, batch, False)

    # -- output -----------------------------------------------------------------------

    def _spread(self, item: Item, source: bytes | None, now: float) -> None:
        """Push ``item`` to the eager peers and queue its id for some lazy ones."""
        lazy: list[_Peer] = []
        for peer, state in self._peers.items():
            if peer == source:
                continue
            if state.eager:
                self._send_items(peer, [item], True)
            elif len(state.ihave) < MAX_IDS:
                lazy.append(state)
        if len(lazy) > self.config.lazy_fanout:
            lazy = self._rng.sample(lazy, self.config.lazy_fanout)
        for state in lazy:
            state.ihave.append(item.item_id)
        if lazy and self._ihave_flush is None:
            self._ihave_flush = now + self.config.ihave_delay

    def _send_items(self, peer: bytes, items: list[Item], eager: bool) -> None:
        """Queue ``items`` to ``peer`` in ``push`` messages of at most ``push_bytes``."""
        batch: list[Item] = []
        size = PUSH_OVERHEAD
        for item in items:
            item_size = item_wire_size(item)
            if batch and size + item_size > self.config.push_bytes:
                self._send(peer, Push(tuple(batch), eager))
                batch, size = [], PUSH_OVERHEAD
            batch.append(item)
            size += item_size
        if batch:
            self._send(peer, Push(tuple(batch), eager))

    def _send(self, peer: bytes, message: Message) -> None:
        state = self._peers.get(peer)
        if state is None:
            return
        data = encode(message)
        if state.queued_bytes + len(data) > self.config.max_queue_bytes:
            self.drops["gossip_send_queue_full"] += 1
            return
        state.queue.append(data)
        state.queued_bytes += len(data)
        kind = type(message).__name__.lower()
        self.sent[kind] += 1
        self.sent_bytes[kind] += len(data)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, bytes]]:
        """Messages ``(peer, bytes)`` the send rate limits allow at ``now``, in order."""
        out: list[tuple[bytes, bytes]] = []
        for peer, state in self._peers.items():
            queue = state.queue
            while queue and state.send_bucket.allow(now, len(queue[0])):
                data = queue.popleft()
                state.queued_bytes -= len(data)
                self.bytes_sent += len(data)
                out.append((peer, data))
                if not queue and state.catchup:
                    self._refill(state)
        return out

    def next_event(self) -> Event | None:
        """The oldest event not yet returned, or None."""
        return self._events.popleft() if self._events else None

    # -- time -------------------------------------------------------------------------

    def get_timer(self) -> float:
        """When :meth:`handle_timer` must next be called (calling it early is harmless)."""
        timer = self._next_anti_entropy  # peer exchange rides on an anti-entropy round
        if self._ihave_flush is not None:
            timer = min(timer, self._ihave_flush)
        pull = self._pull.timer()
        if pull is not None:
            timer = min(timer, pull)
        wants = self._wants.next_deadline()
        if wants is not None:
            timer = min(timer, wants)
        for state in self._peers.values():
            if state.queue:
                bucket = state.send_bucket
                deficit = len(state.queue[0]) - bucket.tokens(bucket.last_used or 0.0)
                timer = min(timer, (bucket.last_used or 0.0) + deficit / self.config.send_rate)
        return timer

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at ``now``: ihave batches, wants, anti-entropy, exchange."""
        cfg = self.config
        if self._ihave_flush is not None and now >= self._ihave_flush:
            self._ihave_flush = None
            for peer, state in self._peers.items():
                if state.ihave:
                    ids, state.ihave = state.ihave, []
                    self._send(peer, IHave(tuple(ids)))
        self._run_wants(now)
        again = self._pull.retry(now, self._vector_now())
        if again is not None:
            self._send(again, Summary(self._vector_now(), False))
        if self._peers and now >= self._next_anti_entropy:
            partner = self._rng.choice(list(self._peers))
            self._send(partner, Digest(self._digest(), len(self._vector_now())))
            if now >= self._next_peer_exchange:
                self._next_peer_exchange = now + self._jitter(cfg.peer_exchange_interval)
                others = [p for p in self._peers if p != partner]
                sample = self._rng.sample(others, min(len(others), cfg.peers_per_exchange))
                if sample:
                    self._send(partner, Peers(tuple(sample)))
        if now >= self._next_anti_entropy:
            self._next_anti_entropy = now + self._jitter(cfg.anti_entropy_interval)

    def _run_wants(self, now: float) -> None:
        """Ask announcers for the items whose eager copy is overdue; asking grafts."""
        requests: dict[bytes, list[bytes]] = {}
        for peer, item_id in self._wants.due(now):
            state = self._peers.get(peer)
            if state is not None and not self.store.has(item_id):
                state.eager = True
                requests.setdefault(peer, []).append(item_id)
        for peer, ids in requests.items():
            for start in range(0, len(ids), MAX_IDS):
                self._send(peer, Want(tuple(ids[start : start + MAX_IDS])))

    # -- helpers ----------------------------------------------------------------------

    def _jitter(self, interval: float) -> float:
        """``interval`` times a random factor in [0.5, 1.5), so peers do not synchronise."""
        return interval * (0.5 + self._rng.random())

    def _vector_now(self) -> dict[bytes, int]:
        """The store's version vector, cached until the next item is stored."""
        if self._vector is None:
            self._vector = self.store.version_vector()
            self._vector_digest = None
        return self._vector

    def _digest(self) -> bytes:
        """A hash of the version vector: equal digests mean nothing to exchange."""
        vector = self._vector_now()
        if self._vector_digest is None:
            h = hashlib.blake2b(digest_size=DIGEST_SIZE)
            for author, top in sorted(vector.items()):
                h.update(author + top.to_bytes(8, "big"))
            self._vector_digest = h.digest()
        return self._vector_digest

    @property
    def pending_wants(self) -> int:
        """Items heard of but not yet fetched (bounded by ``max_pending_wants``)."""
        return len(self._wants)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in send queues (bounded by ``max_queue_bytes`` per peer)."""
        return sum(state.queued_bytes for state in self._peers.values())
