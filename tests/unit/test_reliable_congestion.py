"""NewReno window arithmetic and the pacer's token bucket, in isolation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.reliable._congestion import NewReno, Pacer

MDS = 1200


def filled(cc: NewReno) -> int:
    """Send full datagrams until the window is full; returns how many."""
    count = 0
    while cc.can_send():
        cc.on_sent(MDS)
        count += 1
    return count


def test_a_packet_sent_with_half_the_window_in_flight_counts_as_window_used() -> None:
    cc = NewReno(MDS)
    used = [cc.on_sent(MDS) for _ in range(10)]
    assert used == [False] * 4 + [True] * 6


def test_initial_window_is_ten_datagrams_and_minimum_two() -> None:
    cc = NewReno(MDS)
    assert cc.cwnd == 10 * MDS
    assert cc.min_window == 2 * MDS
    assert cc.ssthresh == math.inf
    assert filled(cc) == 10


def test_slow_start_grows_the_window_by_each_acknowledged_byte() -> None:
    cc = NewReno(MDS)
    filled(cc)
    for pn in range(10):
        cc.on_acked(MDS, pn, window_used=True)
    assert cc.cwnd == 20 * MDS
    assert cc.bytes_in_flight == 0


def test_congestion_event_halves_the_window_and_sets_ssthresh() -> None:
    cc = NewReno(MDS)
    filled(cc)
    cc.on_lost(MDS, largest_lost_pn=3, next_pn=10, persistent=False)
    assert cc.ssthresh == 5 * MDS
    assert cc.cwnd == 5 * MDS
    assert cc.congestion_events == 1


def test_losses_within_one_recovery_period_reduce_the_window_once() -> None:
    cc = NewReno(MDS)
    filled(cc)
    cc.on_lost(MDS, largest_lost_pn=3, next_pn=10, persistent=False)
    cc.on_lost(MDS, largest_lost_pn=8, next_pn=10, persistent=False)
    assert cc.cwnd == 5 * MDS
    assert cc.congestion_events == 1
    cc.on_lost(MDS, largest_lost_pn=10, next_pn=12, persistent=False)
    assert cc.congestion_events == 2


def test_acks_of_packets_sent_before_recovery_do_not_grow_the_window() -> None:
    cc = NewReno(MDS)
    filled(cc)
    cc.on_lost(MDS, largest_lost_pn=0, next_pn=10, persistent=False)
    cc.on_acked(MDS, pn=5, window_used=True)
    assert cc.cwnd == 5 * MDS


def test_congestion_avoidance_adds_one_datagram_per_window_acknowledged() -> None:
    cc = NewReno(MDS)
    filled(cc)
    cc.on_lost(MDS, largest_lost_pn=0, next_pn=10, persistent=False)
    assert cc.cwnd == 5 * MDS
    pn = 10
    for _ in range(5):
        cc.on_sent(MDS)
    for _ in range(5):
        cc.on_acked(MDS, pn, window_used=True)
        cc.on_sent(MDS)
        pn += 1
    assert cc.cwnd == 6 * MDS


def test_persistent_congestion_collapses_to_the_minimum_window() -> None:
    cc = NewReno(MDS)
    filled(cc)
    cc.on_lost(5 * MDS, largest_lost_pn=4, next_pn=10, persistent=True)
    assert cc.cwnd == cc.min_window


def test_window_does_not_grow_when_the_sender_uses_under_half_of_it() -> None:
    cc = NewReno(MDS)
    window_used = cc.on_sent(MDS)
    cc.on_acked(MDS, 0, window_used)
    assert cc.cwnd == 10 * MDS


def test_pacer_allows_its_burst_then_waits_for_tokens() -> None:
    pacer = Pacer(max_datagram_size=MDS, burst_packets=4, burst_time=0.0, now=0.0)
    pacer.set_rate(MDS * 100.0, 0.0)  # 100 datagrams per second
    sent = 0
    while pacer.can_send(0.0):
        pacer.on_sent(MDS)
        sent += 1
    assert sent == 4
    assert pacer.next_send_time() == pytest.approx(0.01)
    assert not pacer.can_send(0.0099)
    assert pacer.can_send(0.01)


def test_pacer_burst_grows_with_rate_to_cover_burst_time() -> None:
    pacer = Pacer(max_datagram_size=MDS, burst_packets=2, burst_time=0.001, now=0.0)
    pacer.set_rate(100e6, 0.0)
    assert pacer.depth == pytest.approx(100e3)


@given(
    rate=st.floats(1e4, 1e8),
    gaps=st.lists(st.floats(0, 0.01), min_size=1, max_size=200),
    sizes=st.lists(st.integers(20, MDS), min_size=1, max_size=50),
)
def test_pacer_never_releases_more_than_depth_plus_rate_times_elapsed(
    rate: float, gaps: list[float], sizes: list[int]
) -> None:
    pacer = Pacer(max_datagram_size=MDS, burst_packets=3, burst_time=0.001, now=0.0)
    pacer.set_rate(rate, 0.0)
    now = 0.0
    sent = 0
    for i, gap in enumerate(gaps):
        now += gap
        while pacer.can_send(now):
            size = sizes[i % len(sizes)]
            pacer.on_sent(size)
            sent += size
        assert sent <= pacer.depth + rate * now + 1e-6 * rate + 1
