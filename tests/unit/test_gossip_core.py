"""The gossip core, driven over a direct in-memory wire with explicit time."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ethersync.gossip import GossipCore, ItemReceived, PeersLearned
from ethersync.gossip_config import GossipConfig
from ethersync.gossip_store import MemoryStore
from ethersync.gossip_wire import (
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
)
from p2pd.errors import LocalError

AUTHOR = bytes(range(32))


def make_item(seq: int, author: bytes = AUTHOR, size: int = 100) -> Item:
    blob = hashlib.sha256(author + seq.to_bytes(8, "big")).digest() * (size // 32 + 1)
    blob = blob[:size]
    return Item(hashlib.blake2b(blob, digest_size=32).digest(), author, seq, blob)


def core(name: bytes, now: float = 0.0, **config: Any) -> GossipCore:
    return GossipCore(name, now, config=GossipConfig(**config), rng=random.Random(name))


class Wire:
    """Delivers every queued message at once (zero latency) until nothing moves."""

    def __init__(self, *cores: GossipCore) -> None:
        self.cores = {c.node_id: c for c in cores}
        self.received: dict[bytes, list[Item]] = {c.node_id: [] for c in cores}
        self.now = 0.0
        self.drop: Callable[[bytes, bytes, bytes], bool] | None = None

    def link(self, a: GossipCore, b: GossipCore) -> None:
        a.add_peer(b.node_id)
        b.add_peer(a.node_id)

    def pump(self) -> int:
        moved = 0
        while True:
            batch = [
                (c, p, d) for c in self.cores.values() for p, d in c.datagrams_to_send(self.now)
            ]
            for c in self.cores.values():
                while (event := c.next_event()) is not None:
                    if isinstance(event, ItemReceived):
                        self.received[c.node_id].append(event.item)
            if not batch:
                return moved
            for sender, peer, data in batch:
                moved += 1
                if self.drop is not None and self.drop(sender.node_id, peer, data):
                    continue
                if peer in self.cores:
                    self.cores[peer].receive_untrusted(sender.node_id, data, self.now)

    def advance(self, seconds: float, step: float = 0.1) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for c in self.cores.values():
                if c.get_timer() <= self.now:
                    c.handle_timer(self.now)
            self.pump()


def test_two_cores_deliver_a_published_item_once() -> None:
    a, b = core(b"a"), core(b"b")
    wire = Wire(a, b)
    wire.link(a, b)
    item = make_item(1)
    a.publish(item, 0.0)
    wire.pump()
    assert wire.received[b"b"] == [item]
    wire.advance(30.0)
    assert wire.received[b"b"] == [item]
    assert wire.received[b"a"] == []


def test_an_item_crosses_a_chain_of_three() -> None:
    a, b, c = core(b"a"), core(b"b"), core(b"c")
    wire = Wire(a, b, c)
    wire.link(a, b)
    wire.link(b, c)
    items = [make_item(s) for s in (1, 2, 3)]
    for item in items:
        a.publish(item, 0.0)
    wire.pump()
    assert wire.received[b"c"] == items


def test_lazy_peers_get_ids_and_pull_after_want_delay() -> None:
    a, b = core(b"a", fanout=0), core(b"b", fanout=0)
    wire = Wire(a, b)
    wire.link(a, b)
    a.publish(make_item(1), 0.0)
    wire.pump()
    assert wire.received[b"b"] == []
    assert a.sent["push"] == 0
    wire.advance(1.0, step=0.05)
    assert len(wire.received[b"b"]) == 1
    assert a.sent["ihave"] == 1 and b.sent["want"] == 1


def test_anti_entropy_catches_up_a_node_that_missed_everything_in_one_round() -> None:
    a = core(b"a")
    items = [make_item(s, author) for author in (AUTHOR, bytes(32)) for s in range(1, 201)]
    for item in items:
        a.publish(item, 0.0)
    b = core(b"b", now=100.0)
    wire = Wire(a, b)
    wire.now = 100.0
    wire.link(a, b)
    wire.advance(GossipConfig().startup_anti_entropy * 1.5)
    assert sorted(wire.received[b"b"], key=lambda i: (i.author, i.seq)) == sorted(
        items, key=lambda i: (i.author, i.seq)
    )
    assert b.store.version_vector() == a.store.version_vector()
    # one exchange each way: digest, summary, (summary back,) pushes
    assert a.sent["summary"] + b.sent["summary"] <= 2


def test_a_push_lost_mid_catch_up_is_asked_for_again_before_the_next_round() -> None:
    # only b runs an anti-entropy round in this test
    a = core(b"a", anti_entropy_interval=1000.0, startup_anti_entropy=1000.0)
    items = [make_item(s, size=30_000) for s in range(1, 11)]
    for item in items:
        a.publish(item, 0.0)
    b = core(b"b", anti_entropy_interval=1000.0)
    wire = Wire(a, b)
    wire.link(a, b)
    pushes = 0

    def lose_first_push(sender: bytes, peer: bytes, data: bytes) -> bool:
        nonlocal pushes
        if decode_untrusted(data).__class__ is Push:
            pushes += 1
            return pushes == 1
        return False

    wire.drop = lose_first_push
    wire.advance(GossipConfig().startup_anti_entropy * 1.5 + GossipConfig().want_timeout + 1.0)
    assert sorted(i.seq for i in wire.received[b"b"]) == list(range(1, 11))
    assert b.sent["summary"] == 2


def test_in_sync_nodes_exchange_only_digests() -> None:
    a, b = core(b"a"), core(b"b")
    wire = Wire(a, b)
    wire.link(a, b)
    a.publish(make_item(1), 0.0)
    wire.advance(5.0)
    sent = {c: dict(c.sent) for c in (a, b)}
    wire.advance(600.0, step=1.0)
    for c in (a, b):
        grew = {k: v - sent[c].get(k, 0) for k, v in c.sent.items() if v != sent[c].get(k, 0)}
        assert set(grew) <= {"digest", "peers"}, grew
        assert grew.get("digest", 0) > 0


def test_a_replayed_push_is_never_delivered_twice_and_prunes_the_sender() -> None:
    a, b = core(b"a"), core(b"b", min_eager=0)
    wire = Wire(a, b)
    wire.link(a, b)
    item = make_item(1)
    data = encode(Push((item,), True))
    b.receive_untrusted(b"a", data, 0.0)
    b.receive_untrusted(b"a", data, 0.0)
    events = [b.next_event(), b.next_event()]
    assert events == [ItemReceived(item, b"a"), None]
    assert b.drops["gossip_duplicate"] == 1
    assert b.sent["prune"] == 1
    wire.pump()
    a.publish(make_item(2), 0.0)
    assert a.sent["push"] == 0  # b is lazy for a now
    assert a.sent["prune"] == 0


def test_duplicates_do_not_prune_below_min_eager_links() -> None:
    b = core(b"b", min_eager=2)
    for name in (b"p1", b"p2", b"p3"):
        b.add_peer(name)
    item = make_item(1)
    for name in (b"p1", b"p2", b"p3"):
        b.receive_untrusted(name, encode(Push((item,), True)), 0.0)
    assert b.drops["gossip_duplicate"] == 2
    assert b.sent["prune"] == 1  # the third eager link went; two stay whatever comes
    b.receive_untrusted(b"p2", encode(Push((item,), True)), 0.0)
    assert b.sent["prune"] == 1


def test_a_conflicting_item_for_a_held_sequence_number_is_rejected() -> None:
    b = core(b"b")
    b.receive_untrusted(b"a", encode(Push((make_item(1),), False)), 0.0)
    forged = make_item(1, size=50)
    b.receive_untrusted(b"a", encode(Push((forged,), False)), 0.0)
    assert b.drops["gossip_rejected"] == 1
    assert len(b.store.version_vector()) == 1


def test_a_flood_of_bogus_ids_keeps_pending_wants_bounded() -> None:
    b = core(b"b", max_pending_wants=64, recv_rate=1e12, recv_burst=1e12)
    rng = random.Random(1)
    now = 0.0
    for _ in range(200):
        ids = tuple(rng.randbytes(32) for _ in range(1000))
        b.receive_untrusted(b"evil", encode(IHave(ids)), now)
        now += 0.05
        if b.get_timer() <= now:
            b.handle_timer(now)
        b.datagrams_to_send(now)
        assert b.pending_wants <= 64
        assert b._wants.heap_size <= 2 * 64 + 1000
    assert b.drops["gossip_wants_full"] > 100_000
    b.handle_timer(now + 60.0)
    b.handle_timer(now + 120.0)
    assert b.pending_wants == 0


def test_ids_already_held_are_not_wanted() -> None:
    b = core(b"b")
    item = make_item(1)
    b.publish(item, 0.0)
    b.receive_untrusted(b"a", encode(IHave((item.item_id, bytes(32)))), 0.0)
    assert b.pending_wants == 1


def test_send_rate_limit_holds_and_the_queue_drains_later() -> None:
    cfg = GossipConfig()
    a = core(b"a")
    for s in range(1, 2001):
        a.publish(make_item(s, size=1000), 0.0)
    a.add_peer(b"b")
    a.receive_untrusted(b"b", encode(Summary({}, False)), 0.0)
    first = sum(len(d) for _, d in a.datagrams_to_send(0.0))
    assert 0 < first <= cfg.send_burst
    assert a.queued_bytes > 0
    timer = a.get_timer()
    assert 0.0 < timer < 1.0
    later = sum(len(d) for _, d in a.datagrams_to_send(timer))
    assert later > 0


def test_a_backlog_larger_than_the_queue_streams_out_in_one_round() -> None:
    """20,000 items (20 MB) behind a 1 MiB queue: one round, every item, no drop."""
    queue = 2 * 8 * MAX_ITEM_WIRE_SIZE + 1
    a = core(b"a", max_queue_bytes=queue, catchup_batch=8, anti_entropy_interval=1000.0)
    items = [make_item(s, size=1000) for s in range(1, 20_001)]
    for item in items:
        a.publish(item, 0.0)
    b = core(b"b", anti_entropy_interval=1000.0)
    wire = Wire(a, b)
    wire.link(a, b)
    peak = 0
    now = 0.0
    while len(wire.received[b"b"]) < len(items) and now < 60.0:
        now += 0.05
        wire.now = now
        for c in (a, b):
            if c.get_timer() <= now:
                c.handle_timer(now)
        peak = max(peak, a.queued_bytes)
        wire.pump()
    assert wire.received[b"b"] == items
    # only the first round after start (no other round is due for 1000 s)
    assert a.sent["digest"] + b.sent["digest"] <= 2
    assert peak <= queue
    assert not a.drops and not b.drops
    # the send rate, not the round, bounds the time: 20 MB at 1 MiB/s
    assert 15.0 < now < 30.0


def test_receive_rate_limit_drops_a_flooding_peer() -> None:
    cfg = GossipConfig()
    b = core(b"b")
    data = encode(Want(tuple(bytes([i]) * 32 for i in range(200))))
    accepted = 0
    for _ in range(2000):
        before = b.bytes_received
        b.receive_untrusted(b"evil", data, 0.0)
        accepted += b.bytes_received - before
    assert accepted <= cfg.recv_burst
    assert b.drops["gossip_rate_limited"] > 0
    b.receive_untrusted(b"evil", data, 1.0)
    assert b.bytes_received > accepted


def test_peer_exchange_reports_new_peers_only() -> None:
    b = core(b"b")
    b.add_peer(b"a")
    b.receive_untrusted(b"a", encode(Peers((b"b", b"a", b"c", b"d"))), 0.0)
    assert b.next_event() == PeersLearned(b"a", (b"c", b"d"))


def test_the_peer_table_is_bounded() -> None:
    b = core(b"b", max_peers=2)
    for name in (b"p1", b"p2", b"p3"):
        b.receive_untrusted(name, encode(Want(())), 0.0)
    assert b.peers == [b"p1", b"p2"]
    assert b.drops["gossip_peer_table_full"] == 1


def test_publishing_a_duplicate_is_local_misuse() -> None:
    a = core(b"a")
    a.publish(make_item(1), 0.0)
    with pytest.raises(LocalError):
        a.publish(make_item(1), 0.0)


def test_version_vector_counts_only_contiguous_sequence_numbers() -> None:
    store = MemoryStore()
    for s in (1, 2, 4, 5):
        assert store.put(make_item(s))
    assert store.version_vector() == {AUTHOR: 2}
    assert [i.seq for i in store.missing_after(AUTHOR, 1, 10)] == [2, 4, 5]
    assert store.put(make_item(3))
    assert store.version_vector() == {AUTHOR: 5}


def test_bad_config_is_refused() -> None:
    with pytest.raises(LocalError):
        GossipConfig(send_burst=10.0)
    with pytest.raises(LocalError):
        GossipConfig(anti_entropy_interval=0.0)


POOL = [make_item(s, author) for author in (AUTHOR, bytes(32)) for s in range(1, 6)]
pool_items = st.sampled_from(POOL)
pool_ids = st.sampled_from([i.item_id for i in POOL] + [bytes([7]) * 32])
peer_names = st.sampled_from([b"p1", b"p2", b"p3"])
valid_messages = st.one_of(
    st.builds(Push, st.lists(pool_items, max_size=3).map(tuple), st.booleans()),
    st.builds(IHave, st.lists(pool_ids, max_size=4).map(tuple)),
    st.builds(Want, st.lists(pool_ids, max_size=4).map(tuple)),
    st.builds(
        Summary,
        st.dictionaries(st.sampled_from([AUTHOR, bytes(32)]), st.integers(1, 9)),
        st.booleans(),
    ),
    st.builds(Digest, st.binary(min_size=16, max_size=16), st.integers(0, 3)),
    st.just(Prune()),
    st.builds(Peers, st.lists(peer_names, max_size=3).map(tuple)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(peer_names, valid_messages, st.floats(0.0, 3.0)), max_size=40))
def test_any_sequence_of_messages_keeps_the_invariants(
    steps: list[tuple[bytes, Message, float]],
) -> None:
    node = core(b"me", max_pending_wants=4)
    now = 0.0
    delivered: list[bytes] = []
    for peer, message, dt in steps:
        now += dt
        node.receive_untrusted(peer, encode(message), now)
        if node.get_timer() <= now:
            node.handle_timer(now)
        node.datagrams_to_send(now)
        while (event := node.next_event()) is not None:
            if isinstance(event, ItemReceived):
                delivered.append(event.item.item_id)
        assert node.pending_wants <= 4
        assert node.queued_bytes <= 3 * node.config.max_queue_bytes
    assert len(delivered) == len(set(delivered))
    assert all(node.store.has(i) for i in delivered)
    vector = node.store.version_vector()
    for author, top in vector.items():
        held = {i.seq for i in POOL if i.author == author and node.store.has(i.item_id)}
        assert set(range(1, top + 1)) <= held
