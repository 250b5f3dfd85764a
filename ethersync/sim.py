"""A deterministic discrete-event simulation of many gossip cores on a lossy network.

Theory of operation
-------------------
The sans-IO :class:`~ethersync.gossip.GossipCore` takes ``now`` as an argument, so a
simulation needs no clock and no tasks: one heap of timestamped events (message
deliveries, core timers, publications, nodes going down and up) is popped in order and
each event is handed to its core; whatever the core then wants to send is scheduled for
delivery after a random latency, unless a seeded coin says it is lost.  Same seed, same
run, bit for bit; a thousand nodes run in well under a minute of CPU.

A run has four phases:

1. *Publish*: ``items`` items of ``item_size`` bytes appear one every
   ``publish_interval`` at random authors.  Meanwhile ``churn`` of the nodes each go
   offline once for a random while (their process restarts: a fresh core on the same
   store), and one "week" node is offline from the start.
2. *Converge*: until every node but the week node holds every item.  Bytes sent up to
   here are compared with the minimum: every node but the author must receive every
   item's bytes at least once.
3. *Steady state*: once every churned node is back, and ``settle_seconds`` later (the
   last eager copies and ids in flight), ``steady_seconds`` more, in sync: only
   digests and peer exchange should flow.
4. *The week*: the clock jumps by ``week_seconds`` (an in-sync network only exchanges
   matching digests, measured in phase 3), the week node restarts, and we measure how
   long it takes to hold everything.

Peers: each node starts knowing ``initial_peers`` random others and learns more by
peer exchange up to ``target_peers``; a node that hears from an unknown node adds it.
Nodes do not forget peers that went offline (messages to them are lost), as a driver
would only after its session timeout.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from ethersync.gossip import GossipCore, ItemReceived, PeersLearned
from ethersync.gossip_config import GossipConfig
from ethersync.gossip_store import MemoryStore
from ethersync.gossip_wire import AUTHOR_SIZE, ID_SIZE, Item

#: Event kinds, in tie-break order at one instant.
_UP, _DOWN, _PUBLISH, _DELIVER, _TIMER = range(5)
#: Bytes of a simulated node id.
NODE_ID_SIZE = 4
#: Seconds in a week.
WEEK = 7 * 24 * 3600.0
#: Give up on a phase after this much virtual time: a bug, not a slow network.
PHASE_LIMIT = 3600.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One scenario; every random choice derives from ``seed``."""

    nodes: int = 1000
    items: int = 100
    item_size: int = 1024
    authors: int = 20
    initial_peers: int = 4
    target_peers: int = 8
    latency: float = 0.05
    jitter: float = 0.05
    loss: float = 0.01
    churn: float = 0.05
    downtime: float = 60.0
    publish_interval: float = 0.5
    settle_seconds: float = 60.0
    steady_seconds: float = 300.0
    week_seconds: float = WEEK
    seed: int = 1
    gossip: GossipConfig = field(default_factory=GossipConfig)


@dataclass(frozen=True, slots=True)
class SimResult:
    """What a run measured (all times virtual seconds, all sizes gossip payload bytes)."""

    nodes: int
    items: int
    item_size: int
    convergence_time: float
    all_back_time: float
    delivery_p50: float
    delivery_p99: float
    bytes_per_node: float
    max_bytes_node: int
    min_bytes_per_node: float
    messages_per_node: float
    steady_bytes_per_node_minute: float
    week_catchup_time: float
    week_bytes_received: int
    copies_per_item: float
    lost_messages: int
    drops: dict[str, int]

    @property
    def ratio(self) -> float:
        """Bytes actually sent over the theoretical minimum."""
        return self.bytes_per_node / self.min_bytes_per_node


@dataclass(slots=True)
class _Node:
    store: MemoryStore
    core: GossipCore
    online: bool = True
    timer_at: float = math.inf
    restarts: int = 0
    #: What earlier incarnations of this node's core sent (a restart starts from zero).
    bytes_before: int = 0
    messages_before: int = 0


