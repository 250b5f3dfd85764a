"""A deterministic two-endpoint network simulator for the reliable channel, and its tests.

Time is simulated: a priority queue of deliveries plus the channels' own timers; nothing
sleeps.  Each direction is a :class:`Link` with a one-way delay, seeded random loss,
reordering (a random extra delay), duplication, and optionally a bottleneck rate with a
tail-drop queue.  Other ``test_reliable_*`` modules import :class:`Network` from here.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from p2pd.errors import BadFrame
from p2pd.reliable import (
    Channel,
    ChannelClosed,
    ChannelConfig,
    MessageDelivered,
    MessageReceived,
)

#: A simulation that makes no progress in simulated time for this many steps is spinning.
MAX_STEPS_AT_ONE_INSTANT = 10_000


@dataclass
class LinkConfig:
    delay: float = 0.010
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    jitter: float = 0.0
    rate: float | None = None
    queue_limit: int | None = None


@dataclass
class Link:
    config: LinkConfig
    rng: random.Random
    busy_until: float = 0.0
    sent: int = 0
    lost: int = 0
    queue_drops: int = 0
    duplicated: int = 0

    def transmit(self, now: float, size: int) -> list[float]:
        """Arrival times of one datagram of ``size`` bytes sent at ``now`` (maybe none)."""
        config = self.config
        self.sent += 1
        depart = now
        if config.rate is not None:
            backlog = max(0.0, self.busy_until - now) * config.rate
            if config.queue_limit is not None and backlog + size > config.queue_limit:
                self.queue_drops += 1
                return []
            self.busy_until = max(now, self.busy_until) + size / config.rate
            depart = self.busy_until
        if self.rng.random() < config.loss:
            self.lost += 1
            return []
        arrival = depart + config.delay
        if config.reorder and self.rng.random() < config.reorder:
            arrival += self.rng.random() * config.jitter
        times = [arrival]
        if config.duplicate and self.rng.random() < config.duplicate:
            self.duplicated += 1
            times.append(arrival + self.rng.random() * max(config.jitter, config.delay))
        return times


@dataclass
class Endpoint:
    channel: Channel
    received: list[bytes] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    delivery_rtts: list[float] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    bad_frames: int = 0
    sends: list[tuple[float, list[int]]] = field(default_factory=list)
    last_delivery_time: float = 0.0


class Network:
    """Two channels, ``a`` and ``b``, joined by two links, in simulated time."""

    def __init__(
        self,
        a_to_b: LinkConfig | None = None,
        b_to_a: LinkConfig | None = None,
        *,
        seed: int = 0,
        config: ChannelConfig | None = None,
        max_plaintext: int = 1200,
        record_sends: bool = False,
    ) -> None:
        rng = random.Random(seed)
        self.now = 0.0
        self.a = Endpoint(Channel(now=0.0, max_plaintext=max_plaintext, config=config))
        self.b = Endpoint(Channel(now=0.0, max_plaintext=max_plaintext, config=config))
        self.links = {
            id(self.a): Link(a_to_b or LinkConfig(), random.Random(rng.random())),
            id(self.b): Link(b_to_a or LinkConfig(), random.Random(rng.random())),
        }
        self._queue: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self._record_sends = record_sends
        self.on_step: Callable[[Network], None] | None = None

    def peer(self, endpoint: Endpoint) -> Endpoint:
        return self.b if endpoint is self.a else self.a

    def link(self, endpoint: Endpoint) -> Link:
        """The link ``endpoint`` sends on."""
        return self.links[id(endpoint)]

    def inject(self, endpoint: Endpoint, datagram: bytes) -> None:
        """Deliver ``datagram`` to ``endpoint`` now, counting a rejection."""
        try:
            endpoint.channel.receive_datagram_untrusted(datagram, self.now)
        except BadFrame:
            endpoint.bad_frames += 1
        self._drain(endpoint)

    def _flush(self) -> None:
        for endpoint in (self.a, self.b):
            datagrams = endpoint.channel.datagrams_to_send(self.now)
            if not datagrams:
                continue
            if self._record_sends:
                endpoint.sends.append((self.now, [len(d) for d in datagrams]))
            link = self.link(endpoint)
            target = 1 if endpoint is self.a else 0
            for datagram in datagrams:
                for arrival in link.transmit(self.now, len(datagram)):
                    self._seq += 1
                    heapq.heappush(self._queue, (arrival, self._seq, target, datagram))

    def _drain(self, endpoint: Endpoint) -> None:
        while (event := endpoint.channel.next_event()) is not None:
            if isinstance(event, MessageReceived):
                endpoint.received.append(event.data)
                endpoint.last_delivery_time = self.now
            elif isinstance(event, MessageDelivered):
                endpoint.delivered.append(event.message_id)
                endpoint.delivery_rtts.append(event.rtt)
            elif isinstance(event, ChannelClosed):
                endpoint.closed.append(event.reason)

    def _next_time(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        for endpoint in (self.a, self.b):
            timer = endpoint.channel.get_timer()
            if timer is not None:
                times.append(timer)
        return min(times) if times else None

    def run(self, until: Callable[[], bool], max_time: float) -> None:
        """Advance until ``until()`` holds; fail if ``max_time`` passes first."""
        steps_here = 0
        while True:
            self._flush()
            if self.on_step is not None:
                self.on_step(self)
            if until():
                return
            next_time = self._next_time()
            assert next_time is not None, "nothing left to happen"
            assert next_time <= max_time, f"not done by t={max_time}"
            if next_time > self.now:
                self.now = next_time
                steps_here = 0
            steps_here += 1
            assert steps_here < MAX_STEPS_AT_ONE_INSTANT, f"timer spin at t={self.now}"
            while self._queue and self._queue[0][0] <= self.now:
                _, _, target, datagram = heapq.heappop(self._queue)
                self.inject(self.b if target == 1 else self.a, datagram)
            for endpoint in (self.a, self.b):
                timer = endpoint.channel.get_timer()
                if timer is not None and timer <= self.now:
                    endpoint.channel.handle_timer(self.now)
                    self._drain(endpoint)

    def run_until_delivered(self, count_a_to_b: int, count_b_to_a: int, max_time: float) -> None:
        """Run until each side received and got acknowledgements for the given counts."""
        a, b = self.a, self.b
        self.run(
            lambda: (
                len(b.received) >= count_a_to_b
                and len(a.received) >= count_b_to_a
                and len(a.delivered) >= count_a_to_b
                and len(b.delivered) >= count_b_to_a
            ),
            max_time,
        )


def test_lossless_link_delivers_after_the_one_way_delay() -> None:
    link = Link(LinkConfig(delay=0.05), random.Random(1))
    assert link.transmit(1.0, 100) == [pytest.approx(1.05)]


def test_bottleneck_serialises_datagrams_at_its_rate() -> None:
    link = Link(LinkConfig(delay=0.0, rate=1000.0), random.Random(1))
    assert link.transmit(0.0, 100) == [pytest.approx(0.1)]
    assert link.transmit(0.0, 100) == [pytest.approx(0.2)]


def test_bottleneck_queue_drops_from_the_tail_when_full() -> None:
    link = Link(LinkConfig(delay=0.0, rate=1000.0, queue_limit=250), random.Random(1))
    arrivals = [link.transmit(0.0, 100) for _ in range(4)]
    assert [len(a) for a in arrivals] == [1, 1, 0, 0]
    assert link.queue_drops == 2


def test_random_loss_drops_about_the_configured_fraction() -> None:
    link = Link(LinkConfig(loss=0.2), random.Random(7))
    delivered = sum(len(link.transmit(0.0, 10)) for _ in range(10_000))
    assert 7_700 < delivered < 8_300


def test_duplication_delivers_a_second_copy_later() -> None:
    link = Link(LinkConfig(delay=0.01, duplicate=1.0), random.Random(3))
    first, second = link.transmit(0.0, 10)
    assert second >= first


def test_idle_network_exchanges_a_small_message_each_way() -> None:
    net = Network()
    net.a.channel.send_message(b"ping", 0.0)
    net.b.channel.send_message(b"pong", 0.0)
    net.run_until_delivered(1, 1, max_time=1.0)
    assert net.b.received == [b"ping"]
    assert net.a.received == [b"pong"]
