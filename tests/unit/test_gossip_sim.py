"""The gossip simulation: deterministic, converges under loss and churn; and the same
cores driven by real trio tasks under ``trio.testing.MockClock``."""

from __future__ import annotations

import hashlib
import math
import random

import trio
import trio.testing

from ethersync.gossip import GossipCore, ItemReceived
from ethersync.gossip_wire import Item
from ethersync.sim import SimConfig, Simulation, simulate

SMALL = SimConfig(nodes=60, items=30, churn=0.1, loss=0.02, steady_seconds=60.0, seed=7)


def test_same_seed_same_result() -> None:
    assert simulate(SMALL) == simulate(SMALL)


def test_another_seed_another_run() -> None:
    other = SimConfig(**{**{f: getattr(SMALL, f) for f in SMALL.__slots__}, "seed": 8})
    assert simulate(other) != simulate(SMALL)


def test_two_hundred_nodes_converge_through_loss_and_churn_near_the_minimum() -> None:
    config = SimConfig(nodes=200, items=100, loss=0.01, churn=0.05, seed=3)
    sim = Simulation(config)
    result = sim.run()
    assert all(len(node.store) == config.items for node in sim.nodes)
    gossip = config.gossip
    # once the last restarted node is back, a few seconds (convergence can only wait for
    # a node that is down)
    assert result.all_back_time < 15.0
    assert result.delivery_p99 < 10.0
    # every node must receive every item once: the overhead is a small factor
    assert 1.0 < result.ratio < 2.2
    # once in sync, only digests and peer exchange: a few hundred bytes a minute
    assert result.steady_bytes_per_node_minute < 400
    # the node that was away for a week catches up in about one anti-entropy round
    assert result.week_catchup_time < 1.5 * gossip.startup_anti_entropy + 1.0
    assert result.week_bytes_received < 2 * config.items * config.item_size
    assert result.lost_messages > 0


def _item(seq: int) -> Item:
    blob = seq.to_bytes(4, "big") * 64
    return Item(hashlib.blake2b(blob, digest_size=32).digest(), bytes(32), seq, blob)


async def test_cores_under_trio_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    """Ten cores as trio tasks, a 20 ms network losing every 10th message: all converge.

    ``autojump_clock`` is pytest-trio's ``MockClock(autojump_threshold=0)``.
    """
    start = trio.current_time()
    count, latency = 10, 0.02
    names = [bytes([i]) for i in range(count)]
    cores = [GossipCore(n, start, rng=random.Random(n)) for n in names]
    for i, c in enumerate(cores):
        c.add_peer(names[(i + 1) % count])
        c.add_peer(names[(i + 3) % count])
    inboxes = [trio.open_memory_channel[tuple[bytes, bytes]](math.inf) for _ in names]
    items = [_item(s) for s in range(1, 21)]
    done = trio.Event()
    have = [0] * count
    sent = 0

    async def deliver(target: int, source: bytes, data: bytes) -> None:
        await trio.sleep(latency)
        inboxes[target][0].send_nowait((source, data))

    async def node(index: int, nursery: trio.Nursery) -> None:
        nonlocal sent
        c = cores[index]
        receive = inboxes[index][1]
        while True:
            with trio.move_on_at(c.get_timer()):
                source, data = await receive.receive()
                c.receive_untrusted(source, data, trio.current_time())
            now = trio.current_time()
            if c.get_timer() <= now:
                c.handle_timer(now)
            for peer, data in c.datagrams_to_send(now):
                sent += 1
                if sent % 10:
                    nursery.start_soon(deliver, peer[0], c.node_id, data)
            while (event := c.next_event()) is not None:
                if isinstance(event, ItemReceived):
                    have[index] += 1
                    if all(h == len(items) for h in have[1:]):
                        done.set()

    async def publisher() -> None:
        for item in items:
            cores[0].publish(item, trio.current_time())
            await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(node, i, nursery)
        nursery.start_soon(publisher)
        await done.wait()
        nursery.cancel_scope.cancel()
    assert all(h == len(items) for h in have[1:])
    assert sent > 100
    assert trio.current_time() - start < 60.0
