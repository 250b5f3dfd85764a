"""The WAN half of a node, sans-IO: STUN, assist relays and hole punching behind one interface.

Theory of operation
-------------------
The node's one UDP socket carries, besides p2pd's own packets, three kinds of WAN control
traffic, told apart by content (docs/protocol.md, "Demultiplexing"): STUN answers
(:mod:`transports.stun`), relay frames 0x07 (:mod:`transports.relay_client`) and punch
probes 0x08 (:mod:`transports.punch`).  :class:`WanCore` owns those three cores, routes each
datagram to its core, and turns their events into what the node acts on:

* :class:`NewCandidate` - an address at which a peer may answer: a punched address the
  checks validated, or the *relayed path* to a peer, named by a virtual address
  (:mod:`p2pd.vaddr`).  The node races it like any other candidate.
* :class:`OwnAddress` - an address at which *we* can be reached (our public address as a
  STUN server or relay saw it, a port mapping): told to peers in ``cands`` and offers.
* :class:`OpenTcp` - a relay did not answer over UDP in time: reach it over TCP (UDP may be
  blocked here).  The node opens the link and calls :meth:`WanCore.relay_tcp_up`.

Each relay has up to two registrations, one per transport; a peer relayed through the TCP
registration is on path ``tcp``, through the UDP one on path ``relay``.  The relay number in
a virtual address is ``2 * relay index + transport`` (0 UDP, 1 TCP).

Like every core it takes ``now`` (monotonic) and ``wall`` (Unix time) and never reads a clock.
"""

from __future__ import annotations

import collections
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from p2pd import vaddr
from p2pd.derive import Params
from p2pd.errors import LocalError
from p2pd.subkeys import punch_key
from transports import relay_client
from transports.base import Addr, Candidate, Path
from transports.natclass import NatClass
from transports.punch import GaveUp, PunchCore, Validated
from transports.relay_client import RelayClient
from transports.relay_wire import TYPE_RELAY
from transports.stun import Classified, Mapped, StunProber, is_stun

#: Type byte of punch probes.
TYPE_PUNCH: Final = 0x08
#: Seconds without a confirmed UDP registration before a relay is tried over TCP: one
#: REGISTER retry (relay_client.RETRY_INITIAL) and a half, so a lost first REGISTER alone
#: does not switch transports.
RELAY_TCP_AFTER: Final = 1.5
#: Seconds between STUN rounds: NAT mappings and public addresses change (DHCP, roaming).
STUN_REFRESH: Final = 300.0
#: Paths of a peer's own addresses that hole punching checks.
PUNCHABLE: Final = frozenset({"lan", "mapped", "direct", "punched"})
#: Remembered addresses per peer, and peers remembered, for re-punching (bounded memory).
MAX_ENTRIES: Final = 16
MAX_PEER_ENTRIES: Final = 64
#: Transport bit in a virtual relay number.
_UDP, _TCP = 0, 1


@dataclass(frozen=True, slots=True)
class UdpRoute:
    """Send on the node's UDP socket to ``addr``."""

    addr: Addr


@dataclass(frozen=True, slots=True)
class TcpRoute:
    """Send framed on TCP link ``link``."""

    link: int


Route = UdpRoute | TcpRoute


@dataclass(frozen=True, slots=True)
class NewCandidate:
    candidate: Candidate


@dataclass(frozen=True, slots=True)
class OwnAddress:
    """We can be reached at ``addr``: ``path`` is how a peer would label it."""

    addr: Addr
    path: Path
    source: str


@dataclass(frozen=True, slots=True)
class OpenTcp:
    relay: int
    addr: Addr


WanEvent = NewCandidate | OwnAddress | OpenTcp


@dataclass(slots=True)
class _Relay:
    index: int
    addr: Addr
    udp: RelayClient
    tcp_due: float
    tcp: RelayClient | None = None
    tcp_link: int | None = None
    tcp_asked: bool = False


@dataclass(slots=True)
class _Own:
    by_addr: dict[Addr, OwnAddress] = field(default_factory=dict)


