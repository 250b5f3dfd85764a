"""Hole punching: ICE-style connectivity checks from our one socket, and port prediction.

Theory of operation
-------------------
We have one UDP socket, hence one host candidate.  The peer's candidates arrive over time
(a relay's PeerSeen, an offer, a STUN or port-mapping result) through :meth:`add_remote`.
For every remote candidate the core sends PROBE frames (:mod:`transports.punch_wire`) on a
backoff schedule, :data:`FIRST_INTERVAL` doubling to :data:`MAX_INTERVAL`, at most
:data:`MAX_TRIES` per candidate.  Both peers do this at once, which is what opens a NAT
pinhole on each side: a Linux-like NAT lets an inbound datagram in only after an outbound
one to that exact ``ip:port`` (RFC 4787 address-and-port-dependent filtering).

Every valid PROBE is answered with an ACK to its source address.  A valid PROBE from an
address we do not know is itself a new candidate (ICE's peer-reflexive candidate): it is
added with source ``"prflx"``, and any PROBE triggers an immediate probe of its source
(ICE's triggered check), so the second side validates one round trip after the first
probe gets through.

Nomination: a candidate is *validated* when an ACK arrives that echoes one of our probe
transactions and comes from the very address the probe went to (RFC 8445's symmetry
check: the pair works in both directions).  A PROBE alone never validates: it proves one
direction only, and it could be a replay.  The **first validated address of a peer is
nominated**: the core emits :class:`Validated` once, stops probing that peer (it keeps
answering its probes, which the peer still needs) and the node runs the Noise handshake to
that address as path ``punched``.  An ACK from another address than the probe's (a peer
behind an endpoint-dependent NAT answering through a new mapping) validates nothing but
adds that address as a candidate.  When every check of a peer has run out and nothing was
validated, the core emits :class:`GaveUp`; a later :meth:`add_remote` revives the peer.

Peers: candidates belong to a peer the caller names (``peer=``, by default ``"peer"``);
budgets, nomination and :meth:`stop` are per peer.  A valid PROBE is matched to a peer by
its sender id once known, else by its source address or IP; failing that it starts a
learned peer ``"prflx-<sender id hex>"`` (a holder of the passphrase who found us first).

Port prediction
---------------
Against an endpoint-dependent ("symmetric") NAT the peer's port toward *us* differs from
the one a relay or STUN server saw.  When told ``peer_nat="dependent"``, or when the
ordinary probes to a candidate all went unanswered (:data:`PREDICT_AFTER_TRIES`), the
core sprays probes at the candidate's IP: first the ports within :data:`SPRAY_WINDOW` of
the observed one (NATs that allocate sequentially land there), then distinct random ports
in :data:`SPRAY_PORT_LOW`..65535.  It sends at most :data:`SPRAY_RATE` spray probes per
second in total and at most :data:`SPRAY_BUDGET` per peer per attempt (:meth:`budget_used`).

The odds, honestly.  A port-randomising NAT (Linux ``masquerade random,fully-random``)
picks the peer's mapping uniformly among ``N = 64512`` ports, and with one socket on each
side there is exactly one right port.  When our side is endpoint-independent, ``B``
distinct guesses hit it with probability ``B / N``: 1.6 % for the default budget of 1024
(about 10 s at 100/s; the NAT simulation of tests/unit/test_punch_nat.py won 15 of 1000
seeded attempts), 6.3 % for 4096, 50 % for 32256 (over five minutes), certainty only
for all 64512.  When both sides are endpoint-dependent, every spray probe leaves through a
fresh mapping of ours, so the peer's NAT never sees the source it expects: the odds are
nil, and only the relay helps.  Prediction pays off against sequential allocators, and it
is bounded so it never turns into a port scan.

Known limit, seen in the lab with real Linux masquerade: a router that *accepts* datagrams
for its own WAN address (no input firewall) records our early probe as a connection to
itself; when its LAN host then sends to us, masquerade finds the source port taken and maps
it to a random one, so an endpoint-independent router behaves like a symmetric one for this
pair.  Home routers drop unsolicited WAN input before conntrack keeps it; the remedy for
the others (first probes with a TTL that dies before the peer's router) is not done here.

Time: ``now`` is the node's monotonic clock; the frames' MAC needs Unix time for its epoch,
which the core computes as ``now + wall_offset`` (the driver measures the offset once), so
the core never reads a clock.  Usage: :meth:`add_remote`; feed every 0x08 datagram to
:meth:`receive_untrusted`; whenever ``now >= get_timer()`` and after every receive, send
what :meth:`datagrams_to_send` returns; read :meth:`next_event` until None.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from p2pd.errors import BadFrame, LocalError
from transports.base import Addr
from transports.punch_wire import (
    KIND_ACK,
    KIND_PROBE,
    NO_ECHO,
    PUNCH_KEY_SIZE,
    SENDER_ID_SIZE,
    TXN_SIZE,
    Frame,
    decode_untrusted,
    encode,
)

#: First retransmission interval: 50 ms, about one RTT across a continent, so a lost
#: first probe costs little (RFC 8445 paces checks at Ta = 50 ms too).
FIRST_INTERVAL = 0.05
#: Intervals double up to one second: a peer that learns our candidate late (a relay's
#: PeerSeen seconds after ours) still meets probes at least every second.
MAX_INTERVAL = 1.0
#: Probes per candidate: 0.05+0.1+...+1 s spans about 7.5 s, covering a peer that starts
#: several seconds after us, then the candidate is abandoned.
MAX_TRIES = 12
#: Seconds to wait for an ACK after a candidate's last probe (or the last spray probe)
#: before the candidate counts as failed: beyond any sane RTT.
FINAL_WAIT = 1.0
#: Unanswered tries to one candidate before port prediction starts without a hint: all of
#: them (about 7.5 s), because a peer that merely learned our candidate late (a relay's
#: PeerSeen arriving seconds apart) is far more common than a symmetric NAT, and a spray
#: costs up to :data:`SPRAY_BUDGET` packets.
PREDICT_AFTER_TRIES = MAX_TRIES
#: With ``peer_nat="dependent"``, seconds before spraying: the peer's own probes must first
#: create the mapping we are guessing (a hit before that is wasted).
SPRAY_DELAY = 0.5
#: Spray probes per second, all peers together: 100 x 44 bytes is 4.4 kB/s, and
#: no NAT's connection-tracking table fills up from it.
SPRAY_RATE = 100.0
#: Spray probes per peer per attempt: bounds the packets (1024 x 44 B = 45 kB, ~10 s).
SPRAY_BUDGET = 1024
#: Ports either side of the observed port tried first (sequential allocators).
SPRAY_WINDOW = 64
#: Random guesses come from the range Linux NAT remaps unprivileged ports into.
SPRAY_PORT_LOW = 1024
PORT_MAX = 65535
#: Peers and candidates per peer, to bound memory whatever the network sends.
MAX_PEERS = 16
MAX_CANDIDATES_PER_PEER = 16
#: Our probe transactions remembered for matching ACKs (a full spray plus checks).
MAX_OUTSTANDING = 4 * SPRAY_BUDGET
#: Seconds a probe's transaction is remembered: a later ACK validates nothing.
TXN_LIFETIME = 10.0
#: Remembered PROBE transactions, dropped when seen again (replays within the MAC epoch):
#: more than a whole captured spray, so one cannot be cycled through us.  What a
#: replay can still cause is bounded by the peer and candidate caps.
SEEN_TXNS = 4 * SPRAY_BUDGET
#: Sources of candidates that are never sprayed: a LAN address is not behind the NAT, and a
#: peer-reflexive address is the exact mapping a probe came from, so its neighbours are not.
NO_SPRAY_SOURCES = frozenset({"lan", "prflx"})
#: Name of the peer when the caller knows only one.
DEFAULT_PEER = "peer"
#: Prefix of peers the core creates for probes from unknown senders.
PRFLX_PEER_PREFIX = "prflx-"

#: Source reported in :class:`Validated` when a spray probe found the address.
PREDICTED = "predicted"

NatHint = Literal["independent", "dependent"]
Rng = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class Validated:
    """``addr`` answered our probe from where we sent it: nominate it (path ``punched``)."""

    peer: str
    addr: Addr
    rtt: float
    source: str


@dataclass(frozen=True, slots=True)
class GaveUp:
    """Every check of ``peer`` ran out without an ACK."""

    peer: str
    probes_sent: int
    budget_used: int


Event = Validated | GaveUp


@dataclass(slots=True)
class _Check:
    addr: Addr
    source: str
    next_at: float | None
    tries: int = 0
    interval: float = FIRST_INTERVAL
    done_at: float = 0.0


@dataclass(slots=True)
class _Spray:
    ip: str
    ports: Iterator[int]
    start_at: float
    done_at: float | None = None


@dataclass(slots=True)
class _Peer:
    name: str
    nat: NatHint | None
    checks: dict[Addr, _Check] = field(default_factory=dict)
    nominated: Addr | None = None
    gave_up: bool = False
    sender: bytes | None = None
    spray: _Spray | None = None
    sprayed: bool = False
    probes_sent: int = 0
    budget_used: int = 0


def _check_addr(addr: Addr) -> Addr:
    host, port = addr
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port <= PORT_MAX:
        raise LocalError(f"not a (host, port) address: {addr!r}")
    return (host, port)


class PunchCore:
    """Sans-IO hole punching for one node socket; see the module docstring.

    ``counters``: ``probes_sent``, ``spray_sent``, ``acks_sent``, ``probes_received``,
    ``acks_received``, ``validated``, ``gave_up`` and ``drop_<reason>`` (``size``, ``header``,
    ``mac``, ``echo``, ``own``, ``replay``, ``unsolicited``, ``asymmetric``,
    ``peer_limit``, ``candidate_limit``).
    """

    def __init__(self, punch_key: bytes, *, wall_offset: float, rng: Rng = os.urandom) -> None:
        if len(punch_key) != PUNCH_KEY_SIZE:
            raise LocalError(f"punch key must be {PUNCH_KEY_SIZE} bytes, got {len(punch_key)}")
        self._key = punch_key
        self._wall_offset = wall_offset
        self._rng = rng
        self.sender_id = self._random(SENDER_ID_SIZE)
        self.counters: collections.Counter[str] = collections.Counter()
        self.reset()

    def __repr__(self) -> str:
        return f"PunchCore(peers={list(self._peers)}, counters={dict(self.counters)})"

    def reset(self) -> None:
        """Forget every peer, probe and event (counters and sender id stay)."""
        self._peers: dict[str, _Peer] = {}
        self._by_sender: dict[bytes, str] = {}
        self._outstanding: dict[bytes, tuple[str, Addr, float, str]] = {}
        self._seen: collections.deque[bytes] = collections.deque(maxlen=SEEN_TXNS)
        self._seen_set: set[bytes] = set()
        self._spray_next_at = 0.0
        self._spray_turn = 0
        self._out: list[tuple[bytes, Addr]] = []
        self._events: collections.deque[Event] = collections.deque()

    def stop(self, peer: str) -> None:
        """Stop punching to ``peer`` and forget it (a later candidate starts a new attempt)."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        if state.sender is not None:
            self._by_sender.pop(state.sender, None)
        self._outstanding = {t: o for t, o in self._outstanding.items() if o[0] != peer}

    def budget_used(self, peer: str) -> int:
        """Spray probes sent to ``peer`` in this attempt (never above :data:`SPRAY_BUDGET`)."""
        state = self._peers.get(peer)
        return 0 if state is None else state.budget_used

    def nominated(self, peer: str) -> Addr | None:
        """The address nominated for ``peer``, if any."""
        state = self._peers.get(peer)
        return None if state is None else state.nominated

    # --- input -------------------------------------------------------------------------

    def add_remote(
        self,
        addr: Addr,
        source: str,
        now: float,
        *,
        peer: str = DEFAULT_PEER,
        peer_nat: NatHint | None = None,
    ) -> bool:
        """Start checking ``addr`` of ``peer`` (learned from ``source``); False if nothing new."""
        addr = _check_addr(addr)
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= MAX_PEERS:
                # Peers the network made up yield to one the caller names.
                learned = [n for n in self._peers if n.startswith(PRFLX_PEER_PREFIX)]
                if not learned:
                    raise LocalError(f"already punching to {MAX_PEERS} peers")
                self.stop(learned[0])
            state = self._peers[peer] = _Peer(peer, peer_nat)
        elif peer_nat is not None:
            state.nat = peer_nat
        if state.nominated is not None:
            return False
        added = self._add_check(state, addr, source, now)
        if (
            added
            and state.nat == "dependent"
            and not state.sprayed
            and source not in NO_SPRAY_SOURCES
        ):
            self._start_spray(state, addr, now + SPRAY_DELAY)
        return added

    def receive_untrusted(self, data: bytes, addr: Addr, now: float) -> bool:
        """Handle a 0x08 datagram from ``addr``; True if it was a valid frame of another node.

        Never raises on network input: a bad frame is dropped and counted.
        """
        try:
            frame = decode_untrusted(self._key, data, now + self._wall_offset)
        except BadFrame as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            return False
        if frame.sender == self.sender_id:
            self.counters["drop_own"] += 1
            return False
        if frame.kind == KIND_PROBE:
            return self._on_probe(frame, addr, now)
        assert frame.kind == KIND_ACK
        return self._on_ack(frame, addr, now)

    # --- timers and output -------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has work next, or None while idle."""
        times: list[float] = []
        for state in self._peers.values():
            if state.nominated is not None or state.gave_up:
                continue
            times += [c.next_at for c in state.checks.values() if c.next_at is not None]
            spray = state.spray
            if spray is not None and spray.done_at is None:
                times.append(max(spray.start_at, self._spray_next_at))
            give_up_at = self._give_up_at(state)
            if give_up_at is not None:
                times.append(give_up_at)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Send every probe that is due, spray at the paced rate, and notice give-ups."""
        while self._outstanding:
            txn, (_, _, sent_at, _) = next(iter(self._outstanding.items()))
            if sent_at + TXN_LIFETIME > now:
                break
            del self._outstanding[txn]
        for state in list(self._peers.values()):
            if state.nominated is not None or state.gave_up:
                continue
            for check in state.checks.values():
                if check.next_at is not None and check.next_at <= now:
                    self._probe_check(state, check, now)
        self._spray(now)
        for state in list(self._peers.values()):
            if state.nominated is None and not state.gave_up and self._exhausted(state, now):
                state.gave_up = True
                self.counters["gave_up"] += 1
                self._events.append(GaveUp(state.name, state.probes_sent, state.budget_used))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        """Run due timers, then return (and forget) every datagram to send, with its address."""
        self.handle_timer(now)
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    # --- internals ---------------------------------------------------------------------

    def _random(self, size: int) -> bytes:
        value = self._rng(size)
        if len(value) != size:
            raise LocalError(f"rng returned {len(value)} bytes, expected {size}")
        return value

    def _send(self, kind: int, echo: bytes, addr: Addr, now: float) -> bytes:
        txn = self._random(TXN_SIZE)
        frame = Frame(kind, self.sender_id, txn, echo)
        self._out.append((encode(self._key, frame, now + self._wall_offset), addr))
        return txn

    def _send_probe(self, state: _Peer, addr: Addr, now: float, source: str) -> None:
        txn = self._send(KIND_PROBE, NO_ECHO, addr, now)
        if len(self._outstanding) >= MAX_OUTSTANDING:
            del self._outstanding[next(iter(self._outstanding))]
        self._outstanding[txn] = (state.name, addr, now, source)
        state.probes_sent += 1

    def _add_check(self, state: _Peer, addr: Addr, source: str, now: float) -> bool:
        if addr in state.checks:
            return False
        if len(state.checks) >= MAX_CANDIDATES_PER_PEER:
            self.counters["drop_candidate_limit"] += 1
            return False
        state.checks[addr] = _Check(addr, source, next_at=now)
        state.gave_up = False
        return True

    def _probe_check(self, state: _Peer, check: _Check, now: float) -> None:
        self._send_probe(state, check.addr, now, check.source)
        self.counters["probes_sent"] += 1
        check.tries += 1
        if check.tries >= MAX_TRIES:
            check.next_at = None
            check.done_at = now + FINAL_WAIT
        else:
            check.next_at = now + check.interval
            check.interval = min(2 * check.interval, MAX_INTERVAL)
        if (
            check.tries == PREDICT_AFTER_TRIES
            and not state.sprayed
            and check.source not in NO_SPRAY_SOURCES
        ):
            self._start_spray(state, check.addr, now)

    def _start_spray(self, state: _Peer, addr: Addr, start_at: float) -> None:
        state.sprayed = True
        state.spray = _Spray(addr[0], self._spray_ports(addr[1]), start_at)

    def _spray_ports(self, base: int) -> Iterator[int]:
        """Ports near ``base`` (nearest first), then distinct random ones; never ``base``."""
        tried = {base}
        for offset in range(1, SPRAY_WINDOW + 1):
            for port in (base + offset, base - offset):
                if 0 < port <= PORT_MAX and port not in tried:
                    tried.add(port)
                    yield port
        span = PORT_MAX - SPRAY_PORT_LOW + 1
        while len(tried) < span:
            port = SPRAY_PORT_LOW + int.from_bytes(self._random(4), "little") % span
            if port not in tried:
                tried.add(port)
                yield port

    def _spray(self, now: float) -> None:
        """Send one spray probe per 1/SPRAY_RATE s, taking the spraying peers in turn."""
        while self._spray_next_at <= now:
            active = [
                s
                for s in self._peers.values()
                if s.spray is not None
                and s.spray.done_at is None
                and s.nominated is None
                and s.spray.start_at <= now
            ]
            if not active:
                return
            state = active[self._spray_turn % len(active)]
            self._spray_turn += 1
            spray = state.spray
            assert spray is not None
            port = next(spray.ports, None)
            if port is not None:
                self._send_probe(state, (spray.ip, port), now, PREDICTED)
                state.budget_used += 1
                self.counters["spray_sent"] += 1
                self._spray_next_at = now + 1.0 / SPRAY_RATE
            if port is None or state.budget_used >= SPRAY_BUDGET:
                spray.done_at = now + FINAL_WAIT

    def _give_up_at(self, state: _Peer) -> float | None:
        """When ``state`` gives up if nothing more arrives; None while probes are pending."""
        if any(c.next_at is not None for c in state.checks.values()):
            return None
        ends = [c.done_at for c in state.checks.values()]
        if state.spray is not None:
            if state.spray.done_at is None:
                return None
            ends.append(state.spray.done_at)
        return max(ends, default=0.0)

    def _exhausted(self, state: _Peer, now: float) -> bool:
        give_up_at = self._give_up_at(state)
        return give_up_at is not None and give_up_at <= now

    def _peer_for(self, sender: bytes, addr: Addr) -> _Peer | None:
        name = self._by_sender.get(sender)
        if name is not None and name in self._peers:
            return self._peers[name]
        for state in self._peers.values():
            if addr in state.checks:
                return state
        for state in self._peers.values():
            if any(a[0] == addr[0] for a in state.checks):
                return state
        if len(self._peers) >= MAX_PEERS:
            return None
        name = PRFLX_PEER_PREFIX + sender.hex()
        state = self._peers[name] = _Peer(name, None)
        return state

    def _bind_sender(self, state: _Peer, sender: bytes) -> None:
        if state.sender is None and sender not in self._by_sender:
            state.sender = sender
            self._by_sender[sender] = state.name

    def _learn(self, state: _Peer, addr: Addr, now: float) -> None:
        """A valid frame came from ``addr``: make sure it is (re)checked at once."""
        if state.nominated is not None:
            return
        check = state.checks.get(addr)
        if check is None:
            self._add_check(state, addr, "prflx", now)
        elif check.next_at is None:
            check.next_at, check.tries, check.interval = now, 0, FIRST_INTERVAL
            state.gave_up = False
        else:
            check.next_at = min(check.next_at, now)

    def _on_probe(self, frame: Frame, addr: Addr, now: float) -> bool:
        if frame.txn in self._seen_set:
            self.counters["drop_replay"] += 1
            return False
        if len(self._seen) == SEEN_TXNS:
            self._seen_set.discard(self._seen[0])
        self._seen.append(frame.txn)
        self._seen_set.add(frame.txn)
        self.counters["probes_received"] += 1
        self._send(KIND_ACK, frame.txn, addr, now)
        self.counters["acks_sent"] += 1
        state = self._peer_for(frame.sender, addr)
        if state is None:
            self.counters["drop_peer_limit"] += 1
            return True
        self._bind_sender(state, frame.sender)
        self._learn(state, addr, now)
        return True

    def _on_ack(self, frame: Frame, addr: Addr, now: float) -> bool:
        outstanding = self._outstanding.get(frame.echo)
        if outstanding is None:
            self.counters["drop_unsolicited"] += 1
            return False
        name, sent_to, sent_at, source = outstanding
        state = self._peers[name]
        self.counters["acks_received"] += 1
        self._bind_sender(state, frame.sender)
        if addr != sent_to:
            self.counters["drop_asymmetric"] += 1
            self._learn(state, addr, now)
            return True
        del self._outstanding[frame.echo]
        if state.nominated is None:
            state.nominated = addr
            state.spray = None
            self.counters["validated"] += 1
            self._events.append(Validated(name, addr, now - sent_at, source))
        return True
