"""PunchCore without NATs: schedule, answers, nomination, drops and the spray's bounds."""

from __future__ import annotations

import collections
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.derive import params_from_master
from p2pd.errors import LocalError
from p2pd.subkeys import punch_key
from transports.base import Addr
from transports.punch import (
    FIRST_INTERVAL,
    MAX_CANDIDATES_PER_PEER,
    MAX_INTERVAL,
    MAX_PEERS,
    MAX_TRIES,
    PREDICT_AFTER_TRIES,
    SPRAY_BUDGET,
    SPRAY_DELAY,
    SPRAY_RATE,
    SPRAY_WINDOW,
    GaveUp,
    PunchCore,
    Validated,
)
from transports.punch_wire import KIND_ACK, KIND_PROBE, NO_ECHO, Frame, decode_untrusted, encode

KEY = punch_key(params_from_master(bytes(32)).tag_key)
WALL = 1_800_000_000.0
A: Addr = ("198.51.100.1", 4000)
B: Addr = ("198.51.100.2", 5000)


def core(seed: int = 1, key: bytes = KEY) -> PunchCore:
    return PunchCore(key, wall_offset=WALL, rng=random.Random(seed).randbytes)


def sent(c: PunchCore, now: float) -> list[tuple[Frame, Addr]]:
    return [(decode_untrusted(KEY, d, WALL + now), a) for d, a in c.datagrams_to_send(now)]


def events(c: PunchCore) -> list[Validated | GaveUp]:
    out = []
    while (event := c.next_event()) is not None:
        out.append(event)
    return out


def assert_validated(got: list[Validated | GaveUp], addr: Addr, rtt: float, source: str) -> None:
    [event] = got
    assert isinstance(event, Validated)
    assert (event.peer, event.addr, event.source) == ("peer", addr, source)
    assert event.rtt == pytest.approx(rtt)


def run_until_idle(c: PunchCore, limit: float = 120.0) -> list[float]:
    """Fire every timer until the core is idle; return the times probes went out."""
    times: list[float] = []
    while (t := c.get_timer()) is not None and t < limit:
        times += [t] * len(c.datagrams_to_send(t))
    return times


def test_a_new_candidate_is_probed_at_once_then_with_doubling_backoff() -> None:
    c = core()
    assert c.get_timer() is None
    assert c.add_remote(B, "lan", 10.0)  # a LAN candidate: no port prediction afterwards
    times = run_until_idle(c)
    assert len(times) == MAX_TRIES
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 10.0
    assert gaps[:3] == pytest.approx([FIRST_INTERVAL, 2 * FIRST_INTERVAL, 4 * FIRST_INTERVAL])
    assert max(gaps) == pytest.approx(MAX_INTERVAL)
    assert events(c) == [GaveUp("peer", MAX_TRIES, 0)]
    assert c.get_timer() is None


def test_a_duplicate_candidate_changes_nothing() -> None:
    c = core()
    assert c.add_remote(B, "relay", 0.0)
    assert not c.add_remote(B, "offer", 0.0)
    assert len(c.datagrams_to_send(0.0)) == 1


def test_a_valid_probe_is_acked_to_its_source_and_checked_back() -> None:
    a, b = core(1), core(2)
    b.add_remote(A, "relay", 0.0)
    [(probe_bytes, to)] = b.datagrams_to_send(0.0)
    assert to == A
    assert a.receive_untrusted(probe_bytes, B, 0.01)
    out = sent(a, 0.01)
    kinds = sorted((f.kind, addr) for f, addr in out)
    assert kinds == [(KIND_PROBE, B), (KIND_ACK, B)]  # the ACK and the triggered check
    ack = next(f for f, _ in out if f.kind == KIND_ACK)
    assert ack.echo == decode_untrusted(KEY, probe_bytes, WALL).txn
    assert a.counters["probes_received"] == 1


def test_an_ack_from_where_the_probe_went_nominates_that_address() -> None:
    a, b = core(1), core(2)
    a.add_remote(B, "relay", 0.0)
    [(probe, _)] = a.datagrams_to_send(0.0)
    b.receive_untrusted(probe, A, 0.02)
    acks = [d for d, _ in b.datagrams_to_send(0.02) if d[1] == KIND_ACK]
    assert a.receive_untrusted(acks[0], B, 0.04)
    assert_validated(events(a), B, 0.04, "relay")
    assert a.nominated("peer") == B
    assert a.get_timer() is None  # nominated: no more probes to this peer
    assert not a.add_remote(("198.51.100.3", 1), "offer", 1.0)


def test_a_probe_alone_never_validates() -> None:
    a, b = core(1), core(2)
    b.add_remote(A, "relay", 0.0)
    [(probe, _)] = b.datagrams_to_send(0.0)
    a.receive_untrusted(probe, B, 0.01)
    assert events(a) == []