class WanCore:
    """See the module docstring."""

    def __init__(
        self,
        params: Params,
        *,
        stun: Sequence[Addr],
        assists: Sequence[Addr],
        tcp: bool,
        now: float,
        wall: float,
        local: Sequence[Addr] = (),
        local_port: int | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._params = params
        self._tcp_allowed = tcp
        self._rng = rng
        self.counters: collections.Counter[str] = collections.Counter()
        self._events: collections.deque[WanEvent] = collections.deque()
        self._out: list[tuple[bytes, Route]] = []
        self.stun = (
            StunProber(stun, now, local=local, local_port=local_port, rng=rng) if stun else None
        )
        self._stun_due = now + STUN_REFRESH
        self.punch = PunchCore(punch_key(params.tag_key), wall_offset=wall - now, rng=rng)
        self._relays = [
            _Relay(
                i,
                addr,
                RelayClient(addr, params.tag_key, now, wall, rng=rng),
                now + RELAY_TCP_AFTER,
            )
            for i, addr in enumerate(assists)
        ]
        self._relay_by_addr = {relay.addr: relay for relay in self._relays}
        self._relay_by_link: dict[int, _Relay] = {}
        self._own = _Own()
        self._peer_entries: dict[str, list[tuple[str, Addr]]] = {}
        self.nat: NatClass | None = None
        self.mapped: Addr | None = None

    def __repr__(self) -> str:
        return f"WanCore(relays={len(self._relays)}, stun={self.stun is not None})"

    # -- demultiplexing --------------------------------------------------------------

    @staticmethod
    def claims(data: bytes) -> bool:
        """Whether a datagram on the UDP socket is WAN control traffic (not p2pd's own)."""
        return bool(data) and (data[0] in (TYPE_RELAY, TYPE_PUNCH) or is_stun(data))

    def receive_udp(
        self, data: bytes, addr: Addr, now: float, wall: float
    ) -> list[tuple[bytes, Addr]]:
        """Consume one WAN datagram; returns relayed p2pd datagrams with virtual sources."""
        if is_stun(data):
            if self.stun is None or not self.stun.receive_untrusted(data, addr, now):
                self.counters["drop_stun"] += 1
            self._drain_stun()
            return []
        if data[0] == TYPE_PUNCH:
            if not self.punch.receive_untrusted(data, addr, now):
                self.counters["drop_punch"] += 1
            self._drain_punch()
            return []
        relay = self._relay_by_addr.get(addr)
        if relay is None:
            self.counters["drop_relay_unknown_source"] += 1
            return []
        return self._on_relay(relay, _UDP, data, now, wall)

    def receive_tcp(
        self, link: int, data: bytes, now: float, wall: float
    ) -> list[tuple[bytes, Addr]] | None:
        """A datagram on a TCP link: consumed if the link is a relay's (None otherwise)."""
        relay = self._relay_by_link.get(link)
        if relay is None or relay.tcp is None:
            return None
        if data[:1] != bytes([TYPE_RELAY]):
            self.counters["drop_relay_tcp_garbage"] += 1
            return []
        return self._on_relay(relay, _TCP, data, now, wall)

    def _on_relay(
        self, relay: _Relay, transport: int, data: bytes, now: float, wall: float
    ) -> list[tuple[bytes, Addr]]:
        client = relay.tcp if transport == _TCP else relay.udp
        assert client is not None  # receive_tcp checked
        inner: list[tuple[bytes, Addr]] = []
        number = 2 * relay.index + transport
        for event in client.receive_untrusted(data, now, wall):
            if isinstance(event, relay_client.Delivered):
                inner.append((event.payload, vaddr.relay_addr(number, event.slot)))
            elif isinstance(event, relay_client.PeerSeen):
                path: Path = "tcp" if transport == _TCP else "relay"
                self._events.append(
                    NewCandidate(Candidate(vaddr.relay_addr(number, event.slot), path, now))
                )
                self._punch_to(event.addr, "relay", now, peer=f"relay{number}:{event.slot}")
            elif isinstance(event, relay_client.Registered) and transport == _UDP:
                self._own_address(event.reflexive_addr, "punched", "relay")
        self._queue_relay(relay)
        return inner

    # -- output ----------------------------------------------------------------------

    def outbound(self, data: bytes, addr: Addr) -> tuple[bytes, Route] | None:
        """How to send a p2pd datagram to a virtual address; None if the path is gone."""
        target = vaddr.parse(addr)
        if isinstance(target, (vaddr.TcpPath, vaddr.TorPath)):
            return data, TcpRoute(target.link)
        if target is None:
            return data, UdpRoute(addr)
        index, transport = divmod(target.relay, 2)
        if index >= len(self._relays):
            return None
        relay = self._relays[index]
        if transport == _UDP:
            return relay.udp.wrap(target.slot, data), UdpRoute(relay.addr)
        if relay.tcp is None or relay.tcp_link is None:
            return None
        return relay.tcp.wrap(target.slot, data), TcpRoute(relay.tcp_link)

    def path_of(self, addr: Addr) -> Path | None:
        """``relay``, ``tcp`` or ``tor`` for a virtual address, None for a real one."""
        target = vaddr.parse(addr)
        if target is None:
            return None
        if isinstance(target, vaddr.TorPath):
            return "tor"
        if isinstance(target, vaddr.TcpPath):
            return "tcp"
        return "tcp" if target.relay % 2 == _TCP else "relay"

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Route]]:
        if self.stun is not None:
            self._out += [(d, UdpRoute(a)) for d, a in self.stun.datagrams_to_send(now)]
        self._out += [(d, UdpRoute(a)) for d, a in self.punch.datagrams_to_send(now)]
        self._drain_punch()
        for relay in self._relays:
            self._queue_relay(relay)
        out, self._out = self._out, []
        return out

    def _queue_relay(self, relay: _Relay) -> None:
        self._out += [(frame, UdpRoute(relay.addr)) for frame in relay.udp.datagrams_to_send()]
        if relay.tcp is not None and relay.tcp_link is not None:
            route = TcpRoute(relay.tcp_link)
            self._out += [(frame, route) for frame in relay.tcp.datagrams_to_send()]

    def next_event(self) -> WanEvent | None:
        return self._events.popleft() if self._events else None

    # -- time ------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        timers: list[float | None] = [self.punch.get_timer()]
        if self.stun is not None:
            timers += [self.stun.get_timer(), self._stun_due]
        for relay in self._relays:
            timers.append(relay.udp.get_timer())
            if relay.tcp is not None:
                timers.append(relay.tcp.get_timer())
            if not relay.tcp_asked and self._tcp_allowed:
                timers.append(relay.tcp_due)
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float, wall: float) -> None:
        if self.stun is not None:
            stun_timer = self.stun.get_timer()
            if stun_timer is not None and now >= stun_timer:
                self.stun.handle_timer(now)
            if now >= self._stun_due:
                self._stun_due = now + STUN_REFRESH
                self.stun.restart(now)
            self._drain_stun()
        punch_timer = self.punch.get_timer()
        if punch_timer is not None and now >= punch_timer:
            self.punch.handle_timer(now)
        self._drain_punch()
        for relay in self._relays:
            if now >= relay.udp.get_timer():
                relay.udp.handle_timer(now, wall)
            if relay.tcp is not None and now >= relay.tcp.get_timer():
                relay.tcp.handle_timer(now, wall)
            if (
                self._tcp_allowed
                and not relay.tcp_asked
                and now >= relay.tcp_due
                and not relay.udp.registered
            ):
                relay.tcp_asked = True
                self.counters["relay_tcp_fallback"] += 1
                self._events.append(OpenTcp(relay.index, relay.addr))
            elif relay.udp.registered:
                relay.tcp_asked = True  # UDP works: TCP is not needed for this relay

    # -- TCP links to relays ---------------------------------------------------------

    def relay_tcp_up(self, index: int, link: int, now: float, wall: float) -> None:
        """The TCP link asked for by OpenTcp(index) is connected."""
        relay = self._relays[index]
        relay.tcp = RelayClient(relay.addr, self._params.tag_key, now, wall, rng=self._rng)
        relay.tcp_link = link
        self._relay_by_link[link] = relay
        self._queue_relay(relay)

    def link_closed(self, link: int) -> None:
        relay = self._relay_by_link.pop(link, None)
        if relay is not None:
            relay.tcp = relay.tcp_link = None
            relay.tcp_asked = False  # may be asked again at the next timer

    def is_relay_link(self, link: int) -> bool:
        return link in self._relay_by_link

    # -- candidates ------------------------------------------------------------------

    def peer_candidates(self, peer: str, entries: Sequence[tuple[str, Addr]], now: float) -> None:
        """A connected peer's own addresses (``cands``): check them for a direct path."""
        self._peer_entries[peer] = [(p, a) for p, a in entries if p in PUNCHABLE][:MAX_ENTRIES]
        if len(self._peer_entries) > MAX_PEER_ENTRIES:
            del self._peer_entries[next(iter(self._peer_entries))]
        for path, addr in entries:
            if path in PUNCHABLE:
                self._punch_to(addr, path, now, peer=peer)

    def repunch(self, now: float) -> None:
        """Check every known peer address again (a peer is still only relayed)."""
        for relay in self._relays:
            for transport, client in ((_UDP, relay.udp), (_TCP, relay.tcp)):
                if client is None:
                    continue
                number = 2 * relay.index + transport
                for slot, addr in client.peers.items():
                    name = f"relay{number}:{slot}"
                    self.punch.stop(name)
                    self._punch_to(addr, "relay", now, peer=name)
        for name, entries in self._peer_entries.items():
            self.punch.stop(name)
            for path, addr in entries:
                self._punch_to(addr, path, now, peer=name)
        self.counters["repunch"] += 1

    def _punch_to(self, addr: Addr, source: str, now: float, *, peer: str) -> None:
        try:
            ipaddress.ip_address(addr[0])
            self.punch.add_remote(addr, source, now, peer=peer)
        except (LocalError, ValueError):
            self.counters["punch_refused"] += 1
        self._drain_punch()

    def set_mapped(self, addr: Addr | None) -> None:
        """The gateway port mapping (portmap), or None when it is gone."""
        self.mapped = addr
        if addr is not None:
            self._own_address(addr, "mapped", "portmap")

    def own_addresses(self) -> list[OwnAddress]:
        return list(self._own.by_addr.values())

    def _own_address(self, addr: Addr, path: Path, source: str) -> None:
        known = self._own.by_addr.get(addr)
        if known is not None and (known.path in ("mapped", path)):
            return
        own = OwnAddress(addr, path, source)
        self._own.by_addr[addr] = own
        self._events.append(own)

    def _drain_stun(self) -> None:
        if self.stun is None:
            return
        while (event := self.stun.next_event()) is not None:
            if isinstance(event, Mapped):
                self._own_address(event.mapped, "punched", "stun")
            elif isinstance(event, Classified):
                self.nat = event.result

    def _drain_punch(self) -> None:
        while (event := self.punch.next_event()) is not None:
            if isinstance(event, Validated):
                self.counters["punch_validated"] += 1
                self._events.append(NewCandidate(Candidate(event.addr, "punched", 0.0)))
            elif isinstance(event, GaveUp):
                self.counters["punch_gave_up"] += 1

    def all_counters(self) -> collections.Counter[str]:
        """Our counters and every sub-core's, prefixed by the core's name."""
        merged = collections.Counter(self.counters)
        merged.update({f"punch_{k}": v for k, v in self.punch.counters.items()})
        if self.stun is not None:
            merged.update({f"stun_{k}": v for k, v in self.stun.counters.items()})
        for relay in self._relays:
            for client in (relay.udp, relay.tcp):
                if client is not None:
                    merged.update({f"relay_{k}": v for k, v in client.counters.items()})
        return merged

    def settled(self) -> bool:
        """Whether every STUN server and relay has answered or given up (for offers)."""
        stun_done = self.stun is None or self.stun.done
        return stun_done and all(r.udp.registered or r.tcp_asked for r in self._relays)

    def status(self) -> dict[str, object]:
        """What ``p2pd status`` shows of the WAN side."""
        return {
            "nat": self.nat.as_dict() if self.nat is not None else None,
            "mapped": f"{self.mapped[0]}:{self.mapped[1]}" if self.mapped else None,
            "relays": [
                {
                    "addr": f"{r.addr[0]}:{r.addr[1]}",
                    "udp": r.udp.registered,
                    "tcp": r.tcp is not None and r.tcp.registered,
                    "peers": len(r.udp.peers) + (len(r.tcp.peers) if r.tcp else 0),
                }
                for r in self._relays
            ],
            "own": [f"{o.path} {o.addr[0]}:{o.addr[1]}" for o in self.own_addresses()],
        }
