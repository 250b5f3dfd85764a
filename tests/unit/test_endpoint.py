"""Endpoint: handshakes, data, timers, roaming and DoS behaviour over an in-memory network."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pd import derive, wire
from p2pd.endpoint import (
    Addr,
    ConnectFailed,
    DataReceived,
    Endpoint,
    Event,
    NotConnected,
    PeerAddressChanged,
    PeerConnected,
    PeerLost,
    Rekeyed,
)
from p2pd.identity import Identity
from p2pd.peer import PATH_STALE_AFTER, STANDBY_KEEPALIVE, STANDBY_STALE_AFTER
from p2pd.session import REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, NoSessionKeys, SessionLimits

E = TypeVar("E")
PARAMS = derive.params_from_master(b"\x01" * 32)
OTHER_PARAMS = derive.params_from_master(b"\x02" * 32)
#: Unix time at monotonic zero: the tags need a plausible wall clock.
WALL_OFFSET = 1_700_000_000.0
A: Addr = ("192.0.2.1", 40001)
B: Addr = ("192.0.2.2", 40002)
C: Addr = ("192.0.2.3", 40003)
#: Small limits: rekey every 50 messages or 2 s, keys dead after 6 s.
SMALL = SessionLimits(
    rekey_after_messages=50,
    rekey_after_time=2.0,
    reject_after_time=6.0,
    rekey_timeout=0.5,
    keepalive_timeout=1.0,
)


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def identity(seed: int) -> Identity:
    return Identity.from_private(random.Random(f"id{seed}").randbytes(32))


def endpoint(
    seed: int,
    params: derive.Params = PARAMS,
    limits: SessionLimits | None = None,
    path_rank: Callable[[Addr], int] | None = None,
    keep_warm: Callable[[Addr], bool] | None = None,
) -> Endpoint:
    return Endpoint(
        params,
        identity(seed),
        now=0.0,
        rng=seeded(seed),
        limits=limits,
        path_rank=path_rank,
        keep_warm=keep_warm,
    )


@dataclass
class Sent:
    at: float
    src: Addr
    dst: Addr
    data: bytes
    lost: bool


@dataclass
class Net:
    """Routes datagrams between endpoints by address, stepping time through their timers.

    ``lose(sent)`` decides whether the network drops a datagram; ``delay(sent)`` how long it
    takes.  ``alias`` maps extra addresses to a node (a loopback, or a roamed address from
    which it now sends: ``source`` overrides the source address of a node's datagrams).
    ``via`` models a link (a Tor stream): a datagram sent to ``dst`` arrives from
    ``via[dst]``, whatever ``source`` says.
    """

    now: float = 0.0
    nodes: dict[Addr, Endpoint] = field(default_factory=dict)
    alias: dict[Addr, Addr] = field(default_factory=dict)
    source: dict[Addr, Addr] = field(default_factory=dict)
    via: dict[Addr, Addr] = field(default_factory=dict)
    events: dict[Addr, list[Event]] = field(default_factory=dict)
    log: list[Sent] = field(default_factory=list)
    lose: Callable[[Sent], bool] = lambda sent: False
    delay: Callable[[Sent], float] = lambda sent: 0.01
    _queue: list[tuple[float, int, Sent]] = field(default_factory=list)
    _seq: int = 0

    def add(self, addr: Addr, ep: Endpoint) -> Endpoint:
        self.nodes[addr] = ep
        self.events[addr] = []
        return ep

    @property
    def wall(self) -> float:
        return WALL_OFFSET + self.now

    def connect(self, src: Addr, dst: Addr) -> None:
        self.nodes[src].connect(dst, self.now, self.wall)
        self._collect()

    def send(self, src: Addr, peer: Addr, data: bytes) -> None:
        self.nodes[src].send(self.nodes[peer].identity.public, data, self.now)
        self._collect()

    def inject(self, data: bytes, src: Addr, dst: Addr) -> None:
        self.nodes[dst].receive_datagram(data, src, self.now, self.wall)
        self._collect()

    def _collect(self) -> None:
        for addr, ep in self.nodes.items():
            for data, dst in ep.datagrams_to_send(self.now, self.wall):
                src = self.via.get(dst) or self.source.get(addr, addr)
                sent = Sent(self.now, src, dst, data, lost=False)
                sent.lost = self.lose(sent)
                self.log.append(sent)
                if not sent.lost:
                    self._seq += 1
                    heapq.heappush(self._queue, (self.now + self.delay(sent), self._seq, sent))
            while (event := ep.next_event()) is not None:
                self.events[addr].append(event)

    def _next_time(self) -> float | None:
        times = [ep_timer for ep in self.nodes.values() if (ep_timer := ep.get_timer()) is not None]
        if self._queue:
            times.append(self._queue[0][0])
        return min(times, default=None)

    def run(self, duration: float, on_step: Callable[[], None] | None = None) -> None:
        """Advance time by ``duration``, delivering datagrams and firing timers."""
        end = self.now + duration
        for _ in range(2_000_000):
            self._collect()
            when = self._next_time()
            if when is None or when > end:
                break
            self.now = max(self.now, when)
            if self._queue and self._queue[0][0] <= self.now:
                _, _, sent = heapq.heappop(self._queue)
                target = self.alias.get(sent.dst, sent.dst)
                if target in self.nodes:
                    self.nodes[target].receive_datagram(sent.data, sent.src, self.now, self.wall)
            else:
                for ep in self.nodes.values():
                    timer = ep.get_timer()
                    if timer is not None and timer <= self.now:
                        ep.handle_timer(self.now, self.wall)
            if on_step is not None:
                on_step()
        else:
            raise AssertionError("the network never went quiet: a timer loops")
        self.now = end
        self._collect()

    def of(self, addr: Addr, kind: type[E]) -> list[E]:
        return [e for e in self.events[addr] if isinstance(e, kind)]

    def sent_between(self, src: Addr, dst: Addr) -> list[Sent]:
        return [s for s in self.log if s.src == src and s.dst == dst]


def pair(limits: SessionLimits | None = None, **net_args: object) -> Net:
    net = Net(**net_args)  # type: ignore[arg-type]
    net.add(A, endpoint(1, limits=limits))
    net.add(B, endpoint(2, limits=limits))
    return net


def connected_pair(limits: SessionLimits | None = None) -> Net:
    net = pair(limits)
    net.connect(A, B)
    net.run(1.0)
    assert net.of(A, PeerConnected) and net.of(B, PeerConnected)
    return net


def kind_of(data: bytes) -> int:
    return data[0]


# ------------------------------------------------------------------ connecting


def test_two_endpoints_connect_as_initiator_and_responder() -> None:
    net = pair()
    net.connect(A, B)
    net.run(1.0)
    (a_conn,) = net.of(A, PeerConnected)
    (b_conn,) = net.of(B, PeerConnected)
    assert isinstance(a_conn, PeerConnected) and isinstance(b_conn, PeerConnected)
    assert a_conn.initiator and not b_conn.initiator
    assert a_conn.peer_id == net.nodes[B].identity.public
    assert a_conn.fingerprint == net.nodes[B].identity.fingerprint
    assert b_conn.fingerprint == net.nodes[A].identity.fingerprint
    assert a_conn.addr == B and b_conn.addr == A
    assert a_conn.handshake_rtt == pytest.approx(0.02)


def test_connected_endpoints_exchange_data_both_ways() -> None:
    net = connected_pair()
    net.send(A, B, b"ping")
    net.send(B, A, b"pong")
    net.run(1.0)
    assert [e.data for e in net.of(B, DataReceived)] == [b"ping"]
    assert [e.data for e in net.of(A, DataReceived)] == [b"pong"]


def test_handshake_packets_have_the_documented_sizes() -> None:
    net = connected_pair()
    sizes = {kind_of(s.data): len(s.data) for s in net.log if kind_of(s.data) != wire.TYPE_DATA}
    assert sizes == {0x01: 88, 0x02: 156, 0x03: 124}


def test_connect_is_idempotent_per_address() -> None:
    net = pair()
    net.connect(A, B)
    net.connect(A, B)
    assert len(net.log) == 1
    net.run(1.0)
    net.connect(A, B)  # connected there already
    net.run(1.0)
    assert len(net.of(A, PeerConnected)) == 1
    assert sum(kind_of(s.data) == wire.TYPE_HANDSHAKE_INIT for s in net.log) == 1


def test_send_to_unknown_peer_is_a_local_error() -> None:
    ep = endpoint(1)
    with pytest.raises(NotConnected):
        ep.send(b"\x00" * 32, b"x", 0.0)


# -------------------------------------------------------------- wrong passphrase


def test_wrong_passphrase_initiator_gets_silence_and_the_drop_is_counted() -> None:
    net = pair()
    net.add(C, endpoint(3, params=OTHER_PARAMS))
    net.connect(C, A)
    net.run(REKEY_ATTEMPT_TIME + 10)
    assert net.sent_between(C, A), "C kept trying"
    assert net.sent_between(A, C) == []
    assert net.nodes[A].counters["drop_tag"] == len(net.sent_between(C, A))
    assert net.of(C, ConnectFailed) == [ConnectFailed(A, "timeout")]
    assert not net.of(A, PeerConnected) and not net.of(C, PeerConnected)


def test_wrong_passphrase_responder_stays_silent() -> None:
    net = pair()
    net.add(C, endpoint(3, params=OTHER_PARAMS))
    net.connect(A, C)
    net.run(REKEY_ATTEMPT_TIME + 10)
    assert net.sent_between(C, A) == []
    assert net.nodes[C].counters["drop_tag"] > 0
    assert net.of(A, ConnectFailed) == [ConnectFailed(C, "timeout")]


# ------------------------------------------------------------------ retransmits


@pytest.mark.parametrize(
    "lost_type",
    [wire.TYPE_HANDSHAKE_INIT, wire.TYPE_HANDSHAKE_RESP, wire.TYPE_HANDSHAKE_FINISH],
)
def test_a_lost_handshake_packet_is_recovered_by_retransmission(lost_type: int) -> None:
    dropped: list[Sent] = []

    def lose(sent: Sent) -> bool:
        if kind_of(sent.data) == lost_type and not dropped:
            dropped.append(sent)
            return True
        return False

    net = pair(lose=lose)
    net.connect(A, B)
    net.run(1.0)
    assert not net.of(A, PeerConnected)
    net.run(REKEY_TIMEOUT + 1)
    assert dropped
    assert net.of(A, PeerConnected) and net.of(B, PeerConnected)
    net.send(A, B, b"after")
    net.send(B, A, b"back")
    net.run(1.0)
    assert net.of(B, DataReceived) == [DataReceived(net.nodes[A].identity.public, b"after")]
    assert net.of(A, DataReceived) == [DataReceived(net.nodes[B].identity.public, b"back")]


@pytest.mark.parametrize("which", [0, 1])
def test_a_lost_confirming_keepalive_is_recovered(which: int) -> None:
    """The initiator's first keepalive (0) or the responder's answer (1) is lost."""
    seen: list[Sent] = []

    def lose(sent: Sent) -> bool:
        if kind_of(sent.data) == wire.TYPE_DATA:
            seen.append(sent)
            return len(seen) == which + 1
        return False

    net = pair(lose=lose)
    net.connect(A, B)
    net.run(REKEY_TIMEOUT + 2)
    assert len(net.of(A, PeerConnected)) == 1 and len(net.of(B, PeerConnected)) == 1
    net.send(A, B, b"x")
    net.run(1.0)
    assert net.of(B, DataReceived)


def test_connect_fails_after_rekey_attempt_time_when_nobody_answers() -> None:
    net = pair()
    net.connect(A, C)
    net.run(REKEY_ATTEMPT_TIME - 1)
    assert net.of(A, ConnectFailed) == []
    inits = net.sent_between(A, C)
    gaps = [b.at - a.at for a, b in itertools.pairwise(inits)]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + 1 / 3 + 1e-9 for g in gaps)
    net.run(REKEY_TIMEOUT + 1)
    assert net.of(A, ConnectFailed) == [ConnectFailed(C, "timeout")]
    count = len(net.log)
    net.run(60)
    assert len(net.log) == count and net.nodes[A].get_timer() is None


# ------------------------------------------------------------ self and crossing


def test_self_connection_is_aborted_and_never_connects() -> None:
    net = pair()
    loopback: Addr = ("127.0.0.1", 40001)
    net.alias[loopback] = A
    net.connect(A, loopback)
    net.run(REKEY_ATTEMPT_TIME + 10)
    assert not net.of(A, PeerConnected)
    assert net.of(A, ConnectFailed) == [ConnectFailed(loopback, "self")]
    assert net.nodes[A].counters["self"] == 1
    net.connect(A, loopback)  # remembered: not even tried again
    assert net.nodes[A].counters["connect_self"] == 1


def assert_converged(net: Net) -> None:
    for me, other in ((A, B), (B, A)):
        assert len(net.of(me, PeerConnected)) == 1, net.events[me]
        net.send(me, other, b"hello from %s" % me[0].encode())
    net.run(2.0)
    for me, other in ((A, B), (B, A)):
        assert [e.data for e in net.of(me, DataReceived)] == [b"hello from %s" % other[0].encode()]


def test_simultaneous_initiation_converges_to_one_connection() -> None:
    net = pair()
    net.nodes[A].connect(B, net.now, net.wall)
    net.nodes[B].connect(A, net.now, net.wall)
    net.run(REKEY_TIMEOUT * 3)
    assert_converged(net)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    offset=st.floats(min_value=0.0, max_value=0.05),
    latency=st.floats(min_value=0.001, max_value=0.05),
    first=st.sampled_from([A, B]),
    loss_seed=st.integers(0, 2**16),
    loss=st.sampled_from([0.0, 0.0, 0.2]),
)
def test_simultaneous_initiation_with_offsets_and_loss_converges(
    offset: float, latency: float, first: Addr, loss_seed: int, loss: float
) -> None:
    chance = random.Random(loss_seed)
    net = pair(lose=lambda s: chance.random() < loss, delay=lambda s: latency)
    second = B if first == A else A
    net.connect(first, second)
    net.run(offset)
    net.connect(second, first)
    net.run(REKEY_TIMEOUT * 6)
    net.lose = lambda s: False
    net.run(REKEY_TIMEOUT * 3)
    assert_converged(net)


# ------------------------------------------------------------- rekey under load


@dataclass
class Traffic:
    """Both sides send numbered messages; records what the network did with each."""

    net: Net
    sent: dict[bytes, Sent] = field(default_factory=dict)
    refused: int = 0

    def send(self, src: Addr, dst: Addr, n: int) -> None:
        payload = b"%s->%s #%d " % (src[0].encode(), dst[0].encode(), n) + bytes(n % 50)
        before = len(self.net.log)
        try:
            self.net.send(src, dst, payload)
        except NoSessionKeys:
            self.refused += 1
            return
        datagram = next(s for s in self.net.log[before:] if kind_of(s.data) == wire.TYPE_DATA)
        self.sent[payload] = datagram

    def received(self, at: Addr) -> list[bytes]:
        return [e.data for e in self.net.of(at, DataReceived)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    loss=st.sampled_from([0.0, 0.05, 0.1]),
    jitter=st.floats(min_value=0.0, max_value=0.03),
)
def test_rekey_under_traffic_loses_only_what_the_network_dropped(
    seed: int, loss: float, jitter: float
) -> None:
    chance = random.Random(seed)
    net = connected_pair(SMALL)
    net.lose = lambda s: chance.random() < loss
    net.delay = lambda s: 0.01 + chance.random() * jitter
    traffic = Traffic(net)
    first_data: list[Sent] = []
    for n in range(1000):  # 20 s at 50 messages per second each way
        traffic.send(A, B, n)
        traffic.send(B, A, n)
        if n == 5:
            first_data.append(traffic.sent[b"192.0.2.1->192.0.2.2 #5 " + bytes(5)])
        net.run(0.02)
    net.lose = lambda s: False
    net.run(1.0)
    assert traffic.refused == 0
    for at in (A, B):
        got = traffic.received(at)
        assert len(got) == len(set(got)), "a message was delivered twice"
        assert set(got) <= set(traffic.sent), "a message was altered"
        expected = {p for p, s in traffic.sent.items() if s.dst == at and not s.lost}
        assert set(got) == expected, "a delivered datagram was dropped by the endpoint"
        assert len(net.of(at, Rekeyed)) >= 10
        assert len(net.of(at, PeerConnected)) == 1
    # Keys from the first second died long ago: their packets are refused.
    old = first_data[0]
    drops = sum(net.nodes[B].counters.values())
    net.inject(old.data, old.src, B)
    assert sum(net.nodes[B].counters.values()) == drops + 1
    assert net.of(B, DataReceived)[-1] != DataReceived(net.nodes[A].identity.public, old.data)


def test_old_keypairs_are_forgotten_after_reject_after_time() -> None:
    net = connected_pair(SMALL)
    net.send(A, B, b"early")
    early = net.log[-1]
    net.run(1.0)
    for n in range(400):  # keep both sides busy for 8 s: several rekeys
        net.send(A, B, b"m%d" % n)
        net.send(B, A, b"m%d" % n)
        net.run(0.02)
    before = net.nodes[B].counters["unknown_index"]
    net.inject(early.data, early.src, B)
    assert net.nodes[B].counters["unknown_index"] == before + 1


# --------------------------------------------------------------------- roaming


def test_roaming_peer_keeps_its_session_and_is_reported() -> None:
    net = connected_pair()
    new_b: Addr = ("198.51.100.7", 50000)
    net.source[B] = new_b  # B's datagrams now come from another address (NAT rebinding)
    net.alias[new_b] = B
    net.send(B, A, b"from the new address")
    net.run(1.0)
    assert net.of(A, PeerAddressChanged) == [
        PeerAddressChanged(net.nodes[B].identity.public, B, new_b)
    ]
    assert net.nodes[A].peers[net.nodes[B].identity.public].addr == new_b
    net.send(A, B, b"follows it")
    net.run(1.0)
    assert net.log[-1].dst == new_b or any(s.dst == new_b for s in net.log)
    assert net.of(B, DataReceived) == [DataReceived(net.nodes[A].identity.public, b"follows it")]


#: A relayed path (worse) and a direct one (better) for the ranked-roaming tests.
RELAYED: Addr = ("100::7:1:0:1", 1)


def relay_is_worse(addr: Addr) -> int:
    return 4 if addr[0].startswith("100::") else 0


def ranked_pair() -> Net:
    """A and B connected over B's relayed address, A ranking it below direct ones."""
    net = Net()
    net.add(A, endpoint(1, path_rank=relay_is_worse))
    net.add(B, endpoint(2))
    net.alias[RELAYED] = B
    net.source[B] = RELAYED
    net.connect(A, RELAYED)
    net.run(1.0)
    assert net.of(A, PeerConnected)[0].addr == RELAYED
    return net


def test_a_better_path_takes_over_from_a_relayed_one() -> None:
    net = ranked_pair()
    net.source.pop(B)  # B now reaches A directly
    net.send(B, A, b"direct")
    net.run(1.0)
    b_key = net.nodes[B].identity.public
    assert net.of(A, PeerAddressChanged) == [PeerAddressChanged(b_key, RELAYED, B)]


def test_a_worse_path_does_not_pull_the_peer_back_while_the_better_one_lives() -> None:
    net = ranked_pair()
    net.source.pop(B)
    net.send(B, A, b"direct")
    net.run(1.0)
    net.source[B] = RELAYED  # a straggler on the relay
    net.send(B, A, b"late relayed")
    net.run(1.0)
    b_key = net.nodes[B].identity.public
    assert net.nodes[A].peers[b_key].addr == B
    assert len(net.of(A, PeerAddressChanged)) == 1
    assert DataReceived(b_key, b"late relayed") in net.of(A, DataReceived)


def test_a_worse_path_takes_over_once_the_better_one_is_stale() -> None:
    net = ranked_pair()
    net.source.pop(B)
    net.send(B, A, b"direct")
    net.run(1.0)
    net.now += PATH_STALE_AFTER + 1.0  # the direct path went quiet
    net.source[B] = RELAYED
    net.send(B, A, b"relayed again")
    net.run(1.0)
    b_key = net.nodes[B].identity.public
    assert net.nodes[A].peers[b_key].addr == RELAYED


#: The two ends of one Tor stream, as each side addresses the other (virtual addresses);
#: a datagram to one arrives from the other (``Net.via``).
TOR_TO_B: Addr = ("100::5:0:1", 1)
TOR_TO_A: Addr = ("100::5:0:2", 1)


def is_tor(addr: Addr) -> bool:
    return addr in (TOR_TO_A, TOR_TO_B)


def upgraded_pair() -> Net:
    """A and B met over a Tor stream, then A reached B directly (a punched path): both moved
    to the direct path and keep the stream warm."""
    net = Net()
    for addr, seed in ((A, 1), (B, 2)):
        net.add(addr, endpoint(seed, path_rank=lambda a: 9 if is_tor(a) else 0, keep_warm=is_tor))
    net.alias.update({TOR_TO_B: B, TOR_TO_A: A})
    net.via.update({TOR_TO_B: TOR_TO_A, TOR_TO_A: TOR_TO_B})
    net.connect(A, TOR_TO_B)
    net.run(1.0)
    assert net.of(A, PeerConnected)[0].addr == TOR_TO_B
    assert net.of(B, PeerConnected)[0].addr == TOR_TO_A
    net.connect(A, B)  # the punched path: a handshake there moves both ends
    net.run(1.0)
    a_key, b_key = (net.nodes[x].identity.public for x in (A, B))
    assert net.of(A, PeerAddressChanged) == [PeerAddressChanged(b_key, TOR_TO_B, B)]
    assert net.of(B, PeerAddressChanged) == [PeerAddressChanged(a_key, TOR_TO_A, A)]
    return net


def test_both_paths_of_an_idle_upgraded_session_carry_keepalives_and_nobody_moves() -> None:
    net = upgraded_pair()
    a_key, b_key = (net.nodes[x].identity.public for x in (A, B))
    assert net.nodes[A].peers[b_key].standby == TOR_TO_B
    assert net.nodes[B].peers[a_key].standby == TOR_TO_A
    start, minute = net.now, 60.0  # a Tor link idle that long would close
    net.run(minute + 0.5)
    per_minute = int(minute / STANDBY_KEEPALIVE)
    for src, dst in ((TOR_TO_A, TOR_TO_B), (TOR_TO_B, TOR_TO_A), (A, B), (B, A)):
        sent = [s for s in net.sent_between(src, dst) if s.at > start]
        assert per_minute - 1 <= len(sent) <= per_minute, (src, dst, len(sent))
        assert {len(s.data) for s in sent} == {wire.DATA_MIN_SIZE}
        gaps = [b.at - a.at for a, b in itertools.pairwise(sent)]
        assert max(gaps) <= STANDBY_KEEPALIVE + 0.01
    assert len(net.of(A, PeerAddressChanged)) == len(net.of(B, PeerAddressChanged)) == 1
    assert net.nodes[A].peers[b_key].addr == B  # an idle direct path is not a dead one
    assert net.nodes[A].counters["standby_keepalives"] >= per_minute - 1


def test_traffic_on_the_direct_path_spares_its_keepalives_not_the_standbys() -> None:
    net = upgraded_pair()
    start = net.now
    for _ in range(40):
        net.send(A, B, b"chatter")
        net.run(0.5)
    keepalives = [
        s for s in net.sent_between(A, B) if s.at > start and len(s.data) == wire.DATA_MIN_SIZE
    ]
    assert not keepalives
    assert len([s for s in net.sent_between(TOR_TO_A, TOR_TO_B) if s.at > start]) >= 3


def test_when_the_direct_path_dies_both_ends_fall_back_to_the_warm_stream() -> None:
    net = upgraded_pair()
    a_key, b_key = (net.nodes[x].identity.public for x in (A, B))
    net.lose = lambda sent: sent.dst in (A, B)  # the punched path is gone both ways
    cut = net.now
    net.send(A, B, b"lost on the direct path")
    net.run(STANDBY_STALE_AFTER - 1.0)
    assert net.nodes[A].peers[b_key].addr == B, "one lost keepalive is not a dead path"
    net.run(STANDBY_KEEPALIVE + 2.0)
    assert net.nodes[A].peers[b_key].addr == TOR_TO_B
    assert net.nodes[B].peers[a_key].addr == TOR_TO_A
    moved = {e for x in (A, B) for e in net.of(x, PeerAddressChanged)[1:]}
    assert moved == {PeerAddressChanged(b_key, B, TOR_TO_B), PeerAddressChanged(a_key, A, TOR_TO_A)}
    assert net.nodes[A].peers[b_key].standby is None  # nothing better is left to keep warm
    net.send(A, B, b"over the stream")
    net.send(B, A, b"and back")
    net.run(1.0)
    assert DataReceived(a_key, b"over the stream") in net.of(B, DataReceived)
    assert DataReceived(b_key, b"and back") in net.of(A, DataReceived)
    print(f"fell back {net.now - cut:.1f} s after the cut (bound)")


def test_a_closed_standby_gets_no_more_keepalives() -> None:
    net = upgraded_pair()
    net.nodes[A].path_closed(TOR_TO_B)  # the stream closed: both ends see its link go
    net.nodes[B].path_closed(TOR_TO_A)
    start = net.now
    net.run(STANDBY_KEEPALIVE * 4)
    assert not [s for s in net.log if s.at > start and s.dst in (TOR_TO_A, TOR_TO_B)]
    assert len(net.of(A, PeerAddressChanged)) == len(net.of(B, PeerAddressChanged)) == 1


def test_without_keep_warm_a_path_left_is_left() -> None:
    net = ranked_pair()
    net.source.pop(B)
    net.send(B, A, b"direct")
    net.run(STANDBY_KEEPALIVE * 3)
    b_key = net.nodes[B].identity.public
    assert net.nodes[A].peers[b_key].standby is None
    assert not [s for s in net.log if s.src == A and s.dst == RELAYED and s.at > 1.5]


def test_a_forged_packet_from_another_address_does_not_move_the_peer() -> None:
    net = connected_pair()
    net.send(B, A, b"genuine")
    packet = net.log[-1].data
    net.inject(packet[:-1] + bytes([packet[-1] ^ 1]), ("203.0.113.9", 1), A)  # a forgery
    net.run(1.0)
    net.inject(packet, ("203.0.113.9", 1), A)  # a replay
    assert net.of(A, PeerAddressChanged) == []
    assert net.nodes[A].counters["bad_auth"] == 1 and net.nodes[A].counters["replay"] == 1


# ------------------------------------------------------------- timers and loss


#: WireGuard's limits but a keepalive after one second, to watch keepalives alone.
KEEPALIVE = SessionLimits(keepalive_timeout=1.0)


def test_passive_keepalive_after_receiving_data_and_sending_nothing() -> None:
    net = connected_pair(KEEPALIVE)
    net.send(A, B, b"one way")
    before = len(net.sent_between(B, A))
    net.run(KEEPALIVE.keepalive_timeout - 0.1)
    assert len(net.sent_between(B, A)) == before
    net.run(0.2)
    keepalives = net.sent_between(B, A)[before:]
    assert [len(s.data) for s in keepalives] == [wire.DATA_MIN_SIZE]
    assert not net.of(A, DataReceived)
    net.run(KEEPALIVE.keepalive_timeout * 5)
    assert len(net.sent_between(B, A)) == before + 1, "keepalives do not answer keepalives"


def test_no_keepalive_when_the_receiver_answered_in_time() -> None:
    net = connected_pair(KEEPALIVE)
    net.send(A, B, b"question")
    net.run(0.1)
    net.send(B, A, b"answer")
    before = len(net.sent_between(B, A))
    net.run(KEEPALIVE.keepalive_timeout + 0.2)
    assert len(net.sent_between(B, A)) == before


def test_idle_peers_rekey_by_age_and_stay_connected() -> None:
    net = connected_pair(SMALL)
    net.run(SMALL.reject_after_time * 5)
    assert len(net.of(A, Rekeyed)) >= 5 and not net.of(A, PeerLost)
    net.send(A, B, b"still there")
    net.run(1.0)
    assert net.of(B, DataReceived)


def test_a_vanished_peer_is_lost_after_three_reject_times() -> None:
    net = connected_pair(SMALL)
    peer_b = net.nodes[B].identity.public
    last_heard = net.nodes[A].peers[peer_b].last_received
    del net.nodes[B]
    net.run(last_heard + SMALL.reject_after_time * 3 - net.now - 0.01)
    assert net.of(A, PeerLost) == []
    net.run(0.02)
    assert net.of(A, PeerLost) == [PeerLost(peer_b)]
    assert len(net.nodes[A].peers) == 0
    sent = len(net.log)
    net.run(REKEY_ATTEMPT_TIME)
    assert len(net.log) == sent, "nothing is sent to a lost peer"
    with pytest.raises(NotConnected):
        net.nodes[A].send(peer_b, b"x", net.now)
    assert net.nodes[A].get_timer() is None


def test_send_after_the_keys_expired_raises_and_starts_a_handshake() -> None:
    net = connected_pair(SMALL)
    peer_b = net.nodes[B].identity.public
    net.lose = lambda s: True  # a partition: every rekey fails
    net.run(SMALL.reject_after_time + 1)
    with pytest.raises(NoSessionKeys):
        net.nodes[A].send(peer_b, b"x", net.now)
    net.lose = lambda s: False
    net.run(SMALL.rekey_timeout + 1)
    net.send(A, B, b"healed")
    net.run(1.0)
    assert DataReceived(net.nodes[A].identity.public, b"healed") in net.of(B, DataReceived)


def test_close_peer_forgets_it_without_an_event() -> None:
    net = connected_pair()
    peer_b = net.nodes[B].identity.public
    net.nodes[A].close_peer(peer_b)
    net.nodes[A].close_peer(peer_b)
    assert net.nodes[A].peers == {}
    with pytest.raises(NotConnected):
        net.nodes[A].send(peer_b, b"x", net.now)
    net.send(B, A, b"to a closed peer")
    net.run(1.0)
    assert net.nodes[A].counters["unknown_index"] == 1 and not net.of(A, DataReceived)


# ----------------------------------------------------------------------- DoS


def test_under_a_flood_of_replayed_inits_an_honest_initiator_still_connects() -> None:
    net = pair()
    captured = endpoint(9)
    captured.connect(A, 0.0, WALL_OFFSET)
    ((replayed, _),) = captured.datagrams_to_send(0.0, WALL_OFFSET)
    flooders = [(f"203.0.113.{i}", 9999) for i in range(1, 250)]

    def flood() -> None:
        for src in flooders:
            net.nodes[A].receive_datagram(replayed, src, net.now, net.wall)

    net.connect(B, A)
    for _ in range(int(3 * REKEY_TIMEOUT / 0.1)):
        flood()
        net.run(0.1)
    counters = net.nodes[A].counters
    assert net.nodes[A].early.limiter.under_load(net.now)
    assert counters["cookie_sent"] > 0 and net.nodes[B].counters["cookie_received"] >= 1
    assert net.of(B, PeerConnected) and net.of(A, PeerConnected)


# ------------------------------------------------------------- damaged input


def handshake_log() -> tuple[Net, list[Sent]]:
    net = connected_pair()
    return net, [s for s in net.log if kind_of(s.data) != wire.TYPE_DATA]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_every_flipped_bit_of_a_handshake_packet_is_dropped_and_counted(which: int) -> None:
    _, packets = handshake_log()
    original = packets[which]
    covered = len(original.data) - wire.MAC_SIZE  # mac2 is only checked under load
    for bit in range(covered * 8):
        damaged = bytearray(original.data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        net = pair()
        if which == 0:
            target = net.nodes[B]
        else:  # replay the exchange up to the packet, then damage it
            net.connect(A, B)
            net.run(0.01 * which - 0.001)
            target = net.nodes[original.dst]
        before = sum(target.counters.values())
        target.receive_datagram(bytes(damaged), original.src, net.now, net.wall)
        assert sum(target.counters.values()) == before + 1, bit
        assert target.next_event() is None


def test_every_flipped_bit_of_a_data_packet_is_dropped_and_counted() -> None:
    net = connected_pair()
    net.send(A, B, b"payload")
    original = net.log[-1].data
    ep = net.nodes[B]
    for bit in range(len(original) * 8):
        damaged = bytearray(original)
        damaged[bit // 8] ^= 1 << (bit % 8)
        before = sum(ep.counters.values())
        ep.receive_datagram(bytes(damaged), A, net.now, net.wall)
        assert sum(ep.counters.values()) == before + 1
        assert ep.next_event() is None
    ep.receive_datagram(original, A, net.now, net.wall)
    assert ep.next_event() == DataReceived(net.nodes[A].identity.public, b"payload")


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.tuples(st.sampled_from([1, 2, 3, 4, 5]), st.binary(max_size=200)).map(
            lambda t: bytes([t[0], 0, 0, 0]) + t[1]
        ),
    )
)
def test_random_datagrams_never_raise(data: bytes) -> None:
    net = connected_pair()
    for ep in net.nodes.values():
        ep.receive_datagram(data, C, net.now, net.wall)
        ep.handle_timer(net.now, net.wall)
        assert sum(ep.counters.values()) >= 1


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 1500), st.booleans()), max_size=30)
)
def test_real_packets_replayed_damaged_and_reordered_never_raise(
    ops: list[tuple[int, int, bool]],
) -> None:
    packets = [s for s in connected_pair().log]
    net = pair()  # the same seeds: the same indices and keys, so the packets reach real state
    for which, bit, damage in ops:
        sent = packets[which % len(packets)]
        data = bytearray(sent.data)
        if damage and bit < len(data) * 8:
            data[bit // 8] ^= 1 << (bit % 8)
        net.inject(bytes(data), sent.src, sent.dst)
    net.run(REKEY_TIMEOUT * 2)
    for addr in (A, B):
        assert len(net.of(addr, PeerConnected)) <= 1
