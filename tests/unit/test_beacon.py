"""LAN beacons: the sans-IO core (format, verification, schedule) and the trio sender."""

from __future__ import annotations

import errno
import hashlib
import itertools
from collections.abc import Callable, Sequence

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import LocalError
from p2pd.tags import TAG_EPOCH_SECONDS
from transports.beacon import (
    BEACON_FAST_INTERVAL,
    BEACON_FAST_PERIOD,
    BEACON_INTERVAL,
    BEACON_JITTER,
    BEACON_SIZE,
    BEACON_TYPE,
    OWN_NONCES_REMEMBERED,
    BeaconCore,
    beacon_interval,
)
from transports.lan import broadcast_targets, run_beacons

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_700_000_000.0  # a wall-clock time in the middle of an epoch


def counting_rng() -> Callable[[int], bytes]:
    """Deterministic, never-repeating bytes."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "little")


def test_beacon_has_the_documented_layout() -> None:
    nonce = bytes(range(100, 116))
    beacon = BeaconCore(KEY, rng=lambda n: nonce[:n]).make(NOW)
    epoch = int(NOW // TAG_EPOCH_SECONDS)
    mac = hashlib.blake2b(
        b"p2pd v1 beacon" + nonce + epoch.to_bytes(8, "little"), key=KEY, digest_size=16
    ).digest()
    assert beacon == b"\x06\x00\x00\x00" + nonce + mac
    assert len(beacon) == BEACON_SIZE == 36
    assert beacon[:1] == BEACON_TYPE


def test_beacon_of_another_node_with_the_same_key_is_accepted() -> None:
    sender, receiver = BeaconCore(KEY), BeaconCore(KEY)
    assert receiver.verify_untrusted(sender.make(NOW), NOW)
    assert receiver.counters["accept"] == 1


def test_own_beacon_is_rejected() -> None:
    node = BeaconCore(KEY)
    assert not node.verify_untrusted(node.make(NOW), NOW)
    assert node.counters["drop_own"] == 1


def test_own_beacons_are_remembered_for_the_documented_number_of_rounds() -> None:
    node = BeaconCore(KEY, rng=counting_rng())
    beacons = [node.make(NOW) for _ in range(OWN_NONCES_REMEMBERED + 1)]
    assert not any(node.verify_untrusted(b, NOW) for b in beacons[1:])
    assert node.verify_untrusted(beacons[0], NOW)  # forgotten: long gone from any LAN


def test_wrong_key_is_rejected() -> None:
    receiver = BeaconCore(OTHER_KEY)
    assert not receiver.verify_untrusted(BeaconCore(KEY).make(NOW), NOW)
    assert receiver.counters["drop_mac"] == 1


@pytest.mark.parametrize("bit", range(BEACON_SIZE * 8))
def test_any_flipped_bit_is_rejected(bit: int) -> None:
    beacon = bytearray(BeaconCore(KEY).make(NOW))
    beacon[bit // 8] ^= 1 << (bit % 8)
    assert not BeaconCore(KEY).verify_untrusted(bytes(beacon), NOW)


@pytest.mark.parametrize("epochs", [-1, 0, 1])
def test_neighbouring_epochs_are_accepted(epochs: int) -> None:
    beacon = BeaconCore(KEY).make(NOW + epochs * TAG_EPOCH_SECONDS)
    assert BeaconCore(KEY).verify_untrusted(beacon, NOW)


@pytest.mark.parametrize("epochs", [-2, 2, 100])
def test_distant_epochs_are_rejected(epochs: int) -> None:
    beacon = BeaconCore(KEY).make(NOW + epochs * TAG_EPOCH_SECONDS)
    receiver = BeaconCore(KEY)
    assert not receiver.verify_untrusted(beacon, NOW)
    assert receiver.counters["drop_mac"] == 1


def test_epoch_zero_is_accepted_at_the_start_of_time() -> None:
    assert BeaconCore(KEY).verify_untrusted(BeaconCore(KEY).make(0.0), 1.0)


@pytest.mark.parametrize("size", [0, 1, 35, 37, 1200])
def test_wrong_size_is_dropped_as_size(size: int) -> None:
    receiver = BeaconCore(KEY)
    assert not receiver.verify_untrusted(BEACON_TYPE + bytes(max(0, size - 1)), NOW)
    assert receiver.counters["drop_size"] == 1


def test_nonzero_reserved_bytes_are_dropped_as_size() -> None:
    beacon = bytearray(BeaconCore(KEY).make(NOW))
    beacon[2] = 1
    receiver = BeaconCore(KEY)
    assert not receiver.verify_untrusted(bytes(beacon), NOW)
    assert receiver.counters["drop_size"] == 1


@given(st.binary(max_size=80))
def test_random_bytes_never_raise_and_never_verify(data: bytes) -> None:
    assert not BeaconCore(KEY).verify_untrusted(data, NOW)


@given(st.binary(min_size=32, max_size=32))
def test_random_bodies_with_a_valid_header_never_verify(body: bytes) -> None:
    assert not BeaconCore(KEY).verify_untrusted(b"\x06\x00\x00\x00" + body, NOW)


def test_two_beacons_of_one_node_share_no_bytes_after_the_header() -> None:
    node = BeaconCore(KEY)
    first, second = node.make(NOW), node.make(NOW)
    assert first[:4] == second[:4]
    assert first[4:20] != second[4:20] and first[20:] != second[20:]


def test_wrong_key_size_is_local_misuse() -> None:
    with pytest.raises(LocalError):
        BeaconCore(KEY[:16])


def test_interval_is_fast_first_then_slow() -> None:
    assert beacon_interval(0.0, 0.0) == BEACON_FAST_INTERVAL
    assert beacon_interval(BEACON_FAST_PERIOD - 0.01, 0.0) == BEACON_FAST_INTERVAL
    assert beacon_interval(BEACON_FAST_PERIOD, 0.0) == BEACON_INTERVAL


@given(st.floats(min_value=0, max_value=1e6), st.binary(min_size=2, max_size=2))
def test_jittered_delay_stays_within_the_jitter_band(elapsed: float, jitter: bytes) -> None:
    delay = BeaconCore(KEY, rng=lambda n: jitter[:n]).next_delay(elapsed)
    base = BEACON_FAST_INTERVAL if elapsed < BEACON_FAST_PERIOD else BEACON_INTERVAL
    assert base * (1 - BEACON_JITTER) < delay <= base


# --- targets and the trio sender -------------------------------------------------------


def test_loopback_only_targets_just_127_0_0_1() -> None:
    assert broadcast_targets(50000, ["lo"]) == [("127.0.0.1", 50000)]


def test_unknown_interface_selects_only_loopback() -> None:
    assert broadcast_targets(50000, ["no-such-if0"]) == [("127.0.0.1", 50000)]


def test_all_interfaces_never_target_the_limited_broadcast_address() -> None:
    targets = broadcast_targets(50000, None)
    assert ("127.0.0.1", 50000) in targets
    assert all(host != "255.255.255.255" and port == 50000 for host, port in targets)


class Recorder:
    """A fake socket send that records (time, target) and can fail."""

    def __init__(self, fail_with: int | None = None, return_false: bool = False) -> None:
        self.sent: list[tuple[float, tuple[str, int], bytes]] = []
        self.fail_with = fail_with
        self.return_false = return_false

    async def __call__(self, data: bytes, addr: tuple[str, int]) -> bool:
        self.sent.append((trio.current_time(), addr, data))
        if self.fail_with is not None:
            raise OSError(self.fail_with, "simulated")
        return not self.return_false


def fixed_targets(*targets: tuple[str, int]) -> Callable[[int, Sequence[str] | None], list]:
    return lambda port, interfaces: list(targets)


async def beacon_for(seconds: float, send: Recorder, core: BeaconCore, **kwargs: object) -> None:
    with trio.move_on_after(seconds):
        await run_beacons(send, core, 50000, ["lo"], wall_clock=lambda: NOW, **kwargs)  # type: ignore[arg-type]


async def test_beacons_go_to_every_target_each_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, core = Recorder(), BeaconCore(KEY, rng=bytes)
    targets = [("10.7.0.255", 50000), ("127.0.0.1", 50000)]
    await beacon_for(0.5, send, core, targets_of=fixed_targets(*targets))
    assert [addr for _, addr, _ in send.sent] == targets
    assert core.counters["sent"] == 2


async def test_beacon_schedule_is_fast_then_slow(autojump_clock: trio.testing.MockClock) -> None:
    send, core = Recorder(), BeaconCore(KEY, rng=bytes)  # zero jitter
    start = trio.current_time()
    await beacon_for(21.0, send, core)
    times = [t - start for t, _, _ in send.sent]
    assert times == pytest.approx([0, 1, 2, 3, 4, 5, 10, 15, 20])


async def test_changed_targets_restart_the_fast_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rounds = itertools.count()

    def targets_of(port: int, interfaces: Sequence[str] | None) -> list[tuple[str, int]]:
        # A new network appears in round 7 (time 15 s).
        extra = [("10.7.0.255", port)] if next(rounds) >= 7 else []
        return [*extra, ("127.0.0.1", port)]

    send, core = Recorder(), BeaconCore(KEY, rng=bytes)
    start = trio.current_time()
    await beacon_for(18.5, send, core, targets_of=targets_of)
    times = sorted({round(t - start, 6) for t, _, _ in send.sent})
    assert times == pytest.approx([0, 1, 2, 3, 4, 5, 10, 15, 16, 17, 18])


async def test_send_errors_are_counted_not_raised(autojump_clock: trio.testing.MockClock) -> None:
    send, core = Recorder(fail_with=errno.ENETUNREACH), BeaconCore(KEY)
    await beacon_for(2.5, send, core)
    assert core.counters["send_error"] == len(send.sent) == 3
    assert core.counters["sent"] == 0


async def test_a_false_send_result_counts_as_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, core = Recorder(return_false=True), BeaconCore(KEY)
    await beacon_for(0.5, send, core)
    assert core.counters["send_error"] == 1


async def test_sent_beacons_verify_at_a_neighbour_but_not_at_home(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, core, neighbour = Recorder(), BeaconCore(KEY), BeaconCore(KEY)
    await beacon_for(1.5, send, core)
    beacons = [data for _, _, data in send.sent]
    assert all(neighbour.verify_untrusted(b, NOW) for b in beacons)
    assert not any(core.verify_untrusted(b, NOW) for b in beacons)
