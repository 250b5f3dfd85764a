"""The node's WAN glue: path labels, the ``cands`` exchange, WAN core events and timers, TCP
links, Tor streams and the port mapping, as a mixin of :class:`p2pd.node.Node`.

Why a mixin: these methods act on the node's own state (its peers, race and cores) at the
same points of its loop, but they are a subject of their own; keeping them here keeps
:mod:`p2pd.node` about moving datagrams.  Constants are explained where defined.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from functools import partial
from typing import Final

import trio

from p2pd import messages, vaddr
from p2pd.endpoint import Endpoint
from p2pd.node_tor import TorRunner
from p2pd.node_types import NodeConfig, NodeEvent, PathChanged, PeerState
from p2pd.pathbook import PathBook
from p2pd.reliable import Channel
from p2pd.udp import Addr
from p2pd.wan import NewCandidate, OpenTcp, OwnAddress, WanCore
from p2pd.wanio import WanIO
from transports.base import Candidate
from transports.lan import ipv4_interfaces
from transports.portmap import MAPPED, PortmapStatus, run_portmap
from transports.racer import RaceCore
from transports.tor_meet import TorStream

#: While a peer is reached only through a relay, punching is retried this often (a NAT or
#: firewall may open later; the session then moves to the direct path).
REPUNCH_INTERVAL: Final = 5.0
#: How often gather_addresses looks whether discovery has settled.
GATHER_POLL: Final = 0.05
#: Paths worth replacing by a punched one: they cost a third party, or are slow.
UPGRADABLE: Final = frozenset({"relay", "tcp", "tor"})


class WanPaths:
    """Mixed into Node; the attributes below are the node's (see Node.__init__)."""

    config: NodeConfig
    port: int
    counters: Counter[str]
    peers: dict[bytes, PeerState]
    paths: PathBook
    wan: WanCore | None
    portmap: PortmapStatus | None
    _io: WanIO | None
    _nursery: trio.Nursery | None
    _endpoint: Endpoint | None
    _race: RaceCore | None
    _kick: trio.Event
    _late: list[Addr]
    _held: list[tuple[float, Candidate]]
    _repunch_at: float
    _tcp_targets_at: float
    tor: TorRunner | None
    _tor_links: set[int]

    @property
    def tor_only(self) -> bool:
        raise NotImplementedError

    def _emit(self, event: NodeEvent) -> None:
        raise NotImplementedError

    def add_candidate(self, candidate: Candidate) -> None:
        raise NotImplementedError

    def wan_status(self) -> dict[str, object]:
        """NAT type, port mapping, relays and our public addresses, for ``p2pd status``."""
        status: dict[str, object] = dict(self.wan.status()) if self.wan is not None else {}
        status["tor_only"] = self.tor_only
        if self.tor is not None:
            status["tor"] = self.tor.status()
        if self.portmap is not None:
            mapping = self.portmap
            external = mapping.external
            status["portmap"] = {
                "state": mapping.state,
                "method": mapping.method,
                "external": f"{external[0]}:{external[1]}" if external else None,
            }
        return status

    def _label(self, addr: Addr) -> str:
        assert self.wan is not None
        held = self.portmap is not None and self.portmap.state == MAPPED
        self.paths.mapped = self.wan.mapped if held else None
        return self.paths.label(addr, self.wan.path_of(addr))

    def _relabel(self, peer_id: bytes, peer: PeerState) -> None:
        """Recompute a peer's path label; a change is reported as PathChanged."""
        path = self._label(peer.addr)
        if path != peer.path:
            old, peer.path = peer.path, path
            self._emit(PathChanged(peer_id, peer.fingerprint, old, path, peer.addr))
        if path in UPGRADABLE and not self.tor_only and self._repunch_at == math.inf:
            self._repunch_at = trio.current_time() + REPUNCH_INTERVAL

    def _own_entries(self) -> list[tuple[str, str, int]]:
        """Where we can be reached, for ``cands``: public addresses first, then LAN ones;
        none with ``--tor-only`` (our addresses are what Tor hides)."""
        assert self.wan is not None
        if self.tor_only:
            return []
        entries: list[tuple[str, str, int]] = [
            (own.path, own.addr[0], own.addr[1]) for own in self.wan.own_addresses()
        ]
        chosen = self.config.interfaces
        for _name, iface in ipv4_interfaces(chosen):
            # Loopback only when the user chose interfaces (a test, or a same-host setup).
            if chosen is not None or not iface.ip.is_loopback:
                entries.append(("lan", str(iface.ip), self.port))
        return entries[: messages.MAX_CANDIDATES]

    def own_candidates(self) -> list[Candidate]:
        """Where a peer may reach us (for offers), best first."""
        now = trio.current_time()
        found = [Candidate((host, port), path, now) for path, host, port in self._own_entries()]  # type: ignore[arg-type]
        return sorted(found, key=lambda c: c.rank)

    async def gather_addresses(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until STUN and the relays told us our public address."""
        assert self.wan is not None
        with trio.move_on_after(timeout):
            while not self.wan.settled():
                await trio.sleep(GATHER_POLL)

    def _send_cands(self, peer_id: bytes, channel: Channel, now: float) -> None:
        entries = self._own_entries()
        if entries:
            channel.send_message(messages.cands(entries), now)

    def _on_cands(self, peer: PeerState, entries: list[tuple[str, str, int]]) -> None:
        """The peer's own addresses: connect to mapped ones, punch to all of them (not with
        ``--tor-only``: a punch probe would tell the peer where we are)."""
        assert self.wan is not None
        if self.tor_only:
            self.counters["cands_ignored_tor_only"] += 1
            return
        now = trio.current_time()
        checked: list[tuple[str, Addr]] = []
        for path, host, port in entries:
            addr = (host, port)
            if path == "mapped":
                self.paths.note(addr, "mapped")
                if not vaddr.is_virtual(peer.addr) and self.paths.label(peer.addr) != "lan":
                    self._relabel_all()
                self.add_candidate(Candidate(addr, "mapped", now))
            checked.append((path, addr))
        self.wan.peer_candidates(peer.fingerprint, checked, now)
        self._kick.set()

    def _relabel_all(self) -> None:
        for peer_id, peer in self.peers.items():
            self._relabel(peer_id, peer)

    def _on_wan_event(self, event: object, now: float, wall: float) -> None:
        if isinstance(event, NewCandidate):
            self.add_candidate(event.candidate)
        elif isinstance(event, OwnAddress) and not self.tor_only:
            # Tell connected peers about a new address of ours (a STUN answer after connect).
            for peer in self.peers.values():
                if not peer.closed:
                    peer.channel.send_message(messages.cands(self._own_entries()), now)
        elif isinstance(event, OpenTcp) and self._io is not None:
            index = event.relay

            def connected(link: int | None) -> None:
                if link is None or self.wan is None:
                    self.counters["relay_tcp_failed"] += 1
                    return
                self.wan.relay_tcp_up(index, link, trio.current_time(), time.time())
                self._kick.set()

            self._io.connect_soon(event.addr, connected)

    def _wan_timers(self, now: float, wall: float) -> None:
        assert self.wan is not None and self._race is not None
        wan_timer = self.wan.get_timer()
        if wan_timer is not None and wan_timer <= now:
            self.wan.handle_timer(now, wall)
        if self._held and min(due for due, _ in self._held) <= now:
            ready = [c for due, c in self._held if due <= now]
            self._held = [(due, c) for due, c in self._held if due > now]
            for candidate in ready:
                if not self._race.over:
                    self.add_candidate(candidate)
        if now >= self._repunch_at:
            self._repunch_at = math.inf
            if any(p.path in UPGRADABLE for p in self.peers.values()):
                self.wan.repunch(now)
                self._repunch_at = now + REPUNCH_INTERVAL
        if now >= self._tcp_targets_at:
            self._tcp_targets_at = math.inf
            if not self.peers:
                for target in self.config.targets:
                    self._connect_tcp(target)

    def _connect_tcp(self, addr: Addr) -> None:
        """Reach ``addr`` over TCP (UDP blocked?): a link, then a handshake on it."""
        assert self._io is not None

        def connected(link: int | None) -> None:
            if link is None or self._endpoint is None:
                self.counters["tcp_connect_failed"] += 1
                return
            self._late.append(vaddr.tcp_addr(link))
            self._kick.set()

        self._io.connect_soon(addr, connected)

    def _on_tcp_datagram(self, link: int, data: bytes, peer_addr: Addr) -> None:
        if self._endpoint is None or self.wan is None:
            return
        now, wall = trio.current_time(), time.time()
        if link in self._tor_links:
            self._endpoint.receive_datagram(data, vaddr.tor_addr(link), now, wall)
            self._kick.set()
            return
        inner = self.wan.receive_tcp(link, data, now, wall)
        if inner is None:
            self._endpoint.receive_datagram(data, vaddr.tcp_addr(link), now, wall)
        else:
            for payload, source in inner:
                self._endpoint.receive_datagram(payload, source, now, wall)
        self._kick.set()

    def _on_link_closed(self, link: int) -> None:
        if link in self._tor_links:
            self._tor_links.discard(link)
            if self._endpoint is not None:
                self._endpoint.path_closed(vaddr.tor_addr(link))
            if self.tor is not None:
                self.tor.poke()
        elif self.wan is not None:
            self.wan.link_closed(link)

    def _on_tor_stream(self, found: TorStream) -> None:
        """The meeting at the onion gave a stream to the other peer: run it as a link; the
        end that connected starts the handshake on it."""
        assert self._io is not None
        link = self._io.tcp.adopt(found.stream, inbound=not found.outbound)
        if link is None:
            self.counters["tor_link_refused"] += 1
            return
        self._tor_links.add(link)
        if found.outbound:
            self.add_candidate(Candidate(vaddr.tor_addr(link), "tor", trio.current_time()))
        self._kick.set()

    def _tor_needed(self) -> bool:
        """Meet at the onion only while nothing else connects us and no Tor stream is open."""
        live = any(not peer.closed for peer in self.peers.values())
        return not live and not self._tor_links

    def _start_portmap(self) -> None:
        """Ask the gateway for a mapping of our port (UDP and TCP), kept until cancelled."""
        assert self._nursery is not None
        self.portmap = PortmapStatus()
        self._nursery.start_soon(
            partial(
                run_portmap,
                self.port,
                self._on_mapped,
                counters=self.counters,
                status=self.portmap,
            )
        )

    def _on_mapped(self, candidate: Candidate) -> None:
        """Our gateway maps ``candidate.addr`` to us: tell peers, label sessions."""
        if self.wan is not None:
            self.wan.set_mapped(candidate.addr)
            self._relabel_all()
            self._kick.set()
