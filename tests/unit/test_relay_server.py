"""The relay server core: cookies, registrations, expiry, forwarding rules and limits."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.errors import LocalError
from transports import relay_wire as wire
from transports.relay_server import (
    DEFAULT_BYTES_PER_WINDOW,
    DEFAULT_LIFETIME,
    LINGER_SCAN_INTERVAL,
    Endpoint,
    RelayConfig,
    RelayServer,
)

TAG = bytes(16)
OTHER_TAG = bytes([1]) * 16
NONCE = bytes(range(8))
A = Endpoint("192.0.2.1", 1000)
B = Endpoint("198.51.100.2", 2000)
C = Endpoint("203.0.113.3", 3000)
T0 = 100.0
#: Outcomes of one input; exactly one is counted per frame received.
VERDICTS = ("challenged", "registered", "refreshed", "relayed")


def counting_rng() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make(config: RelayConfig | None = None) -> RelayServer:
    return RelayServer(config or RelayConfig(), T0, rng=counting_rng())


def outputs(server: RelayServer, now: float = T0) -> list[tuple[wire.Frame, Endpoint]]:
    return [(wire.parse_untrusted(data), dest) for data, dest in server.datagrams_to_send(now)]


def register(
    server: RelayServer, source: Endpoint, tag: bytes = TAG, now: float = T0
) -> list[tuple[wire.Frame, Endpoint]]:
    """The challenge round trip then the real REGISTER; returns what the second produced."""
    server.receive_untrusted(wire.encode(wire.Register(tag, NONCE)), source, now)
    ((challenge, dest),) = outputs(server, now)
    assert isinstance(challenge, wire.Registered) and not challenge.verified and dest == source
    server.receive_untrusted(wire.encode(wire.Register(tag, NONCE, challenge.cookie)), source, now)
    return outputs(server, now)


def meet(server: RelayServer, tag: bytes = TAG) -> tuple[int, int]:
    """Registers A then B under ``tag``; returns (slot of A, slot of B)."""
    register(server, A, tag)
    out = register(server, B, tag)
    (answer, _), (push, to) = out
    assert isinstance(answer, wire.Registered) and isinstance(push, wire.Peer) and to == A
    ((slot_a, addr_a),) = answer.peers
    assert addr_a == A.addr and push.addr == B.addr
    return slot_a, push.slot


def send(
    server: RelayServer, source: Endpoint, slot: int, size: int = 100, now: float = T0
) -> None:
    server.receive_untrusted(wire.encode(wire.Send(slot, bytes(size))), source, now)


def test_register_without_cookie_is_challenged_and_creates_no_state() -> None:
    server = make()
    request = wire.encode(wire.Register(TAG, NONCE))
    server.receive_untrusted(request, A, T0)
    ((data, dest),) = server.datagrams_to_send(T0)
    answer = wire.parse_untrusted(data)
    assert isinstance(answer, wire.Registered)
    assert not answer.verified and answer.peers == () and answer.nonce == NONCE
    assert answer.reflexive == A.addr and dest == A
    assert len(data) <= len(request)
    assert server.registrations == 0 and server.clients == 0
    assert server.counters["challenged"] == 1


def test_register_with_the_cookie_registers_and_reports_the_reflexive_address() -> None:
    server = make()
    ((answer, dest),) = register(server, A)
    assert isinstance(answer, wire.Registered)
    assert answer.verified and answer.reflexive == A.addr and answer.peers == ()
    assert answer.lifetime == DEFAULT_LIFETIME and dest == A
    assert server.registrations == 1


@pytest.mark.parametrize(
    ("other", "tag"),
    [
        (B, TAG),
        (Endpoint(A.host, A.port + 1), TAG),
        (Endpoint(A.host, A.port, True), TAG),
        (A, OTHER_TAG),
    ],
)
def test_a_cookie_is_bound_to_its_endpoint_and_tag(other: Endpoint, tag: bytes) -> None:
    server = make()
    server.receive_untrusted(wire.encode(wire.Register(TAG, NONCE)), A, T0)
    ((challenge, _),) = outputs(server)
    assert isinstance(challenge, wire.Registered)
    server.receive_untrusted(wire.encode(wire.Register(tag, NONCE, challenge.cookie)), other, T0)
    ((answer, _),) = outputs(server)
    assert isinstance(answer, wire.Registered) and not answer.verified
    assert server.registrations == 0


def test_cookies_outlive_one_rotation_but_not_two() -> None:
    server = make(RelayConfig(cookie_rotation=10.0))
    server.receive_untrusted(wire.encode(wire.Register(TAG, NONCE)), A, T0)
    ((challenge, _),) = outputs(server)
    assert isinstance(challenge, wire.Registered)
    request = wire.encode(wire.Register(TAG, NONCE, challenge.cookie))
    server.handle_timer(T0 + 10.0)
    server.receive_untrusted(request, A, T0 + 10.0)
    ((answer, _),) = outputs(server)
    assert isinstance(answer, wire.Registered) and answer.verified
    server.handle_timer(T0 + 20.0)
    server.receive_untrusted(request, A, T0 + 20.0)
    ((answer, _),) = outputs(server)
    assert isinstance(answer, wire.Registered) and not answer.verified


def test_a_newcomer_learns_the_registrants_and_they_learn_of_it() -> None:
    server = make()
    slot_a, slot_b = meet(server)
    assert slot_a != slot_b
    assert server.registrations == 2


def test_a_slot_is_stable_while_refreshed() -> None:
    server = make()
    slot_a, _ = meet(server)
    later = T0 + DEFAULT_LIFETIME / 3
    server.receive_untrusted(wire.encode(wire.Register(TAG, NONCE)), B, later)
    ((challenge, _),) = outputs(server, later)
    assert isinstance(challenge, wire.Registered)
    server.receive_untrusted(wire.encode(wire.Register(TAG, NONCE, challenge.cookie)), B, later)
    ((answer, _),) = outputs(server, later)  # a refresh: no PEER push
    assert isinstance(answer, wire.Registered) and answer.peers == ((slot_a, A.addr),)
    assert server.counters["refreshed"] == 1


def test_a_registration_expires_a_lifetime_after_its_last_refresh() -> None:
    server = make()
    _, slot_b = meet(server)
    register(server, A, now=T0 + 30)  # refresh A only
    assert server.get_timer() == T0 + DEFAULT_LIFETIME  # B's expiry comes first
    server.handle_timer(T0 + DEFAULT_LIFETIME - 0.001)
    assert server.registrations == 2
    server.handle_timer(T0 + DEFAULT_LIFETIME)
    assert server.registrations == 1 and server.counters["expired"] == 1
    send(server, A, slot_b, now=T0 + DEFAULT_LIFETIME)
    assert server.counters["drop_unknown_slot"] == 1
    server.handle_timer(T0 + 30 + DEFAULT_LIFETIME)
    assert server.registrations == 0


def test_a_send_is_delivered_naming_the_senders_slot() -> None:
    server = make()
    slot_a, slot_b = meet(server)
    body = bytes(range(40))
    server.receive_untrusted(wire.encode(wire.Send(slot_b, body)), A, T0)
    assert outputs(server) == [(wire.Deliver(slot_a, body), B)]
    assert server.counters["relayed"] == 1 and server.counters["relayed_bytes"] == 40


def test_nothing_crosses_tags() -> None:
    server = make()
    slot_a, _ = meet(server)
    register(server, C, OTHER_TAG)
    send(server, C, slot_a)
    assert outputs(server) == []
    assert server.counters["drop_cross_tag"] == 1


def test_the_sender_and_destination_must_be_registered_and_distinct() -> None:
    server = make()
    slot_a, slot_b = meet(server)
    send(server, C, slot_a)
    send(server, A, slot_a)
    send(server, A, slot_b ^ 1 if slot_b ^ 1 != slot_a else slot_b ^ 2)
    assert outputs(server) == []
    assert server.counters["drop_unregistered_sender"] == 1
    assert server.counters["drop_to_self"] == 1
    assert server.counters["drop_unknown_slot"] == 1


def test_frames_for_clients_are_dropped_by_the_relay() -> None:
    server = make()
    server.receive_untrusted(wire.encode(wire.Deliver(1, bytes(32))), A, T0)
    server.receive_untrusted(wire.encode(wire.Peer(TAG, 1, A.addr)), A, T0)
    assert server.counters["drop_wrong_direction"] == 2 and outputs(server) == []


def test_registrations_per_ip_are_limited() -> None:
    server = make(RelayConfig(max_per_ip=2))
    for port in (1, 2, 3):
        register(server, Endpoint("192.0.2.9", port))
    assert server.registrations == 2 and server.counters["drop_ip_full"] == 1
    register(server, Endpoint("192.0.2.10", 1))  # another address is fine
    assert server.registrations == 3


def test_ipv6_sources_share_the_limit_of_their_64() -> None:
    server = make(RelayConfig(max_per_ip=1))
    register(server, Endpoint("2001:db8::1", 1))
    register(server, Endpoint("2001:db8::2", 1))
    register(server, Endpoint("2001:db8:0:1::1", 1))
    assert server.registrations == 2 and server.counters["drop_ip_full"] == 1


def test_total_and_per_tag_registrations_are_limited() -> None:
    server = make(RelayConfig(max_registrations=3, max_per_tag=2))
    register(server, A)
    register(server, B)
    register(server, C)
    assert server.counters["drop_tag_full"] == 1
    register(server, C, OTHER_TAG)
    register(server, Endpoint("192.0.2.77", 1), OTHER_TAG)
    assert server.registrations == 3 and server.counters["drop_registrations_full"] == 1


def test_tags_per_client_are_limited() -> None:
    server = make(RelayConfig(max_tags_per_client=2))
    for i in range(3):
        register(server, A, bytes([i]) * 16)
    assert server.registrations == 2 and server.counters["drop_client_tags_full"] == 1


def test_one_client_may_register_two_tags_with_one_budget() -> None:
    server = make()
    register(server, A, TAG)
    register(server, A, OTHER_TAG)
    assert server.registrations == 2 and server.clients == 1


def test_the_packet_rate_per_registrant_is_limited() -> None:
    server = make(RelayConfig(packets_per_second=10.0, packet_burst=5.0))
    _, slot_b = meet(server)
    for _ in range(8):
        send(server, A, slot_b)
    assert server.counters["relayed"] == 5 and server.counters["drop_rate"] == 3
    send(server, A, slot_b, now=T0 + 0.1)  # one token back
    assert server.counters["relayed"] == 6


def test_a_20_mib_transfer_fits_the_default_limits_easily() -> None:
    server = make()
    _, slot_b = meet(server)
    size, rate = 1232, 3000.0  # a full p2pd DATA packet; about 3.7 MB/s
    count = 20 * 2**20 // (size - 32) + 1
    for i in range(count):
        send(server, A, slot_b, size, now=T0 + i / rate)
        server.datagrams_to_send(T0)
    assert server.counters["relayed"] == count
    assert server.counters["relayed_bytes"] * 10 < DEFAULT_BYTES_PER_WINDOW


def test_the_byte_cap_per_window_holds_and_resets_with_the_window() -> None:
    config = RelayConfig(bytes_per_window=5000, byte_window=100.0, lifetime=1000)
    server = make(config)
    _, slot_b = meet(server)
    for _ in range(10):
        send(server, A, slot_b, 1000)
    assert server.counters["relayed_bytes"] == 5000 and server.counters["drop_byte_cap"] == 5
    send(server, A, slot_b, 1000, now=T0 + 100.0)
    assert server.counters["relayed_bytes"] == 6000


def test_registering_again_does_not_reset_the_byte_cap() -> None:
    config = RelayConfig(bytes_per_window=2000, byte_window=3600.0)
    server = make(config)
    _, slot_b = meet(server)
    send(server, A, slot_b, 1000)
    send(server, A, slot_b, 1000)
    assert len(outputs(server)) == 2
    later = T0 + 2 * DEFAULT_LIFETIME
    server.handle_timer(later)
    assert server.registrations == 0 and server.clients == 1  # A lingers: it used bytes
    register(server, A, now=later)
    _, (push, _) = register(server, B, now=later)
    assert isinstance(push, wire.Peer)
    send(server, A, push.slot, 1000, now=later)
    assert server.counters["drop_byte_cap"] == 1


def test_a_lingering_client_is_forgotten_when_its_window_ends() -> None:
    config = RelayConfig(byte_window=100.0)
    server = make(config)
    _, slot_b = meet(server)
    send(server, A, slot_b)
    server.handle_timer(T0 + DEFAULT_LIFETIME)
    assert server.clients == 1
    server.handle_timer(T0 + LINGER_SCAN_INTERVAL + 100.0)
    assert server.clients == 0


def test_forget_drops_every_registration_of_a_closed_connection() -> None:
    server = make()
    stream = Endpoint("192.0.2.1", 1000, stream=True)
    register(server, stream, TAG)
    register(server, stream, OTHER_TAG)
    register(server, A, TAG)  # the same address over UDP is another endpoint
    server.forget(stream, T0)
    assert server.registrations == 1 and server.clients == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lifetime": 2},
        {"lifetime": 2**16},
        {"max_per_ip": 0},
        {"max_tags_per_client": 0},
        {"max_per_tag": wire.MAX_LISTED + 2},
        {"bytes_per_window": 100},
        {"packets_per_second": 0.0},
        {"byte_window": 0.0},
    ],
)
def test_impossible_configs_are_local_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalError):
        RelayConfig(**kwargs)  # type: ignore[arg-type]


def verdicts(server: RelayServer) -> int:
    counters = server.counters
    return sum(counters[v] for v in VERDICTS) + sum(
        n for k, n in counters.items() if k.startswith("drop_")
    )


@given(st.data())
def test_mutated_frames_of_every_type_are_only_counted(data: st.DataObject) -> None:
    server = make()
    slot_a, slot_b = meet(server)
    server.receive_untrusted(wire.encode(wire.Register(TAG, NONCE)), A, T0)
    ((challenge, _),) = outputs(server)
    assert isinstance(challenge, wire.Registered)
    originals: list[wire.Frame] = [
        wire.Register(TAG, NONCE, challenge.cookie),
        wire.Registered(TAG, NONCE, challenge.cookie, True, 60, A.addr, ((slot_b, B.addr),)),
        wire.Peer(TAG, slot_b, B.addr),
        wire.Send(slot_b, bytes(64)),
        wire.Deliver(slot_a, bytes(64)),
    ]
    for frame in originals:
        raw = bytearray(wire.encode(frame))
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(0, len(raw) - 1))
            raw[index] = data.draw(st.integers(0, 255))
        raw = raw[: data.draw(st.integers(0, len(raw)))]
        before = verdicts(server)
        server.receive_untrusted(bytes(raw), A, T0)
        server.datagrams_to_send(T0)
        assert verdicts(server) == before + 1


ENDPOINTS = [
    Endpoint("192.0.2.1", 1),
    Endpoint("192.0.2.1", 2),
    Endpoint("192.0.2.1", 2, stream=True),
    Endpoint("2001:db8::1", 3),
    Endpoint("198.51.100.5", 4),
]
TAGS = [bytes([i]) * 16 for i in range(3)]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.integers(0, 4), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("register"), st.integers(0, 4), st.integers(0, 2), st.just(True)),
        st.tuples(st.just("send"), st.integers(0, 4), st.integers(0, 7), st.integers(32, 1444)),
        st.tuples(st.just("advance"), st.floats(0, 40)),
        st.tuples(st.just("junk"), st.integers(0, 4), st.binary(max_size=80)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_any_sequence_keeps_tags_apart_and_limits_in_force(ops: list[tuple[object, ...]]) -> None:
    config = RelayConfig(
        max_registrations=4, max_per_ip=2, max_per_tag=3, bytes_per_window=4000, lifetime=30
    )
    server = make(config)
    now = T0
    alive: dict[tuple[bytes, Endpoint], float] = {}  # (tag, endpoint) -> expiry, from answers
    slots: dict[int, bytes] = {}  # slot -> tag, as clients learn them
    cookies: dict[tuple[bytes, Endpoint], bytes] = {}
    sent_bytes: collections.Counter[Endpoint] = collections.Counter()

    def is_alive(tag: bytes, endpoint: Endpoint) -> bool:
        return alive.get((tag, endpoint), 0.0) > now

    for op in ops:
        source = ENDPOINTS[0]
        sender_tags: set[bytes] = set()
        if op[0] == "register":
            source, tag = ENDPOINTS[int(op[1])], TAGS[int(op[2])]  # type: ignore[call-overload]
            if op[3] and (tag, source) not in cookies:  # a client's challenge round trip
                server.receive_untrusted(wire.encode(wire.Register(tag, NONCE)), source, now)
                ((challenge, _),) = outputs(server, now)
                assert isinstance(challenge, wire.Registered)
                cookies[tag, source] = challenge.cookie
            cookie = cookies[tag, source] if op[3] else wire.NO_COOKIE
            server.receive_untrusted(wire.encode(wire.Register(tag, NONCE, cookie)), source, now)
        elif op[0] == "send":
            source = ENDPOINTS[int(op[1])]  # type: ignore[call-overload]
            known = sorted(slots) or [0]
            slot = known[int(op[2]) % len(known)]  # type: ignore[call-overload]
            sender_tags = {t for t in TAGS if is_alive(t, source)}
            size = int(op[3])  # type: ignore[call-overload]
            server.receive_untrusted(wire.encode(wire.Send(slot, bytes(size))), source, now)
        elif op[0] == "advance":
            now += float(op[1])  # type: ignore[arg-type]
            server.handle_timer(now)
        else:
            source = ENDPOINTS[int(op[1])]  # type: ignore[call-overload]
            server.receive_untrusted(bytes(op[2]), source, now)  # type: ignore[call-overload]
        for frame, dest in outputs(server, now):
            if isinstance(frame, wire.Registered):
                cookies[frame.tag, dest] = frame.cookie
                if frame.verified:
                    alive[frame.tag, dest] = now + config.lifetime
                    slots.update((slot, frame.tag) for slot, _ in frame.peers)
            elif isinstance(frame, wire.Peer):
                assert is_alive(frame.tag, dest)
                slots[frame.slot] = frame.tag
            elif isinstance(frame, wire.Deliver):
                assert op[0] == "send"
                shared = {t for t in sender_tags if is_alive(t, dest)}
                assert shared, "delivered across tags"
                if frame.slot in slots:
                    assert slots[frame.slot] in shared
                sent_bytes[source] += len(frame.payload)
        assert server.registrations <= config.max_registrations
        assert all(n <= config.bytes_per_window for n in sent_bytes.values())
        live = {e for (_t, e), expiry in alive.items() if expiry > now}
        by_ip = collections.Counter(e.host for e in live)
        assert all(n <= config.max_per_ip for n in by_ip.values())


def test_the_defaults_are_the_documented_ones() -> None:
    """transports/relay_wire.py's docstring (copied to docs/protocol.md) states these."""
    config = RelayConfig()
    assert (config.lifetime, config.cookie_rotation) == (60, 120.0)
    assert (config.max_registrations, config.max_per_ip) == (10_000, 32)
    assert (config.max_tags_per_client, config.max_per_tag) == (4, 32)
    assert (config.packets_per_second, config.packet_burst) == (4000.0, 1000.0)
    assert (config.bytes_per_window, config.byte_window) == (256 * 2**20, 3600.0)
    assert "rotated every 120 s" in (wire.__doc__ or "")