class Simulation:
    """The event loop; see the module docstring.  ``run()`` returns a :class:`SimResult`."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)  # noqa: S311 -- reproducible by design
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, object]] = []
        self._counter = itertools.count()
        self.nodes = [self._new_node(i, MemoryStore(), []) for i in range(config.nodes)]
        for i, node in enumerate(self.nodes):
            for j in self.rng.sample(range(config.nodes), config.initial_peers + 1):
                if j != i and len(node.core.peers) < config.initial_peers:
                    node.core.add_peer(_node_id(j))
        self.items: list[Item] = []
        self.published_at: dict[bytes, float] = {}
        self.received: dict[tuple[int, bytes], float] = {}
        self.lost = 0
        self.week_node = config.nodes - 1
        #: Nodes (the week node aside) that hold every item.
        self._complete: set[int] = set()
        self.last_up = 0.0
        self.churn_end = 0.0
        self._drops_before: collections.Counter[str] = collections.Counter()

    def _new_node(self, index: int, store: MemoryStore, peers: list[bytes]) -> _Node:
        seed = self.rng.getrandbits(64)
        core = GossipCore(
            _node_id(index),
            self.now,
            config=self.config.gossip,
            rng=random.Random(seed),  # noqa: S311
            store=store,
        )
        for peer in peers:
            core.add_peer(peer)
        return _Node(store, core)

    # -- scheduling -------------------------------------------------------------------

    def _push(self, when: float, kind: int, node: int, payload: object = None) -> None:
        heapq.heappush(self._heap, (when, kind, next(self._counter), node, payload))

    def _settle(self, index: int) -> None:
        """Send what node ``index`` queued, take its events, and re-arm its timer."""
        node = self.nodes[index]
        config = self.config
        for peer, data in node.core.datagrams_to_send(self.now):
            if self.rng.random() < config.loss:
                self.lost += 1
                continue
            delay = config.latency + self.rng.random() * config.jitter
            self._push(self.now + delay, _DELIVER, _node_index(peer), (index, data))
        while (event := node.core.next_event()) is not None:
            if isinstance(event, ItemReceived):
                key = (index, event.item.item_id)
                if key not in self.received:
                    self.received[key] = self.now
                    if len(node.store) == config.items and index != self.week_node:
                        self._complete.add(index)
            elif isinstance(event, PeersLearned):
                for peer in event.peers:
                    if len(node.core.peers) >= config.target_peers:
                        break
                    node.core.add_peer(peer)
        timer = max(node.core.get_timer(), self.now)
        if timer < node.timer_at:
            node.timer_at = timer
            self._push(timer, _TIMER, index)

    def _step(self) -> None:
        when, kind, _, index, payload = heapq.heappop(self._heap)
        self.now = when
        node = self.nodes[index]
        if kind == _TIMER:
            if when != node.timer_at:
                return
            node.timer_at = math.inf
            if not node.online:
                return
            node.core.handle_timer(self.now)
        elif kind == _DELIVER:
            if not node.online:
                self.lost += 1
                return
            assert isinstance(payload, tuple)
            source, data = payload
            node.core.receive_untrusted(_node_id(source), data, self.now)
        elif kind == _PUBLISH:
            assert isinstance(payload, Item)
            node.core.publish(payload, self.now)
            self.published_at[payload.item_id] = self.now
            if len(node.store) == self.config.items:
                self._complete.add(index)
        elif kind == _DOWN:
            node.online = False
            return
        elif kind == _UP:
            self._restart(index)
            self.last_up = max(self.last_up, self.now)
        self._settle(index)

    def _restart(self, index: int) -> None:
        """The node's process starts again: a fresh core over the same store and peers."""
        old = self.nodes[index]
        node = self._new_node(index, old.store, old.core.peers)
        node.restarts = old.restarts + 1
        self._drops_before.update(old.core.drops)
        node.bytes_before = old.bytes_before + old.core.bytes_sent
        node.messages_before = old.messages_before + old.core.sent.total()
        self.nodes[index] = node

    def _run_until(self, done: Callable[[], bool] | None, limit: float) -> bool:
        """Step until ``done()`` holds (True) or ``limit`` virtual seconds pass (False)."""
        deadline = self.now + limit
        while self._heap and self._heap[0][0] <= deadline:
            if done is not None and done():
                return True
            self._step()
        self.now = max(self.now, deadline) if done is None else self.now
        return done is not None and done()

    # -- the scenario -----------------------------------------------------------------

    def _schedule(self) -> None:
        config = self.config
        rng = self.rng
        authors = [_author_key(rng) for _ in range(config.authors)]
        seqs = [0] * config.authors
        for n in range(config.items):
            a = rng.randrange(config.authors)
            seqs[a] += 1
            blob = rng.randbytes(config.item_size)
            item = Item(
                hashlib.blake2b(blob, digest_size=ID_SIZE).digest(), authors[a], seqs[a], blob
            )
            self.items.append(item)
            self._push(n * config.publish_interval, _PUBLISH, a, item)
        window = config.items * config.publish_interval
        churners = range(config.authors, config.nodes - 1)
        for index in rng.sample(churners, min(len(churners), int(config.churn * config.nodes))):
            down = rng.random() * window
            self._push(down, _DOWN, index)
            up = down + rng.expovariate(1 / config.downtime)
            self._push(up, _UP, index)
            self.churn_end = max(self.churn_end, up)
        self.nodes[self.week_node].online = False
        for index in range(config.nodes):
            self._settle(index)

    def run(self) -> SimResult:
        config = self.config
        self._schedule()
        target = config.nodes - 1

        if not self._run_until(lambda: len(self._complete) >= target, PHASE_LIMIT):
            raise RuntimeError(f"no convergence: {len(self._complete)}/{target} nodes complete")
        converged = self.now
        back = self.last_up
        last_publish = max(self.published_at.values())
        duplicates = self._drops_before["gossip_duplicate"] + sum(
            node.core.drops["gossip_duplicate"] for node in self.nodes
        )
        sent = [node.bytes_before + node.core.bytes_sent for node in self.nodes]
        messages = sum(node.messages_before + node.core.sent.total() for node in self.nodes)
        delays = sorted(
            at - self.published_at[item_id]
            for (index, item_id), at in self.received.items()
            if index != self.week_node
        )
        # delivery latency of dissemination proper: nodes that stayed up all along
        stayed_up = sorted(
            at - self.published_at[item_id]
            for (index, item_id), at in self.received.items()
            if index != self.week_node and self.nodes[index].restarts == 0
        )

        self._run_until(None, max(self.churn_end - self.now, 0.0) + config.settle_seconds)
        before = sum(node.bytes_before + node.core.bytes_sent for node in self.nodes)
        self._run_until(None, config.steady_seconds)
        steady = sum(node.bytes_before + node.core.bytes_sent for node in self.nodes) - before
        online = sum(node.online for node in self.nodes)

        self._jump(self.now + config.week_seconds)
        returned = self.now
        self._push(self.now, _UP, self.week_node)
        if not self._run_until(
            lambda: len(self.nodes[self.week_node].store) == config.items, PHASE_LIMIT
        ):
            raise RuntimeError("the week node did not catch up")
        week = self.nodes[self.week_node]

        drops = dict(self._drops_before)
        for node in self.nodes:
            for reason, count in node.core.drops.items():
                drops[reason] = drops.get(reason, 0) + count
        return SimResult(
            nodes=config.nodes,
            items=config.items,
            item_size=config.item_size,
            convergence_time=converged - last_publish,
            all_back_time=converged - max(last_publish, back),
            delivery_p50=statistics.median(stayed_up),
            delivery_p99=stayed_up[int(0.99 * (len(stayed_up) - 1))],
            bytes_per_node=sum(sent) / config.nodes,
            max_bytes_node=max(sent),
            min_bytes_per_node=config.items * config.item_size * (config.nodes - 1) / config.nodes,
            messages_per_node=messages / config.nodes,
            steady_bytes_per_node_minute=steady / online / (config.steady_seconds / 60),
            week_catchup_time=self.now - returned,
            week_bytes_received=week.core.bytes_received,
            copies_per_item=(len(delays) + duplicates) / len(delays),
            lost_messages=self.lost,
            drops=dict(sorted(drops.items())),
        )

    def _jump(self, to: float) -> None:
        """Advance the clock to ``to`` at once; messages in flight are lost, timers re-armed."""
        self.lost += sum(1 for entry in self._heap if entry[1] == _DELIVER)
        self._heap = []
        self.now = to
        for index, node in enumerate(self.nodes):
            node.timer_at = math.inf
            if node.online:
                self._settle(index)


def _node_id(index: int) -> bytes:
    return index.to_bytes(NODE_ID_SIZE, "big")


def _node_index(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def _author_key(rng: random.Random) -> bytes:
    return rng.randbytes(AUTHOR_SIZE)


def simulate(config: SimConfig) -> SimResult:
    """Run one scenario (deterministic for a given ``config``)."""
    return Simulation(config).run()
