"""The daemon's event ring: ids in order, each event once, bounded, overflow announced."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.daemon.ring import EventRing, Overflow


def test_ids_start_at_one_and_increase() -> None:
    ring = EventRing()
    assert [ring.append("message", {"text": str(i)}).id for i in range(3)] == [1, 2, 3]


def test_event_data_is_ascii_json_with_the_event_name() -> None:
    event = EventRing().append("message", {"text": "h\u00e9\u2028llo\n"})
    assert event.data.isascii() and "\n" not in event.data
    assert json.loads(event.data) == {"event": "message", "text": "h\u00e9\u2028llo\n"}


def test_count_bound_evicts_the_oldest() -> None:
    ring = EventRing(max_events=3)
    for i in range(5):
        ring.append("message", {"i": i})
    assert len(ring) == 3 and ring.first_id == 3


def test_byte_bound_keeps_at_least_the_newest() -> None:
    ring = EventRing(max_bytes=10)
    ring.append("message", {"text": "x" * 100})
    ring.append("message", {"text": "y" * 100})
    assert len(ring) == 1 and ring.after(1) is not None


def test_reader_behind_the_ring_gets_overflow() -> None:
    ring = EventRing(max_events=2)
    for i in range(4):
        ring.append("message", {"i": i})
    with pytest.raises(Overflow):
        ring.after(1)


def test_new_reader_without_since_starts_live() -> None:
    ring = EventRing()
    ring.append("message", {})
    assert ring.after(ring.cursor(None)) is None


def test_reader_with_old_since_gets_what_is_kept() -> None:
    ring = EventRing(max_events=2)
    for i in range(5):
        ring.append("message", {"i": i})
    assert ring.after(ring.cursor(0)).id == 4  # type: ignore[union-attr]


@given(
    ops=st.lists(st.one_of(st.just("read"), st.integers(min_value=1, max_value=5)), max_size=80),
    size=st.integers(min_value=1, max_value=8),
    since=st.one_of(st.none(), st.integers(min_value=-3, max_value=40)),
)
def test_reader_sees_every_event_once_in_order_or_overflows(
    ops: list[str | int], size: int, since: int | None
) -> None:
    ring = EventRing(max_events=size)
    cursor = ring.cursor(since)
    start = cursor
    seen: list[int] = []
    for op in ops:
        if op == "read":
            try:
                while (event := ring.after(cursor)) is not None:
                    seen.append(event.id)
                    cursor = event.id
            except Overflow:
                assert cursor + 1 < ring.first_id
                return
        else:
            for _ in range(int(op)):
                ring.append("message", {})
    assert seen == list(range(start + 1, start + 1 + len(seen)))
