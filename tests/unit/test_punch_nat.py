"""Two PunchCores across a simulated internet with NATs, on an explicit clock.

The model follows Linux conntrack with masquerade (RFC 4787 terms): a mapping is made by the
first outbound datagram of a (local, remote) flow; an endpoint-independent NAT ("eim") keeps
the local port for every remote, an endpoint-dependent one picks a new port per remote,
uniformly at random ("edm", as ``random,fully-random``) or the next free one ("edm-seq", as
many home routers).  Filtering is address-and-port dependent for all of them: an inbound
datagram passes only if the mapping has sent to exactly that ``ip:port``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Literal

import pytest

from p2pd.derive import params_from_master
from p2pd.subkeys import punch_key
from transports.base import Addr
from transports.punch import (
    MAX_TRIES,
    SPRAY_BUDGET,
    SPRAY_DELAY,
    SPRAY_RATE,
    GaveUp,
    NatHint,
    PunchCore,
    Validated,
)

KEY = punch_key(params_from_master(bytes(32)).tag_key)
WALL = 1_800_000_000.0
#: One-way delay across the simulated internet: 20 ms, so one RTT is 40 ms.
DELAY = 0.02
RTT = 2 * DELAY
#: A public server the peers told the relay/STUN about: its mapping is the "observed" port.
RELAY: Addr = ("203.0.113.1", 3478)
#: Port range a Linux NAT remaps into.
NAT_PORTS = (1024, 65535)
#: Simulated seconds a scenario may run: far beyond every check and the whole spray.
HORIZON = 60.0

NatKind = Literal["eim", "edm", "edm-seq"]


@dataclass
class Nat:
    public_ip: str
    kind: NatKind
    rng: random.Random
    mappings: dict[tuple[Addr, Addr | None], int] = field(default_factory=dict)
    owner: dict[int, Addr] = field(default_factory=dict)
    allowed: set[tuple[int, Addr]] = field(default_factory=set)
    last_port: int = 20000
    #: Rigged choices: the port a new mapping toward this remote gets.
    forced: dict[Addr, int] = field(default_factory=dict)

    def outbound(self, local: Addr, remote: Addr) -> Addr:
        key = (local, None if self.kind == "eim" else remote)
        port = self.mappings.get(key)
        if port is None:
            port = self.forced.get(remote) or self._new_port(local)
            self.mappings[key] = port
            self.owner[port] = local
        self.allowed.add((port, remote))
        return (self.public_ip, port)

    def _new_port(self, local: Addr) -> int:
        if self.kind == "eim" and local[1] not in self.owner:
            return local[1]
        while True:
            if self.kind == "edm-seq":
                self.last_port += 1
                port = self.last_port
            else:
                port = self.rng.randint(*NAT_PORTS)
            if port not in self.owner:
                return port

    def inbound(self, port: int, remote: Addr) -> Addr | None:
        return self.owner[port] if (port, remote) in self.allowed else None


@dataclass
class Host:
    core: PunchCore
    local: Addr
    nat: Nat | None = None
    events: list[Validated | GaveUp] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)

    @property
    def public_ip(self) -> str:
        return self.nat.public_ip if self.nat else self.local[0]

    def observed(self) -> Addr:
        """This host's address as a relay or STUN server sees it."""
        return self.nat.outbound(self.local, RELAY) if self.nat else self.local


class Internet:
    """Delivers datagrams after DELAY, through each side's NAT; runs the cores' timers."""

    def __init__(self, *hosts: Host) -> None:
        self.hosts = hosts
        self.now = 0.0
        self.queue: list[tuple[float, int, Host, Addr, bytes]] = []
        self.seq = itertools.count()
        self.sent: list[tuple[Host, Addr]] = []

    def flush(self, host: Host) -> None:
        for data, dst in host.core.datagrams_to_send(self.now):
            self.sent.append((host, dst))
            src = host.nat.outbound(host.local, dst) if host.nat else host.local
            for to in self.hosts:
                if to.public_ip != dst[0]:
                    continue
                local = to.nat.inbound(dst[1], src) if to.nat else to.local
                if local == to.local:
                    when = self.now + DELAY
                    heapq.heappush(self.queue, (when, next(self.seq), to, src, data))
        while (event := host.core.next_event()) is not None:
            host.events.append(event)
            host.event_times.append(self.now)

    def run(self, until: float = HORIZON) -> None:
        while True:
            timers = [t for h in self.hosts if (t := h.core.get_timer()) is not None]
            arrivals = [self.queue[0][0]] if self.queue else []
            if not timers + arrivals:
                return
            self.now = max(self.now, min(timers + arrivals))
            if self.now > until:
                return
            while self.queue and self.queue[0][0] <= self.now:
                _, _, to, src, data = heapq.heappop(self.queue)
                to.core.receive_untrusted(data, src, self.now)
            for host in self.hosts:
                self.flush(host)


def host(ip: str, port: int, nat: NatKind | None, seed: int) -> Host:
    rng = random.Random(seed)
    core = PunchCore(KEY, wall_offset=WALL, rng=rng.randbytes)
    if nat is None:
        return Host(core, (ip, port))
    return Host(core, ("10.0.0.2", port), Nat(ip, nat, random.Random(seed + 1000)))