def test_a_probe_from_an_unknown_address_is_a_peer_reflexive_candidate() -> None:
    a, b = core(1), core(2)
    a.add_remote(B, "relay", 0.0)
    a.datagrams_to_send(0.0)
    b.add_remote(A, "relay", 0.0)
    [(probe, _)] = b.datagrams_to_send(0.0)
    elsewhere: Addr = (B[0], 40000)  # the peer's NAT mapped its socket to another port
    a.receive_untrusted(probe, elsewhere, 0.01)
    out = a.datagrams_to_send(0.01)
    [check] = [d for d, addr in out if d[1] == KIND_PROBE]
    assert [addr for d, addr in out if d[1] == KIND_PROBE] == [elsewhere]
    b.receive_untrusted(check, A, 0.02)
    [ack] = [d for d, _ in b.datagrams_to_send(0.02) if d[1] == KIND_ACK]
    a.receive_untrusted(ack, elsewhere, 0.03)
    assert_validated(events(a), elsewhere, 0.02, "prflx")


def test_an_ack_from_another_address_validates_nothing_but_is_learned() -> None:
    a, b = core(1), core(2)
    a.add_remote(B, "relay", 0.0)
    [(probe, _)] = a.datagrams_to_send(0.0)
    b.receive_untrusted(probe, A, 0.02)
    [ack] = [d for d, _ in b.datagrams_to_send(0.02) if d[1] == KIND_ACK]
    other: Addr = (B[0], 6000)
    assert a.receive_untrusted(ack, other, 0.04)
    assert a.counters["drop_asymmetric"] == 1
    assert events(a) == []
    assert (KIND_PROBE, other) in {(f.kind, t) for f, t in sent(a, 0.04)}


def test_own_probes_are_ignored() -> None:
    a = core()
    a.add_remote(A, "lan", 0.0)  # our own address, e.g. hairpinned
    [(probe, _)] = a.datagrams_to_send(0.0)
    assert not a.receive_untrusted(probe, A, 0.001)
    assert a.counters["drop_own"] == 1
    assert [f.kind for f, _ in sent(a, 0.001)] == []


def test_probes_under_another_key_are_ignored() -> None:
    a, stranger = core(1), core(2, key=bytes(32))
    stranger.add_remote(A, "relay", 0.0)
    [(probe, _)] = stranger.datagrams_to_send(0.0)
    assert not a.receive_untrusted(probe, B, 0.01)
    assert a.counters["drop_mac"] == 1
    assert a.datagrams_to_send(0.01) == []


def test_a_replayed_probe_is_answered_once() -> None:
    a, b = core(1), core(2)
    b.add_remote(A, "relay", 0.0)
    [(probe, _)] = b.datagrams_to_send(0.0)
    assert a.receive_untrusted(probe, B, 0.01)
    assert not a.receive_untrusted(probe, ("203.0.113.9", 9), 0.02)
    assert a.counters["drop_replay"] == 1
    assert a.counters["acks_sent"] == 1


def test_an_ack_for_no_probe_of_ours_is_dropped() -> None:
    a = core()
    forged = encode(KEY, Frame(KIND_ACK, b"x" * 8, b"y" * 8, b"z" * 8), WALL)
    assert not a.receive_untrusted(forged, B, 0.0)
    assert a.counters["drop_unsolicited"] == 1
    assert events(a) == []


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=60), max_size=20))
def test_garbage_never_raises_and_sends_nothing(datagrams: list[bytes]) -> None:
    a = core()
    for i, data in enumerate(datagrams):
        assert not a.receive_untrusted(data, B, float(i))
    assert a.datagrams_to_send(100.0) == []
    assert sum(v for k, v in a.counters.items() if k.startswith("drop_")) == len(datagrams)


@settings(max_examples=200)
@given(st.binary(min_size=44, max_size=44), st.integers(0, 43))
def test_near_valid_frames_never_raise(noise: bytes, keep: int) -> None:
    valid = encode(KEY, Frame(KIND_PROBE, b"S" * 8, b"T" * 8, NO_ECHO), WALL)
    a = core()
    a.receive_untrusted(valid[:keep] + noise[keep:], B, 0.0)
    a.datagrams_to_send(0.0)


def test_dependent_peer_is_sprayed_near_then_random_within_rate_and_budget() -> None:
    c = core()
    c.add_remote(B, "stun", 0.0, peer_nat="dependent")
    sprayed: list[tuple[float, int]] = []
    while (t := c.get_timer()) is not None:
        for _data, (ip, port) in c.datagrams_to_send(t):
            if (ip, port) != B:
                sprayed.append((t, port))
    assert c.budget_used("peer") == len(sprayed) == SPRAY_BUDGET
    assert sprayed[0][0] == pytest.approx(SPRAY_DELAY)
    near = [port for _, port in sprayed[: 2 * SPRAY_WINDOW]]
    assert sorted(near) == sorted(
        p for d in range(1, SPRAY_WINDOW + 1) for p in (B[1] + d, B[1] - d)
    )
    assert len({port for _, port in sprayed}) == SPRAY_BUDGET
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(sprayed)]
    assert min(gaps) >= 1 / SPRAY_RATE - 1e-9
    assert isinstance(events(c)[-1], GaveUp)


