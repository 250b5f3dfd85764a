"""Gossip over the real SQLite store: genuine envelopes spread, forgeries store nothing."""

from __future__ import annotations

import random
from pathlib import Path

from ethersync.envelope import KIND_MSG, SealedEnvelope, seal
from ethersync.gossip import GossipCore, ItemReceived
from ethersync.gossip_store import EnvelopeStore
from ethersync.gossip_wire import Item, Push, encode
from ethersync.keys import DeviceKey, SpaceKeys
from ethersync.store import Store

KEYS = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
OTHER = SpaceKeys.from_space_key(b"i" * 16, b"x" * 32)
ALICE = DeviceKey.from_seed(b"a" * 32)


def sealed(seq: int, keys: SpaceKeys = KEYS) -> SealedEnvelope:
    return seal(keys, ALICE, seq=seq, ts=1000 + seq, kind=KIND_MSG, body=b"hello %d" % seq)


def as_item(env: SealedEnvelope) -> Item:
    return Item(env.id, env.envelope.author, env.envelope.seq, env.blob)


def node(tmp_path: Path, name: str) -> tuple[GossipCore, EnvelopeStore]:
    store = EnvelopeStore(Store(tmp_path / f"{name}.sqlite3"), KEYS)
    return GossipCore(name.encode(), 0.0, rng=random.Random(name), store=store), store


def test_envelopes_spread_and_catch_up_through_the_sqlite_store(tmp_path: Path) -> None:
    a, _ = node(tmp_path, "a")
    for seq in range(1, 6):
        a.publish(as_item(sealed(seq)), 0.0)
    b, b_store = node(tmp_path, "b")
    a.add_peer(b"b")
    b.add_peer(b"a")
    now = 0.0
    received: list[Item] = []
    while now < 5.0:
        now += 0.1
        for c in (a, b):
            if c.get_timer() <= now:
                c.handle_timer(now)
        for sender, other in ((a, b), (b, a)):
            for _, data in sender.datagrams_to_send(now):
                other.receive_untrusted(sender.node_id, data, now)
        while (event := b.next_event()) is not None:
            if isinstance(event, ItemReceived):
                received.append(event.item)
    assert [i.seq for i in received] == [1, 2, 3, 4, 5]
    assert b_store.version_vector() == {ALICE.public: 5}
    assert b_store.get(received[0].item_id) == received[0]


def test_forged_or_mislabelled_envelopes_are_not_stored(tmp_path: Path) -> None:
    b, b_store = node(tmp_path, "b")
    wrong_space = as_item(sealed(1, OTHER))
    genuine = as_item(sealed(2))
    relabelled = Item(genuine.item_id, genuine.author, 3, genuine.blob)
    renamed = Item(bytes(32), genuine.author, genuine.seq, genuine.blob)
    b.receive_untrusted(b"a", encode(Push((wrong_space, relabelled, renamed), True)), 0.0)
    assert b.next_event() is None
    assert b_store.drops == {"envelope_aead": 1, "gossip_mismatch": 2}
    assert b.drops["gossip_rejected"] == 3
    assert b_store.version_vector() == {}
