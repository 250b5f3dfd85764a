"""The racer: staggered, prioritised, deduplicated attempts, and the result of the race."""

from __future__ import annotations

import itertools
import math

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import LocalError
from transports.base import PATHS, Candidate, Emit, Path
from transports.racer import STAGGER_DELAY, RaceCore, Racer, RaceResult

A, B, C = ("10.7.0.2", 50000), ("198.51.100.7", 40000), ("203.0.113.9", 443)


def cand(addr: tuple[str, int], path: Path, at: float = 0.0) -> Candidate:
    return Candidate(addr, path, at)


def test_path_priority_is_the_documented_order() -> None:
    assert PATHS == ("lan", "mapped", "direct", "punched", "relay", "tcp", "tor")
    assert [cand(A, p).rank for p in PATHS] == list(range(len(PATHS)))


def test_unknown_path_is_local_misuse() -> None:
    with pytest.raises(LocalError):
        Candidate(A, "carrier-pigeon", 0.0)  # type: ignore[arg-type]


def test_nothing_to_do_without_candidates() -> None:
    race = RaceCore(0.0)
    assert race.get_timer() is None
    assert race.due(10.0) == []


def test_first_candidate_is_attempted_at_once() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "relay", 1.0), 1.0)
    assert race.get_timer() is not None and race.get_timer() <= 1.0  # type: ignore[operator]
    assert race.due(1.0) == [A]


def test_second_attempt_waits_one_stagger() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "lan"), 0.0)
    race.add(cand(B, "lan"), 0.0)
    assert race.due(0.0) == [A]
    assert race.get_timer() == pytest.approx(STAGGER_DELAY)
    assert race.due(STAGGER_DELAY - 0.001) == []
    assert race.due(STAGGER_DELAY) == [B]


def test_better_path_goes_first_among_waiting_candidates() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "tor"), 0.0)
    assert race.due(0.0) == [A]
    race.add(cand(B, "relay"), 0.1)
    race.add(cand(C, "lan"), 0.2)
    assert race.due(0.25) == [C]
    assert race.due(0.5) == [B]


def test_same_address_is_attempted_once() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "lan"), 0.0)
    assert race.due(0.0) == [A]
    assert not race.add(cand(A, "lan"), 1.0)
    assert not race.add(cand(A, "direct"), 1.0)
    assert race.due(5.0) == []
    assert race.dropped_duplicates == 2


def test_queued_address_found_on_a_better_path_is_lifted() -> None:
    race = RaceCore(0.0)
    race.add(cand(B, "lan"), 0.0)
    race.due(0.0)
    race.add(cand(C, "mapped"), 0.1)
    race.add(cand(A, "tor"), 0.1)
    assert race.add(cand(A, "lan"), 0.2)
    assert not race.add(cand(A, "relay"), 0.2)
    assert race.due(0.25) == [A]
    assert race.due(0.5) == [C]
    assert race.won(A, 1.0) == RaceResult("lan", A, 1.0)


def test_failure_lets_the_next_attempt_start_at_once() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "lan"), 0.0)
    race.add(cand(B, "lan"), 0.0)
    race.due(0.0)
    race.failed(A, 0.1)
    assert race.get_timer() == pytest.approx(0.1)
    assert race.due(0.1) == [B]


def test_failure_of_an_unknown_address_changes_nothing() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "lan"), 0.0)
    race.add(cand(B, "lan"), 0.0)
    race.due(0.0)
    race.failed(C, 0.1)
    assert race.get_timer() == pytest.approx(STAGGER_DELAY)


def test_win_reports_path_address_and_time_since_the_race_started() -> None:
    race = RaceCore(10.0)
    race.add(cand(B, "mapped", 10.5), 10.5)
    race.due(10.5)
    assert race.won(B, 10.8) == RaceResult("mapped", B, pytest.approx(0.8))


def test_win_ends_the_race() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "lan"), 0.0)
    race.add(cand(B, "relay"), 0.0)
    race.due(0.0)
    race.won(A, 0.1)
    assert race.over
    assert race.get_timer() is None
    assert race.due(1.0) == []
    assert not race.add(cand(C, "lan"), 1.0)


def test_later_win_of_another_raced_address_still_reports_its_path() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "lan"), 0.0)
    race.add(cand(B, "relay"), 0.0)
    race.due(0.0)
    race.due(0.25)
    race.won(A, 0.3)
    assert race.won(B, 0.9) == RaceResult("relay", B, pytest.approx(0.9))
    assert race.winner == RaceResult("lan", A, pytest.approx(0.3))


def test_win_of_an_address_never_raced_is_none() -> None:
    race = RaceCore(0.0)
    assert race.won(C, 1.0) is None
    assert not race.over


def test_restart_forgets_the_previous_race() -> None:
    race = RaceCore(0.0)
    race.add(cand(A, "lan"), 0.0)
    race.due(0.0)
    race.won(A, 0.1)
    race.restart(60.0)
    assert race.add(cand(A, "lan"), 60.0)
    assert race.due(60.0) == [A]
    assert race.won(A, 61.0) == RaceResult("lan", A, pytest.approx(1.0))


# --- properties over arbitrary arrival orders ------------------------------------------

addrs = st.tuples(st.sampled_from(["10.7.0.2", "10.7.0.3", "198.51.100.1"]), st.integers(1, 4))
arrivals = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), addrs, st.sampled_from(PATHS)), max_size=25
)