def pair(
    nat_a: NatKind | None,
    nat_b: NatKind | None,
    seed: int = 1,
    *,
    hint_a: NatHint | None = None,
    hint_b: NatHint | None = None,
    b_late: float = 0.0,
) -> tuple[Internet, Host, Host]:
    """alice and bob exchange their observed addresses (as a relay would) and punch."""
    alice = host("203.0.113.11", 40001, nat_a, 2 * seed)
    bob = host("203.0.113.12", 40002, nat_b, 2 * seed + 1)
    net = Internet(alice, bob)
    alice_seen, bob_seen = alice.observed(), bob.observed()
    alice.core.add_remote(bob_seen, "relay", 0.0, peer_nat=hint_a)
    bob.core.add_remote(alice_seen, "relay", b_late, peer_nat=hint_b)
    return net, alice, bob


def validated(h: Host) -> Validated | None:
    found = [e for e in h.events if isinstance(e, Validated)]
    assert len(found) <= 1  # nominated once
    return found[0] if found else None


def test_open_internet_validates_both_sides_in_one_round_trip() -> None:
    net, alice, bob = pair(None, None)
    net.run()
    for me, other in ((alice, bob), (bob, alice)):
        v = validated(me)
        assert v is not None and v.addr == other.local
        assert v.rtt == pytest.approx(RTT)
    assert len(net.sent) < 10


@pytest.mark.parametrize("b_late", [0.0, 0.3, 3.0])
def test_two_eim_nats_validate_within_a_few_rtts_of_the_later_peer(b_late: float) -> None:
    net, alice, bob = pair("eim", "eim", b_late=b_late)
    net.run()
    va, vb = validated(alice), validated(bob)
    assert va is not None and vb is not None
    assert va.addr == ("203.0.113.12", 40002)
    assert vb.addr == ("203.0.113.11", 40001)
    assert max(alice.event_times + bob.event_times) <= b_late + 3 * RTT
    assert alice.core.budget_used("peer") == bob.core.budget_used("peer") == 0


def test_two_eim_nats_finish_promptly_when_bob_starts_late() -> None:
    """Bob's first probe opens his pinhole; alice answers, then her triggered check passes."""
    alice = host("203.0.113.11", 40001, "eim", 5)
    bob = host("203.0.113.12", 40002, "eim", 6)
    net = Internet(alice, bob)
    alice.core.add_remote(bob.observed(), "relay", 0.0)
    net.run(until=0.3)
    assert validated(alice) is None
    bob.core.add_remote(alice.observed(), "relay", net.now)
    start = net.now
    while validated(alice) is None or validated(bob) is None:
        net.run(until=net.now + 0.001)
        assert net.now < start + 3 * RTT
    assert alice.core.budget_used("peer") == 0


def test_eim_against_a_sequential_edm_is_found_by_the_port_window() -> None:
    net, alice, bob = pair("eim", "edm-seq", hint_a="dependent")
    net.run()
    va, vb = validated(alice), validated(bob)
    assert va is not None and vb is not None
    assert va.source == "predicted"
    assert va.addr[1] != bob.observed()[1]
    assert 0 < alice.core.budget_used("peer") <= 1 + SPRAY_RATE * RTT + 1  # sent before the ACK
    assert net.now < SPRAY_DELAY + 1.0


def run_edm(nat_a: NatKind, seed: int) -> tuple[bool, Host, Host]:
    net, alice, bob = pair(nat_a, "edm", seed, hint_a="dependent", hint_b="independent")
    net.run()
    for h in (alice, bob):
        assert h.core.budget_used("peer") <= SPRAY_BUDGET
        assert h.core.counters["spray_sent"] <= SPRAY_BUDGET
    return validated(alice) is not None and validated(bob) is not None, alice, bob


def test_eim_against_a_random_edm_rarely_wins_and_never_exceeds_the_budget() -> None:
    """The odds are SPRAY_BUDGET / 64512 = 1.6 % per attempt; 30 seeds expect ~0.5 wins."""
    wins = 0
    for seed in range(30):
        ok, alice, bob = run_edm("eim", seed)
        wins += ok
        if not ok:
            assert alice.core.budget_used("peer") == SPRAY_BUDGET
            assert any(isinstance(e, GaveUp) for e in alice.events)
            assert any(isinstance(e, GaveUp) for e in bob.events)
            assert bob.core.counters["probes_sent"] <= MAX_TRIES + SPRAY_BUDGET
    assert wins <= 5


def test_eim_against_a_random_edm_wins_when_a_random_guess_is_right() -> None:
    """Replay a lost attempt with bob's NAT rigged to pick alice's 500th guess for her."""
    net, alice, bob = pair("eim", "edm", 3, hint_a="dependent")
    net.run()
    assert validated(alice) is None
    guesses = [dst[1] for h, dst in net.sent if h is alice and dst != bob.observed()]
    target = guesses[500]
    net, alice, bob = pair("eim", "edm", 3, hint_a="dependent")
    assert bob.nat is not None
    bob.nat.forced[alice.observed()] = target
    net.run()
    va = validated(alice)
    assert va is not None and va.addr == ("203.0.113.12", target)
    assert va.source == "predicted"
    assert validated(bob) is not None
    assert 501 <= alice.core.budget_used("peer") <= 501 + SPRAY_RATE * RTT + 1


def test_two_random_edm_nats_never_connect_and_both_give_up() -> None:
    for seed in range(5):
        ok, alice, _bob = run_edm("edm", seed)
        assert not ok
        assert any(isinstance(e, GaveUp) for e in alice.events)


def test_without_a_hint_prediction_starts_once_the_ordinary_checks_ran_out() -> None:
    net, alice, _bob = pair("eim", "edm-seq")
    net.run()
    va = validated(alice)
    assert va is not None and va.source == "predicted"
    first_spray = next(i for i, (h, dst) in enumerate(net.sent) if dst[1] not in (40001, 20001))
    ordinary = [dst for h, dst in net.sent[:first_spray] if h is alice]
    assert len(ordinary) == MAX_TRIES
