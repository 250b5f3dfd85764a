"""The fetch bookkeeping of gossip: pending wants and the single pull."""

from __future__ import annotations

from ethersync.gossip_config import GossipConfig
from ethersync.gossip_pull import MAX_PULL_RETRIES, Pull, behind
from ethersync.gossip_wants import WantTable

CFG = GossipConfig(max_pending_wants=2, max_announcers=2, want_delay=0.5, want_timeout=2.0)
A, B = b"a" * 32, b"b" * 32


def test_a_want_waits_want_delay_then_asks_each_announcer_in_turn() -> None:
    wants = WantTable(CFG)
    assert wants.announce(A, b"p1", 0.0)
    assert wants.announce(A, b"p2", 0.1)
    assert wants.announce(A, b"p3", 0.2)  # beyond max_announcers: remembered no more
    assert wants.due(0.4) == []
    assert wants.due(0.5) == [(b"p1", A)]
    assert wants.due(2.4) == []
    assert wants.due(2.5) == [(b"p2", A)]
    assert wants.due(4.5) == []
    assert len(wants) == 0


def test_wants_are_capped_and_forgotten_on_arrival() -> None:
    wants = WantTable(CFG)
    assert wants.announce(A, b"p1", 0.0)
    assert wants.announce(B, b"p1", 0.0)
    assert not wants.announce(b"c" * 32, b"p1", 0.0)
    assert wants.arrived(A)
    assert not wants.arrived(A)
    assert wants.due(10.0) == [(b"p1", B)]


def test_one_pull_at_a_time() -> None:
    pull = Pull(0.0, timeout=2.0)
    assert pull.claim(b"x", 0.0)
    assert pull.elsewhere(b"y", 1.0)
    assert not pull.claim(b"y", 1.0)
    assert pull.claim(b"x", 1.5)  # the stream goes on: extended
    assert pull.elsewhere(b"y", 3.4)
    assert not pull.elsewhere(b"y", 3.5)
    assert pull.claim(b"y", 3.5)


def test_a_quiet_pull_short_of_its_target_is_retried_a_few_times() -> None:
    pull = Pull(0.0, timeout=2.0)
    assert pull.claim(b"x", 0.0, {A: 5})
    assert pull.timer() == 2.0
    assert pull.retry(1.0, {A: 3}) is None
    now = 2.0
    for _ in range(MAX_PULL_RETRIES):
        assert pull.retry(now, {A: 3}) == b"x"
        now += 2.0
    assert pull.retry(now, {A: 3}) is None
    assert pull.timer() is None


def test_a_pull_that_reached_its_target_ends() -> None:
    pull = Pull(0.0, timeout=2.0)
    pull.claim(b"x", 0.0, {A: 5, B: 1})
    assert pull.retry(2.0, {A: 5, B: 1}) is None
    assert pull.timer() is None
    assert behind({A: 5}, {A: 5, B: 1})
    assert not behind({A: 6, B: 1}, {A: 5})