def simulate(events: list[tuple[float, tuple[str, int], Path]]) -> list[tuple[float, Candidate]]:
    """Feed arrivals in time order, fire timers in between; return (start time, candidate)."""
    race = RaceCore(0.0)
    events = sorted(events, key=lambda e: e[0])
    started: list[tuple[float, Candidate]] = []
    now, i = 0.0, 0
    while True:
        timer = race.get_timer()
        next_arrival = events[i][0] if i < len(events) else math.inf
        now = max(now, min(next_arrival, math.inf if timer is None else timer))
        if now == math.inf:
            return started
        while i < len(events) and events[i][0] <= now:
            race.add(cand(events[i][1], events[i][2], events[i][0]), now)
            i += 1
        race.handle_timer(now)
        while (attempt := race.next_attempt()) is not None:
            assert attempt.started_at == now
            started.append((now, attempt.candidate))


@given(arrivals)
def test_every_distinct_address_is_attempted_exactly_once(events: list) -> None:
    started = simulate(events)
    assert sorted(c.addr for _, c in started) == sorted({addr for _, addr, _ in events})


@given(arrivals)
def test_attempts_start_at_least_one_stagger_apart(events: list) -> None:
    times = [t for t, _ in simulate(events)]
    assert all(b - a >= STAGGER_DELAY - 1e-9 for a, b in itertools.pairwise(times))


@given(arrivals)
def test_no_attempt_starts_before_its_candidate_arrived_or_later_than_needed(
    events: list,
) -> None:
    previous = -math.inf
    for t, candidate in simulate(events):
        assert t >= candidate.found_at
        # Work-conserving: it starts when it arrived or when the stagger allowed, not later.
        assert t == pytest.approx(previous + STAGGER_DELAY) or (
            t == candidate.found_at > previous + STAGGER_DELAY
        )
        previous = t


def rank_known_at(events: list, addr: tuple[str, int], t: float) -> int | None:
    """The best path rank of ``addr`` among arrivals up to time ``t``, or None."""
    ranks = [cand(a, path).rank for at, a, path in events if a == addr and at <= t]
    return min(ranks, default=None)


@given(arrivals)
def test_each_attempt_takes_the_best_path_waiting(events: list) -> None:
    started = simulate(events)
    for i, (t, candidate) in enumerate(started):
        # It runs under the best path known for its address when it starts...
        assert candidate.rank == rank_known_at(events, candidate.addr, t)
        # ...and no address still waiting then had a better one.
        for _, later in started[i + 1 :]:
            waiting_rank = rank_known_at(events, later.addr, t)
            assert waiting_rank is None or candidate.rank <= waiting_rank


# --- the trio Racer ---------------------------------------------------------------------


class Scripted:
    """A transport that emits candidates at given delays."""

    name = "scripted"

    def __init__(self, *timed: tuple[float, Candidate]) -> None:
        self.timed = timed

    async def run(self, emit: Emit) -> None:
        start = trio.current_time()
        for delay, candidate in self.timed:
            await trio.sleep_until(start + delay)
            emit(candidate)
        await trio.sleep_forever()


async def test_racer_reports_the_first_attempt_that_connects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started: list[tuple[float, tuple[str, int]]] = []

    async def attempt(candidate: Candidate) -> bool:
        started.append((trio.current_time(), candidate.addr))
        if candidate.addr != B:  # stale addresses: their attempts time out
            await trio.sleep(5.0)
            return False
        await trio.sleep(0.1)
        return True

    racer = Racer(attempt)
    start = trio.current_time()
    transport = Scripted((0.0, cand(A, "lan")), (0.0, cand(B, "mapped")), (0.05, cand(C, "lan")))
    result = await racer.run([transport])
    assert result == RaceResult("mapped", B, pytest.approx(0.6))
    assert [(round(t - start, 6), a) for t, a in started] == [(0.0, A), (0.25, C), (0.5, B)]


async def test_racer_stops_when_told_of_an_inbound_win(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def attempt(candidate: Candidate) -> bool:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    racer = Racer(attempt)
    racer.emit(cand(A, "lan"))  # before run: kept for the race
    async with trio.open_nursery() as nursery:

        async def peer_connects() -> None:
            await trio.sleep(0.3)
            racer.won(A)

        nursery.start_soon(peer_connects)
        result = await racer.run()
    assert result == RaceResult("lan", A, pytest.approx(0.3))


async def test_racer_treats_oserror_as_a_failed_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def attempt(candidate: Candidate) -> bool:
        if candidate.addr == A:
            raise OSError("network unreachable")
        return True

    racer = Racer(attempt)
    racer.emit(cand(A, "lan"))
    racer.emit(cand(B, "tor"))
    result = await racer.run()
    assert result == RaceResult("tor", B, pytest.approx(0.0))  # no stagger after a failure


def test_candidates_still_queued_when_the_race_is_won_are_kept_in_unraced() -> None:
    core = RaceCore(0.0)
    first = Candidate(("192.0.2.1", 1), "lan", 0.0)
    second = Candidate(("192.0.2.2", 1), "direct", 0.0)
    third = Candidate(("192.0.2.3", 1), "lan", 0.0)
    for candidate in (first, second, third):
        core.add(candidate, 0.0)
    assert core.due(0.0) == [first.addr]
    core.won(first.addr, 0.1)
    assert core.unraced == [third, second]  # best path first
    assert core.due(1.0) == []
