"""The relay client core: registration with the cookie, refresh, epochs, events, robustness."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.derive import params_from_master
from p2pd.errors import LocalError
from p2pd.subkeys import relay_tag
from p2pd.tags import TAG_EPOCH_SECONDS, epoch_of
from transports import relay_wire as wire
from transports.relay_client import (
    MAX_PEERS,
    RETRY_INITIAL,
    RETRY_MAX,
    SKEW_MARGIN,
    Delivered,
    Event,
    PeerSeen,
    Registered,
    RelayClient,
    wanted_epochs,
)
from transports.relay_server import DEFAULT_LIFETIME, Endpoint, RelayConfig, RelayServer

KEY = params_from_master(bytes(32)).tag_key
OTHER_KEY = params_from_master(bytes([1]) * 32).tag_key
RELAY = ("192.0.2.100", 3478)
T0 = 50.0
#: 200 s into an epoch: one tag wanted.
WALL0 = 1_700_000_000.0
EPOCH0 = epoch_of(WALL0)
A = Endpoint("198.51.100.1", 1001)
B = Endpoint("203.0.113.2", 2002)


def counting_rng() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


class Net:
    """A relay core and clients wired together in memory, with one clock."""

    def __init__(self) -> None:
        self.now = T0
        self.wall = WALL0
        self.server = RelayServer(RelayConfig(), T0, rng=counting_rng())
        self.clients: dict[Endpoint, RelayClient] = {}
        self.events: dict[Endpoint, list[Event]] = {}

    def add(self, endpoint: Endpoint, key: bytes = KEY) -> RelayClient:
        client = RelayClient(RELAY, key, self.now, self.wall, rng=counting_rng())
        self.clients[endpoint] = client
        self.events[endpoint] = []
        self.pump()
        return client

    def pump(self) -> None:
        for _ in range(10):
            moved = False
            for endpoint, client in self.clients.items():
                for data in client.datagrams_to_send():
                    self.server.receive_untrusted(data, endpoint, self.now)
                    moved = True
            for data, dest in self.server.datagrams_to_send(self.now):
                events = self.clients[dest].receive_untrusted(data, self.now, self.wall)
                self.events[dest] += events
                moved = True
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds
        self.server.handle_timer(self.now)
        for client in self.clients.values():
            client.handle_timer(self.now, self.wall)
        self.pump()


def sent_registers(client: RelayClient) -> list[wire.Register]:
    frames = [wire.parse_untrusted(data) for data in client.datagrams_to_send()]
    assert all(isinstance(f, wire.Register) for f in frames)
    return frames  # type: ignore[return-value]


def test_a_new_client_sends_one_register_for_the_current_epoch() -> None:
    client = RelayClient(RELAY, KEY, T0, WALL0)
    (register,) = sent_registers(client)
    assert register.tag == relay_tag(KEY, EPOCH0)
    assert register.cookie == wire.NO_COOKIE
    assert not client.registered


def test_the_cookie_round_trip_registers_and_reports_the_reflexive_address() -> None:
    net = Net()
    client = net.add(A)
    assert client.registered
    assert net.events[A] == [Registered(A.addr)]
    assert client.reflexive_addr == A.addr
    assert client.counters["challenged"] == 1 and client.counters["register_sent"] == 2


def test_two_clients_see_each_other_and_relay_both_ways() -> None:
    net = Net()
    a, b = net.add(A), net.add(B)
    ((slot_b, addr_b),) = a.peers.items()
    ((slot_a, addr_a),) = b.peers.items()
    assert (addr_a, addr_b) == (A.addr, B.addr)
    assert PeerSeen(slot_b, B.addr) in net.events[A]
    assert PeerSeen(slot_a, A.addr) in net.events[B]
    body = bytes(range(48))
    net.server.receive_untrusted(a.wrap(slot_b, body), A, net.now)
    net.server.receive_untrusted(b.wrap(slot_a, body[::-1]), B, net.now)
    net.pump()
    assert net.events[B][-1] == Delivered(slot_a, body)
    assert net.events[A][-1] == Delivered(slot_b, body[::-1])


def test_a_client_of_another_passphrase_sees_no_one() -> None:
    net = Net()
    net.add(A)
    net.add(B, OTHER_KEY)
    assert net.clients[A].peers == {} and net.clients[B].peers == {}


def test_the_client_refreshes_every_third_of_the_lifetime() -> None:
    net = Net()
    client = net.add(A)
    assert client.get_timer() == pytest.approx(T0 + DEFAULT_LIFETIME / 3)
    client.handle_timer(T0 + DEFAULT_LIFETIME / 3 - 0.01, WALL0)
    assert client.datagrams_to_send() == []
    client.handle_timer(T0 + DEFAULT_LIFETIME / 3, WALL0)
    (refresh,) = sent_registers(client)
    assert refresh.cookie != wire.NO_COOKIE


def test_a_registration_survives_many_refresh_periods() -> None:
    net = Net()
    a, b = net.add(A), net.add(B)
    for _ in range(10):
        net.advance(DEFAULT_LIFETIME / 3)
    assert a.registered and b.registered
    assert net.server.registrations == 2
    assert net.server.counters["refreshed"] >= 18


def test_unanswered_registers_back_off_exponentially_up_to_a_maximum() -> None:
    wall0 = EPOCH0 * TAG_EPOCH_SECONDS + SKEW_MARGIN + 1  # 179 s of one tag ahead
    client = RelayClient(RELAY, KEY, T0, wall0)
    now, delays = T0, []
    for _ in range(8):
        assert len(sent_registers(client)) == 1
        delays.append(client.get_timer() - now)
        now = client.get_timer()
        client.handle_timer(now, wall0 + now - T0)
    expected = [min(RETRY_MAX, RETRY_INITIAL * 2**i) for i in range(8)]
    assert delays == pytest.approx(expected)


def test_a_registration_the_relay_stops_confirming_is_started_over() -> None:
    net = Net()
    client = net.add(A)
    del net.clients[A]  # the relay's answers are lost from now on
    now = T0
    while now < T0 + DEFAULT_LIFETIME:
        now = client.get_timer()
        client.handle_timer(now, WALL0 + now - T0)
        client.datagrams_to_send()
    assert not client.registered
    assert client.counters["registration_lost"] == 1


def test_a_challenge_after_registration_is_answered_at_once() -> None:
    net = Net()
    client = net.add(A)
    net.server = RelayServer(RelayConfig(), net.now)  # the relay restarted: new secret
    net.advance(DEFAULT_LIFETIME / 3)
    assert client.registered and net.server.registrations == 1


def test_near_an_epoch_boundary_both_tags_are_registered_then_only_the_new_one() -> None:
    boundary = (EPOCH0 + 1) * TAG_EPOCH_SECONDS
    client = RelayClient(RELAY, KEY, T0, WALL0)
    sent_registers(client)
    until_change = boundary - SKEW_MARGIN - WALL0
    assert client.get_timer() <= T0 + until_change
    now = T0 + until_change
    client.handle_timer(now, WALL0 + until_change)
    tags = {r.tag for r in sent_registers(client)}
    assert relay_tag(KEY, EPOCH0 + 1) in tags
    later = 2 * SKEW_MARGIN + 1
    client.handle_timer(now + later, WALL0 + until_change + later)
    tags = {r.tag for r in sent_registers(client)}
    assert tags == {relay_tag(KEY, EPOCH0 + 1)}


def test_peers_with_skewed_clocks_meet_across_an_epoch_boundary() -> None:
    boundary = (EPOCH0 + 1) * TAG_EPOCH_SECONDS
    net = Net()
    net.wall = boundary - 10  # A thinks the epoch is about to turn
    a = net.add(A)
    net.wall = boundary + 40  # B's clock is 50 s ahead: already in the next epoch
    b = net.add(B)
    assert a.peers and b.peers


@given(st.floats(0, 2e9), st.floats(-SKEW_MARGIN, SKEW_MARGIN))
def test_clocks_within_the_margin_always_share_a_tag(wall: float, skew: float) -> None:
    other = max(0.0, wall + skew)
    assert set(wanted_epochs(wall)) & set(wanted_epochs(other))


def test_answers_not_to_our_requests_are_dropped() -> None:
    client = RelayClient(RELAY, KEY, T0, WALL0)
    (register,) = sent_registers(client)
    forged = wire.Registered(register.tag, bytes(8), bytes(16), True, 60, ("192.0.2.66", 1))
    assert client.receive_untrusted(wire.encode(forged), T0, WALL0) == []
    other_tag = relay_tag(OTHER_KEY, EPOCH0)
    forged = wire.Registered(other_tag, register.nonce, bytes(16), True, 60, ("192.0.2.66", 1))
    assert client.receive_untrusted(wire.encode(forged), T0, WALL0) == []
    assert client.counters["drop_unknown_nonce"] == 1
    assert client.counters["drop_unknown_tag"] == 1
    assert client.reflexive_addr is None


def test_peers_and_deliveries_before_registration_are_dropped() -> None:
    client = RelayClient(RELAY, KEY, T0, WALL0)
    tag = relay_tag(KEY, EPOCH0)
    assert client.receive_untrusted(wire.encode(wire.Peer(tag, 1, A.addr)), T0, WALL0) == []
    deliver = wire.encode(wire.Deliver(1, bytes(32)))
    assert client.receive_untrusted(deliver, T0, WALL0) == []
    send = wire.encode(wire.Send(1, bytes(32)))
    assert client.receive_untrusted(send, T0, WALL0) == []
    assert client.counters["drop_unknown_tag"] == 1
    assert client.counters["drop_unregistered"] == 1
    assert client.counters["drop_wrong_direction"] == 1


def test_a_hostile_relay_cannot_grow_the_peer_table_without_bound() -> None:
    net = Net()
    client = net.add(A)
    tag = relay_tag(KEY, EPOCH0)
    for slot in range(3 * MAX_PEERS):
        client.receive_untrusted(wire.encode(wire.Peer(tag, slot, B.addr)), T0, WALL0)
    assert len(client.peers) == MAX_PEERS


def test_a_peer_seen_again_at_the_same_address_is_not_reported_again() -> None:
    net = Net()
    client = net.add(A)
    tag = relay_tag(KEY, EPOCH0)
    peer = wire.encode(wire.Peer(tag, 7, B.addr))
    moved = wire.encode(wire.Peer(tag, 7, ("203.0.113.2", 9999)))
    assert client.receive_untrusted(peer, T0, WALL0) == [PeerSeen(7, B.addr)]
    assert client.receive_untrusted(peer, T0, WALL0) == []
    assert client.receive_untrusted(moved, T0, WALL0) == [PeerSeen(7, ("203.0.113.2", 9999))]


@pytest.mark.parametrize("size", [0, wire.MIN_PAYLOAD - 1, wire.MAX_PAYLOAD + 1])
def test_wrapping_a_payload_the_relay_cannot_carry_is_a_local_error(size: int) -> None:
    client = RelayClient(RELAY, KEY, T0, WALL0)
    with pytest.raises(LocalError):
        client.wrap(1, bytes(size))


def test_a_bad_tag_key_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        RelayClient(RELAY, bytes(31), T0, WALL0)


@given(st.data())
def test_mutated_relay_frames_never_raise(data: st.DataObject) -> None:
    net = Net()
    a = net.add(A)
    net.add(B)
    register = wire.Register(relay_tag(KEY, EPOCH0), bytes(8))
    originals: list[wire.Frame] = [
        wire.Registered(register.tag, bytes(8), bytes(16), True, 60, A.addr, ((1, B.addr),)),
        wire.Peer(register.tag, 9, B.addr),
        wire.Deliver(9, bytes(64)),
        wire.Send(9, bytes(64)),
        register,
    ]
    for frame in originals:
        raw = bytearray(wire.encode(frame))
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        raw = raw[: data.draw(st.integers(0, len(raw)))]
        events = a.receive_untrusted(bytes(raw), T0, WALL0)
        assert all(isinstance(e, PeerSeen | Delivered | Registered) for e in events)
    assert a.registered