def test_prediction_starts_after_unanswered_tries_without_a_hint() -> None:
    c = core()
    c.add_remote(B, "relay", 0.0)
    first_spray = None
    probes = 0
    while (t := c.get_timer()) is not None and first_spray is None:
        for _, addr in c.datagrams_to_send(t):
            if addr == B:
                probes += 1
            elif first_spray is None:
                first_spray = probes
    assert first_spray == PREDICT_AFTER_TRIES


def test_lan_candidates_are_never_sprayed() -> None:
    c = core()
    c.add_remote(B, "lan", 0.0, peer_nat="dependent")
    run_until_idle(c)
    assert c.budget_used("peer") == 0
    assert c.counters["spray_sent"] == 0


def test_stop_forgets_the_peer_and_reset_everything() -> None:
    c = core()
    c.add_remote(B, "relay", 0.0)
    c.stop("peer")
    assert c.get_timer() is None
    c.add_remote(B, "relay", 1.0)
    c.reset()
    assert c.get_timer() is None and c.datagrams_to_send(2.0) == []


def test_candidates_per_peer_are_capped() -> None:
    c = core()
    for port in range(1, MAX_CANDIDATES_PER_PEER + 3):
        c.add_remote(("203.0.113.5", port), "offer", 0.0)
    assert c.counters["drop_candidate_limit"] == 2


def test_local_misuse_raises() -> None:
    with pytest.raises(LocalError):
        PunchCore(b"short", wall_offset=WALL)
    with pytest.raises(LocalError):
        core().add_remote(("198.51.100.2", 0), "relay", 0.0)


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(["peer", "other"]),
            st.integers(1, 65535),
            st.sampled_from([None, "dependent", "independent"]),
        ),
        st.tuples(st.just("wait"), st.floats(0.0, 5.0)),
        st.tuples(st.just("stop"), st.sampled_from(["peer", "other"])),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(OPS)
def test_budget_rate_and_tries_are_never_exceeded(ops: list[tuple[object, ...]]) -> None:
    c = core()
    now = 0.0
    sends: list[tuple[float, Addr]] = []
    added: dict[str, set[Addr]] = {"peer": set(), "other": set()}

    def drain(until: float) -> None:
        while (t := c.get_timer()) is not None and t <= until:
            sends.extend((t, addr) for _, addr in c.datagrams_to_send(t))
            for name in added:
                assert c.budget_used(name) <= SPRAY_BUDGET

    for op in ops:
        if op[0] == "add":
            _, name, port, hint = op
            assert isinstance(name, str) and isinstance(port, int)
            addr = (B[0] if name == "peer" else "198.51.100.7", port)
            c.add_remote(addr, "relay", now, peer=name, peer_nat=hint)  # type: ignore[arg-type]
            added[name].add(addr)
        elif op[0] == "wait":
            assert isinstance(op[1], float)
            drain(now + op[1])
            now += op[1]
        else:
            assert isinstance(op[1], str)
            c.stop(op[1])
    drain(now + 60.0)
    ordinary = {a for names in added.values() for a in names}
    spray_times = [t for t, addr in sends if addr not in ordinary]
    assert all(b - a >= 1 / SPRAY_RATE - 1e-9 for a, b in itertools.pairwise(spray_times))
    per_addr = collections.Counter(addr for _, addr in sends if addr in ordinary)
    stops = sum(op[0] == "stop" for op in ops)
    # A spray may also hit a candidate's port once per attempt (its ports are distinct).
    assert all(n <= (MAX_TRIES + 1) * (stops + 1) for n in per_addr.values())
    assert c.counters["spray_sent"] <= SPRAY_BUDGET * 2 * (stops + 1)


def test_a_probe_from_a_stranger_address_starts_a_learned_peer() -> None:
    a, b = core(1), core(2)
    b.add_remote(A, "relay", 0.0, peer="alice")
    [(probe, _)] = b.datagrams_to_send(0.0)
    a.receive_untrusted(probe, B, 0.01)  # a knows no candidate of b at all
    [check] = [d for d, addr in a.datagrams_to_send(0.01) if d[1] == KIND_PROBE and addr == B]
    b.receive_untrusted(check, A, 0.02)
    [ack] = [d for d, _ in b.datagrams_to_send(0.02) if d[1] == KIND_ACK]
    a.receive_untrusted(ack, B, 0.03)
    [event] = events(a)
    assert isinstance(event, Validated)
    assert event.peer == "prflx-" + b.sender_id.hex()
    assert (event.addr, event.source) == (B, "prflx")


def test_learned_peers_yield_to_named_ones_when_the_table_is_full() -> None:
    a = core(1)
    for i in range(MAX_PEERS):
        stranger = core(100 + i)
        stranger.add_remote(A, "relay", 0.0)
        [(probe, _)] = stranger.datagrams_to_send(0.0)
        a.receive_untrusted(probe, (f"203.0.113.{i + 1}", 9), 0.0)
    assert a.add_remote(B, "offer", 0.0, peer="named")
    assert a.nominated("named") is None
    for i in range(MAX_PEERS - 1):
        a.add_remote(("198.51.100.9", i + 1), "offer", 0.0, peer=f"named{i}")
    with pytest.raises(LocalError):
        a.add_remote(B, "offer", 0.0, peer="one too many")
