"""Epoch tags: which tags a responder accepts, and that checking costs the same every time."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

import p2pd.tags as tags
from p2pd.errors import LocalError
from p2pd.tags import (
    TAG_ACCEPT_EPOCHS,
    TAG_EPOCH_SECONDS,
    TagChecker,
    epoch_of,
    make_tag,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
# Plausible wall-clock times: 2001 to 2096.
times = st.floats(min_value=1e9, max_value=4e9, allow_nan=False)


def test_epoch_of_floors_to_five_minute_epochs() -> None:
    assert epoch_of(0.0) == 0
    assert epoch_of(TAG_EPOCH_SECONDS - 0.001) == 0
    assert epoch_of(TAG_EPOCH_SECONDS) == 1
    assert epoch_of(1_700_000_000.0) == 1_700_000_000 // 300


def test_epoch_of_rejects_negative_and_non_finite_times() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(LocalError):
            epoch_of(bad)


def test_make_tag_is_keyed_blake2b_of_context_and_epoch() -> None:
    epoch = 5_666_666
    expected = hashlib.blake2b(
        b"p2pd v1 tag" + epoch.to_bytes(8, "little"), key=KEY, digest_size=16
    ).digest()
    assert make_tag(KEY, epoch) == expected


def test_make_tag_rejects_bad_key_and_epoch() -> None:
    with pytest.raises(LocalError):
        make_tag(b"short", 1)
    with pytest.raises(LocalError):
        make_tag(KEY, -1)
    with pytest.raises(LocalError):
        make_tag(KEY, 2**64)


def test_checker_rejects_bad_key_length() -> None:
    with pytest.raises(LocalError):
        TagChecker(bytes(31))


@given(times, st.sampled_from(range(-TAG_ACCEPT_EPOCHS, TAG_ACCEPT_EPOCHS + 1)))
def test_neighbouring_epochs_are_accepted(now: float, delta: int) -> None:
    tag = make_tag(KEY, epoch_of(now) + delta)
    assert TagChecker(KEY).accepts(tag, now)


@given(times, st.sampled_from([-3, -2, 2, 3]))
def test_epochs_two_or_more_away_are_rejected(now: float, delta: int) -> None:
    tag = make_tag(KEY, epoch_of(now) + delta)
    assert not TagChecker(KEY).accepts(tag, now)


@given(times, st.floats(min_value=-TAG_EPOCH_SECONDS, max_value=TAG_EPOCH_SECONDS))
def test_clock_skew_up_to_one_epoch_is_tolerated(sender_time: float, skew: float) -> None:
    tag = TagChecker(KEY).current(sender_time)
    assert TagChecker(KEY).accepts(tag, sender_time + skew)


@given(times)
def test_tag_of_another_key_is_rejected(now: float) -> None:
    assert not TagChecker(KEY).accepts(TagChecker(OTHER_KEY).current(now), now)


def test_tag_of_wrong_length_is_rejected() -> None:
    now = 1_700_000_000.0
    good = TagChecker(KEY).current(now)
    checker = TagChecker(KEY)
    assert not checker.accepts(good[:15], now)
    assert not checker.accepts(good + b"\x00", now)
    assert not checker.accepts(b"", now)


def test_current_is_the_tag_of_the_current_epoch() -> None:
    now = 1_700_000_123.0
    assert TagChecker(KEY).current(now) == make_tag(KEY, epoch_of(now))


def test_time_zero_still_works_with_clamped_window() -> None:
    checker = TagChecker(KEY)
    assert checker.accepts(make_tag(KEY, 0), 0.0)
    assert checker.accepts(make_tag(KEY, 1), 0.0)
    assert not checker.accepts(make_tag(KEY, 2), 0.0)


@pytest.mark.parametrize("delta", [-1, 0, 1, 2])
def test_every_check_compares_against_all_three_tags(
    monkeypatch: pytest.MonkeyPatch, delta: int
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tags, "compare_digest", counting)
    now = 1_700_000_000.0
    checker = TagChecker(KEY)
    checker.current(now)  # warm the cache
    accepted = checker.accepts(make_tag(KEY, epoch_of(now) + delta), now)
    assert accepted == (abs(delta) <= 1)
    assert len(calls) == 2 * TAG_ACCEPT_EPOCHS + 1
    assert len({a for a, _ in calls}) == 3


def test_steady_state_check_does_no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_700_000_000.0
    checker = TagChecker(KEY)
    tag = checker.current(now)
    hashed: list[int] = []
    real = tags.make_tag

    def counting(key: bytes, epoch: int) -> bytes:
        hashed.append(epoch)
        return real(key, epoch)

    monkeypatch.setattr(tags, "make_tag", counting)
    for i in range(100):
        assert checker.accepts(tag, now + i)
    assert hashed == []
    checker.accepts(tag, now + TAG_EPOCH_SECONDS)  # next epoch: the window is rebuilt once
    assert len(hashed) == 3
