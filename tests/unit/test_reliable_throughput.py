"""Congestion control and pacing of the reliable channel behind a simulated bottleneck."""

from __future__ import annotations

import itertools
import random

import pytest
from test_reliable_sim import LinkConfig, Network

from p2pd.reliable import ChannelConfig

#: Bottleneck of the simulated path: 10 Mbit/s, 40 ms round trip, one BDP of queue.
RATE = 1.25e6
DELAY = 0.02
QUEUE = 50_000
MDS = 1200


def bulk(size: int, *, seed: int = 1, record_sends: bool = False) -> Network:
    """A network with a bulk transfer of ``size`` bytes from a to b queued."""
    net = Network(
        LinkConfig(delay=DELAY, rate=RATE, queue_limit=QUEUE),
        LinkConfig(delay=DELAY),
        seed=seed,
        record_sends=record_sends,
    )
    net.a.channel.send_message(random.Random(seed).randbytes(size), 0.0)
    return net


def test_goodput_reaches_most_of_the_bottleneck_without_massive_loss() -> None:
    size = 4_000_000
    net = bulk(size)
    net.run_until_delivered(1, 0, max_time=60)
    goodput = size / net.b.last_delivery_time
    link = net.link(net.a)
    assert goodput > 0.7 * RATE
    assert link.queue_drops < 0.05 * link.sent


def test_slow_start_grows_then_the_first_loss_halves_the_window() -> None:
    net = bulk(3_000_000)
    trace: list[tuple[int, int]] = []
    net.on_step = lambda n: trace.append(
        (int(n.a.channel.stats["congestion_events"]), int(n.a.channel.stats["cwnd"]))
    )
    net.run_until_delivered(1, 0, max_time=60)
    before = [cwnd for events, cwnd in trace if events == 0]
    after_first = [cwnd for events, cwnd in trace if events == 1]
    assert before == sorted(before)
    assert before[0] == 10 * MDS
    assert before[-1] >= 8 * before[0]
    assert after_first[0] == pytest.approx(before[-1] / 2, abs=MDS)


def test_congestion_avoidance_grows_about_one_datagram_per_round_trip() -> None:
    net = bulk(4_000_000)
    samples: list[tuple[float, int, int]] = []
    net.on_step = lambda n: samples.append(
        (n.now, int(n.a.channel.stats["congestion_events"]), int(n.a.channel.stats["cwnd"]))
    )
    net.run_until_delivered(1, 0, max_time=60)
    # The longest stretch between two congestion events, after slow start ended.
    stretches: dict[int, list[tuple[float, int]]] = {}
    for now, events, cwnd in samples:
        if events > 0:
            stretches.setdefault(events, []).append((now, cwnd))
    stretch = max(stretches.values(), key=lambda s: s[-1][0] - s[0][0])
    (t0, cwnd0), (t1, cwnd1) = stretch[0], stretch[-1]
    assert t1 - t0 > 1.0
    srtt = net.a.channel.stats["srtt"]
    expected = (t1 - t0) / srtt * MDS
    assert 0.5 * expected <= cwnd1 - cwnd0 <= 1.5 * expected


def test_no_burst_exceeds_the_pacing_allowance() -> None:
    config = ChannelConfig(pacing_burst_packets=4, pacing_burst_time=0.0)
    net = Network(
        LinkConfig(delay=DELAY, rate=RATE, queue_limit=QUEUE),
        LinkConfig(delay=DELAY),
        config=config,
        record_sends=True,
    )
    net.a.channel.send_message(random.Random(2).randbytes(2_000_000), 0.0)
    rates: list[float] = []
    net.on_step = lambda n: rates.append(float(n.a.channel.stats["pacing_rate"]))
    net.run_until_delivered(1, 0, max_time=60)
    allowance = 4 * MDS
    calls = [(t, sum(s for s in sizes if s > 200)) for t, sizes in net.a.sends]
    assert max(total for _, total in calls) <= allowance
    peak_rate = max(rates)
    for i, (start, _) in enumerate(calls):
        released = 0
        for end, total in calls[i : i + 100]:
            released += total
            assert released <= allowance + peak_rate * (end - start) + 1


def test_pacing_spreads_a_window_over_the_round_trip() -> None:
    net = bulk(2_000_000, record_sends=True)
    net.run_until_delivered(1, 0, max_time=60)
    times = [t for t, sizes in net.a.sends if any(s > 200 for s in sizes)]
    steady = [t for t in times if t > 1.0]
    gaps = [b - a for a, b in itertools.pairwise(steady)]
    assert len(steady) > 100
    assert max(gaps) < 0.04
    assert sorted(gaps)[len(gaps) // 2] < 0.005
