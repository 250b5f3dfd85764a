"""RFC 6479 replay window, checked against a trivially correct set-and-max model."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.replay import COUNTER_LIMIT, RING_BLOCKS, WINDOW_SIZE, ReplayWindow

W = WINDOW_SIZE


class Model:
    """Everything ever accepted, and the highest: obviously right, O(n) memory."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.top: int | None = None

    def check(self, counter: int) -> bool:
        if not 0 <= counter < COUNTER_LIMIT or counter in self.seen:
            return False
        return self.top is None or counter >= self.top - W

    def update(self, counter: int) -> bool:
        if not self.check(counter):
            return False
        self.seen.add(counter)
        self.top = counter if self.top is None else max(self.top, counter)
        return True


# Steps are relative to the model's highest counter (late, near, ahead, huge jumps),
# or absolute (anywhere in or just outside the u64 range).
steps = st.one_of(
    st.tuples(st.just("rel"), st.integers(-W - 70, 70)),
    st.tuples(st.just("rel"), st.integers(-3 * W, 3 * W)),
    st.tuples(st.just("rel"), st.integers(0, 2**40)),
    st.tuples(st.just("abs"), st.integers(-2, COUNTER_LIMIT + 2)),
    st.tuples(st.just("abs"), st.integers(0, 200)),
    st.tuples(st.just("abs"), st.integers(COUNTER_LIMIT - 3 * W, COUNTER_LIMIT)),
)


def resolve(step: tuple[str, int], model: Model) -> int:
    kind, value = step
    if kind == "abs":
        return value
    return (model.top or 0) + value


def test_window_is_at_least_2048() -> None:
    assert W >= 2048
    assert W == 8192 - 64


@settings(max_examples=300)
@given(st.lists(steps, max_size=200))
def test_window_agrees_with_the_model(sequence: list[tuple[str, int]]) -> None:
    window, model = ReplayWindow(), Model()
    for step in sequence:
        counter = resolve(step, model)
        assert window.check(counter) == model.check(counter)
        assert window.update(counter) == model.update(counter)
        assert window.highest == model.top


@given(st.lists(st.integers(0, 3 * W), max_size=300))
def test_check_never_changes_the_window(sequence: list[int]) -> None:
    window = ReplayWindow()
    for counter in sequence:
        before = window.check(counter)
        assert window.check(counter) == before
        assert window.update(counter) == before


@given(st.lists(st.integers(0, W), unique=True, max_size=500))
def test_every_fresh_reordered_counter_within_the_window_is_accepted(order: list[int]) -> None:
    window = ReplayWindow()
    assert window.update(W)
    for counter in order:
        if counter != W:
            assert window.update(counter)


def test_counter_zero_is_accepted_once() -> None:
    window = ReplayWindow()
    assert window.check(0)
    assert window.update(0)
    assert not window.check(0)
    assert not window.update(0)


def test_a_duplicate_is_rejected() -> None:
    window = ReplayWindow()
    assert window.update(5)
    assert window.update(3)
    assert not window.update(3)
    assert not window.update(5)


def test_exactly_window_old_is_accepted_and_one_older_is_not() -> None:
    window = ReplayWindow()
    top = 10 * W + 17
    assert window.update(top)
    assert not window.check(top - W - 1)
    assert not window.update(top - W - 1)
    assert window.update(top - W)


def test_huge_jump_clears_everything_behind_it() -> None:
    window = ReplayWindow()
    for counter in range(W + 200):
        assert window.update(counter)
    jump = 2**63 + 5
    assert window.update(jump)
    for counter in range(jump - W, jump):
        assert window.check(counter)
    assert not window.check(W)


def test_jump_to_the_same_ring_slot_forgets_the_old_bits() -> None:
    window = ReplayWindow()
    assert window.update(100)
    assert window.update(100 + 64 * RING_BLOCKS)
    assert window.update(100 + 64 * RING_BLOCKS - W)


def test_counters_outside_u64_are_rejected() -> None:
    window = ReplayWindow()
    for counter in (-1, COUNTER_LIMIT, COUNTER_LIMIT + 1):
        assert not window.check(counter)
        assert not window.update(counter)
    assert window.highest is None
    assert window.update(COUNTER_LIMIT - 1)
    assert not window.update(COUNTER_LIMIT - 1)


def test_sliding_costs_blocks_not_bits() -> None:
    """A window-sized jump per packet stays cheap: the ring clears at most 128 blocks."""
    window = ReplayWindow()
    start = time.perf_counter()
    for i in range(20_000):
        assert window.update(i * 2 * W)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
