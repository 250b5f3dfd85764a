"""Receiver-side ACK bookkeeping: ranges of received packet numbers and ACK timing."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from p2pd.reliable._acks import MAX_TRACKED_RANGES, AckTracker
from p2pd.reliable._frames import PACKET_HEADER, AckFrame, parse_packet_untrusted

DELAY = 0.025


def decoded(tracker: AckTracker, now: float = 0.0, max_data: int = 0) -> AckFrame:
    _, frames = parse_packet_untrusted(PACKET_HEADER.pack(0, 1) + tracker.encode(now, max_data))
    frame = frames[0]
    assert isinstance(frame, AckFrame)
    return frame


def test_in_order_packets_form_one_range() -> None:
    tracker = AckTracker(DELAY)
    for pn in range(5):
        tracker.on_packet(pn, True, 0.0)
    assert tracker.ranges() == [(0, 4)]


def test_a_hole_splits_ranges_and_filling_it_merges_them() -> None:
    tracker = AckTracker(DELAY)
    for pn in (0, 1, 3, 4):
        tracker.on_packet(pn, True, 0.0)
    assert tracker.ranges() == [(0, 1), (3, 4)]
    tracker.on_packet(2, True, 0.0)
    assert tracker.ranges() == [(0, 4)]


def test_duplicate_packet_numbers_change_nothing() -> None:
    tracker = AckTracker(DELAY)
    for pn in (0, 1, 5, 1, 5, 0):
        tracker.on_packet(pn, False, 0.0)
    assert tracker.ranges() == [(0, 1), (5, 5)]


def test_only_the_newest_ranges_are_kept() -> None:
    tracker = AckTracker(DELAY)
    for pn in range(0, 4 * MAX_TRACKED_RANGES, 2):
        tracker.on_packet(pn, False, 0.0)
    ranges = tracker.ranges()
    assert len(ranges) == MAX_TRACKED_RANGES
    assert ranges[-1] == (4 * MAX_TRACKED_RANGES - 2,) * 2


def test_ack_is_due_after_the_second_ack_eliciting_packet() -> None:
    tracker = AckTracker(DELAY)
    tracker.on_packet(0, True, 0.0)
    assert tracker.pending
    assert not tracker.due(0.0)
    tracker.on_packet(1, True, 0.0)
    assert tracker.due(0.0)


def test_a_lone_packet_is_acknowledged_after_the_ack_delay() -> None:
    tracker = AckTracker(DELAY)
    tracker.on_packet(0, True, 1.0)
    assert tracker.deadline == 1.0 + DELAY
    assert not tracker.due(1.0 + DELAY / 2)
    assert tracker.due(1.0 + DELAY)


def test_reordered_packet_is_acknowledged_at_once() -> None:
    tracker = AckTracker(DELAY)
    tracker.on_packet(0, True, 0.0)
    tracker.encode(0.0, 0)
    tracker.on_packet(2, True, 0.0)
    assert tracker.due(0.0)


def test_ack_only_packets_are_never_acknowledged_on_their_own() -> None:
    tracker = AckTracker(DELAY)
    for pn in range(10):
        tracker.on_packet(pn, False, 0.0)
    assert not tracker.pending
    assert tracker.deadline is None


def test_encoding_resets_the_ack_state_and_reports_the_delay() -> None:
    tracker = AckTracker(DELAY)
    tracker.on_packet(0, True, 1.0)
    frame = decoded(tracker, now=1.010, max_data=99)
    assert frame.ranges == [(0, 0)]
    assert abs(frame.ack_delay - 0.010) < 1e-6
    assert frame.max_data == 99
    assert not tracker.pending


@given(st.lists(st.integers(0, 300), max_size=200))
def test_ranges_are_exactly_the_received_numbers_when_few(pns: list[int]) -> None:
    tracker = AckTracker(DELAY)
    for pn in pns:
        tracker.on_packet(pn, True, 0.0)
    ranges = tracker.ranges()
    covered = {pn for low, high in ranges for pn in range(low, high + 1)}
    assert all(high + 1 < low for (_, high), (low, _) in itertools.pairwise(ranges))
    if len(ranges) < MAX_TRACKED_RANGES:
        assert covered == set(pns)
    else:
        assert covered <= set(pns)
        assert max(pns) in covered
