"""Token buckets, the bounded per-source table, and the under-load signal (simulated time)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import LocalError
from p2pd.ratelimit import (
    MAX_SOURCES,
    PACKETS_BURSTABLE,
    PACKETS_PER_SECOND,
    SOURCE_IDLE_TIMEOUT,
    UNDER_LOAD_AFTER_TIME,
    UNDER_LOAD_PER_SECOND,
    LoadMonitor,
    SourceLimiter,
    TokenBucket,
    bucket_key,
)

# --- TokenBucket -------------------------------------------------------------------


def test_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=20.0, burst=5.0)
    assert [bucket.allow(0.0) for _ in range(6)] == [True] * 5 + [False]


def test_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=20.0, burst=5.0)
    for _ in range(5):
        bucket.allow(0.0)
    assert not bucket.allow(0.049)
    assert bucket.allow(0.051)
    assert not bucket.allow(0.052)
    assert bucket.tokens(0.152) == pytest.approx(2.04, abs=1e-6)


def test_bucket_never_banks_more_than_burst() -> None:
    bucket = TokenBucket(rate=20.0, burst=5.0)
    bucket.allow(0.0)
    assert bucket.tokens(1000.0) == 5.0
    assert [bucket.allow(1000.0) for _ in range(6)] == [True] * 5 + [False]


def test_bucket_sustains_exactly_its_rate_after_the_burst() -> None:
    bucket = TokenBucket(rate=20.0, burst=5.0)
    assert all(bucket.allow(0.0) for _ in range(5))
    # One packet every 1/20 s for 10 s: every one allowed, and nothing more.
    for i in range(1, 201):
        now = i / 20.0
        assert bucket.allow(now), i
        assert not bucket.allow(now), i


def test_bucket_clock_going_back_refills_nothing() -> None:
    bucket = TokenBucket(rate=20.0, burst=1.0)
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)
    assert not bucket.allow(10.0)


def test_bucket_cost_spends_several_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=5.0)
    assert bucket.allow(0.0, cost=3.0)
    assert not bucket.allow(0.0, cost=3.0)
    assert bucket.allow(0.0, cost=2.0)


def test_bucket_rejects_nonsense_parameters() -> None:
    for rate, burst in ((0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)):
        with pytest.raises(LocalError):
            TokenBucket(rate, burst)
    with pytest.raises(LocalError):
        TokenBucket(1.0, 1.0).allow(0.0, cost=-1.0)


@given(st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=1, max_size=200))
def test_bucket_never_allows_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    bucket = TokenBucket(rate=PACKETS_PER_SECOND, burst=PACKETS_BURSTABLE)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += bucket.allow(now)
    assert allowed <= PACKETS_BURSTABLE + PACKETS_PER_SECOND * now + 1e-6


# --- SourceLimiter -----------------------------------------------------------------


def exhaust(limiter: SourceLimiter, source: tuple[str, int], now: float) -> None:
    while limiter.allow(source, now):
        pass


def test_limiter_keeps_sources_apart() -> None:
    limiter = SourceLimiter()
    exhaust(limiter, ("192.0.2.1", 1), 0.0)
    assert not limiter.allow(("192.0.2.1", 1), 0.0)
    assert limiter.allow(("192.0.2.2", 1), 0.0)


def test_limiter_ignores_the_port() -> None:
    limiter = SourceLimiter()
    exhaust(limiter, ("192.0.2.1", 1), 0.0)
    assert not limiter.allow(("192.0.2.1", 2), 0.0)


def test_limiter_groups_ipv6_by_64_prefix() -> None:
    limiter = SourceLimiter()
    exhaust(limiter, ("2001:db8:1:2::1", 1), 0.0)
    assert not limiter.allow(("2001:db8:1:2:ffff::9", 1), 0.0)
    assert limiter.allow(("2001:db8:1:3::1", 1), 0.0)


def test_limiter_counts_ipv4_mapped_ipv6_as_ipv4() -> None:
    assert bucket_key("::ffff:192.0.2.1") == bucket_key("192.0.2.1")
    assert bucket_key("::ffff:192.0.2.1") != bucket_key("::ffff:192.0.2.2")


def test_limiter_rejects_a_source_that_is_not_an_ip() -> None:
    with pytest.raises(LocalError):
        SourceLimiter().allow(("example.org", 1), 0.0)


def test_limiter_collects_idle_sources() -> None:
    limiter = SourceLimiter()
    for i in range(100):
        limiter.allow((f"10.0.0.{i}", 1), 0.0)
    limiter.allow(("10.0.1.1", 1), 0.5)
    assert len(limiter) == 101
    limiter.allow(("10.0.1.2", 1), SOURCE_IDLE_TIMEOUT)
    assert len(limiter) == 2


def test_limiter_memory_stays_bounded_with_100k_sources() -> None:
    limiter = SourceLimiter()
    for i in range(100_000):
        host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        limiter.allow((host, 1), 0.0)
        assert len(limiter) <= MAX_SOURCES
    assert len(limiter) == MAX_SOURCES
    assert limiter.evictions == 100_000 - MAX_SOURCES


def test_full_limiter_evicts_the_stalest_source() -> None:
    a, b, c = ("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)
    limiter = SourceLimiter(max_sources=2)
    exhaust(limiter, a, 0.0)
    limiter.allow(b, 0.0)
    limiter.allow(c, 0.0)  # evicts a, the stalest
    assert limiter.allow(a, 0.0)  # a fresh bucket

    limiter = SourceLimiter(max_sources=2)
    exhaust(limiter, a, 0.0)
    limiter.allow(b, 0.0)
    assert not limiter.allow(a, 0.0)  # touching a makes b the stalest
    limiter.allow(c, 0.0)  # evicts b
    assert not limiter.allow(a, 0.0)


# --- under load --------------------------------------------------------------------


def test_not_under_load_below_the_threshold() -> None:
    monitor = LoadMonitor()
    for i in range(UNDER_LOAD_PER_SECOND - 1):
        monitor.note_arrival(i * 0.001)
    assert not monitor.under_load(0.5)


def test_under_load_when_the_threshold_is_reached_within_a_second() -> None:
    monitor = LoadMonitor()
    for i in range(UNDER_LOAD_PER_SECOND):
        monitor.note_arrival(i * 0.001)
    assert monitor.under_load(UNDER_LOAD_PER_SECOND * 0.001)


def test_under_load_decays_after_under_load_after_time() -> None:
    monitor = LoadMonitor(per_second=3)
    for now in (0.0, 0.1, 0.2):
        monitor.note_arrival(now)
    assert monitor.under_load(0.2)
    assert monitor.under_load(0.2 + UNDER_LOAD_AFTER_TIME - 0.001)
    assert not monitor.under_load(0.2 + UNDER_LOAD_AFTER_TIME)


def test_under_load_uses_a_sliding_window() -> None:
    monitor = LoadMonitor(per_second=3)
    for now in (0.0, 0.6, 1.2, 1.8, 2.4):  # never three within one second
        monitor.note_arrival(now)
        assert not monitor.under_load(now)
    monitor.note_arrival(2.5)  # 1.8, 2.4, 2.5
    assert monitor.under_load(2.5)


def test_sustained_overload_keeps_the_signal_on() -> None:
    limiter = SourceLimiter(under_load_per_second=10)
    for i in range(500):  # 100 per second for 5 s
        limiter.note_handshake(i * 0.01)
        if i >= 10:
            assert limiter.under_load(i * 0.01)


def test_load_monitor_rejects_zero_threshold() -> None:
    with pytest.raises(LocalError):
        LoadMonitor(per_second=0)
