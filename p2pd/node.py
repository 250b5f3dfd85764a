"""The trio node: one UDP socket per passphrase driving the sans-IO cores.

Theory of operation
-------------------
The node owns nothing clever.  It moves bytes between the socket and three cores —
the :class:`~p2pd.endpoint.Endpoint` (handshakes, sessions, early drop), one
:class:`~p2pd.reliable.Channel` per connected peer (ordered, reliable messages), and the
LAN beacon core — and runs their timers.  After every input (a batch of datagrams, a
timer, a call from the application) :meth:`Node._pump` drains the cores' events and
output until everything is quiescent, then sends what they produced.

Discovery: LAN beacons and mDNS produce candidate addresses; the racer staggers
connection attempts and reports which path won and how fast.  A peer is its static key;
its address may change under it (roaming), the channel survives.  After a session
upgrades from Tor to a direct path the Tor stream stays open as its warm standby (see
:meth:`p2pd.peer.PeerTable.authenticated`), so a direct path that dies falls back to Tor
in seconds, without a new meeting at the onion.

Every task lives in the nursery of :meth:`Node.run`; cancelling it (Ctrl-C, SIGTERM,
the command being done) closes the socket and unregisters mDNS.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter

import trio

from p2pd import messages, vaddr
from p2pd.derive import Params
from p2pd.endpoint import (
    ConnectFailed,
    DataReceived,
    Endpoint,
    PeerAddressChanged,
    PeerConnected,
    PeerLost,
    Rekeyed,
)
from p2pd.errors import BadFrame, LocalError, single_errors
from p2pd.identity import Identity, fingerprint
from p2pd.node_tor import TorRunner
from p2pd.node_types import (
    Delivered,
    MessageIn,
    NodeConfig,
    NodeEvent,
    PathChanged,
    PeerDown,
    PeerState,
    PeerUp,
    Tick,
    TorProgress,
)
from p2pd.node_wan import WanPaths
from p2pd.pathbook import PathBook
from p2pd.reliable import Channel, ChannelClosed, MessageDelivered, MessageReceived
from p2pd.udp import Addr, UdpSocket
from p2pd.wan import Route, TcpRoute, UdpRoute, WanCore
from p2pd.wanio import TCP_TARGET_AFTER, WanIO
from transports.base import Candidate
from transports.beacon import BEACON_TYPE, BeaconCore
from transports.lan import ipv4_interfaces, run_beacons
from transports.mdns import run_mdns
from transports.portmap import PortmapStatus
from transports.racer import RaceCore

#: Payload bytes of a DATA packet handed to the reliable channel: 1280 (IPv6 minimum MTU)
#: - 40 (IPv6) - 8 (UDP) - 16 (DATA header) - 16 (AEAD tag).
MAX_PLAINTEXT = 1200
#: Node-level control datagrams ride the session like channel datagrams but start with this
#: prefix: a channel packet begins with its u64 packet number, and all-ones is one no
#: channel reaches.  ``I`` + 8 bytes announces the sender's incarnation.
CONTROL_PREFIX = b"\xff" * 8 + b"I"
INCARNATION_SIZE = 8
#: Copies of an incarnation announcement (it is not retransmitted: two make a loss rare,
#: and a lost one only delays noticing a restarted peer until its old channel times out).
ANNOUNCE_COPIES = 2
#: Paths of candidates still tried after the race is won: they name a host, which may be
#: another peer; relayed and punched candidates name a path to a peer already in play.
EXPLICIT_PATHS = frozenset({"lan", "direct", "mapped"})
#: Seconds a relayed candidate waits before it joins the race: hole punching validates in a
#: round trip or two once both peers know each other, and a direct path is worth that wait.
RELAYED_HOLDOFF = 2.0


class Node(WanPaths):
    """See the module docstring."""

    def __init__(
        self, params: Params, identity: Identity, config: NodeConfig | None = None
    ) -> None:
        self.params = params
        self.identity = identity
        self.config = config or NodeConfig()
        self.counters: Counter[str] = Counter()
        self.peers: dict[bytes, PeerState] = {}
        self._send_events, self.events = trio.open_memory_channel[NodeEvent](math.inf)
        self._endpoint: Endpoint | None = None
        self._udp: UdpSocket | None = None
        self._beacon = BeaconCore(params.lan_key)
        self._race: RaceCore | None = None
        self._kick = trio.Event()
        self._outbox: list[tuple[bytes, Route]] = []
        self._late: list[Addr] = []
        self.paths = PathBook()
        self.wan: WanCore | None = None
        self._io: WanIO | None = None
        self._nursery: trio.Nursery | None = None
        #: Relayed candidates waiting for RELAYED_HOLDOFF, with when they may race.
        self._held: list[tuple[float, Candidate]] = []
        self._repunch_at = math.inf
        self._tcp_targets_at = math.inf
        #: The gateway port mapping's state (None: not asked for).
        self.portmap: PortmapStatus | None = None
        self._send_lock = trio.Lock()
        self.port = 0
        #: Random per process: a restarted node (same identity) is told apart by it.
        self.incarnation = os.urandom(INCARNATION_SIZE)
        #: Tor (None without --tor); the TCP links that carry Tor streams.
        self.tor: TorRunner | None = None
        self._tor_links: set[int] = set()

    # -- application side -------------------------------------------------------------

    def send_message(self, peer_id: bytes, data: bytes) -> int:
        """Queue one application message for ``peer_id``; returns its message id."""
        peer = self.peers.get(peer_id)
        if peer is None or peer.closed:
            raise LocalError("that peer is not connected")
        message_id = peer.channel.send_message(data, trio.current_time())
        self._kick.set()
        return message_id

    def kick(self) -> None:
        """Wake the event loop (something outside the node changed)."""
        self._kick.set()
        self._emit_tick()

    def _emit_tick(self) -> None:
        self._send_events.send_nowait(Tick())

    def close_peer(self, peer_id: bytes) -> None:
        """Begin a clean close of the channel to ``peer_id``."""
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.channel.close(trio.current_time())
            self._kick.set()

    def stats(self) -> dict[str, int]:
        merged = Counter(self.counters)
        if self._endpoint is not None:
            merged.update({f"endpoint_{k}": v for k, v in self._endpoint.counters.items()})
        if self.wan is not None:
            merged.update({f"wan_{k}": v for k, v in self.wan.all_counters().items()})
        return dict(merged)

    # -- tasks ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, discover and serve until cancelled. ``task_status`` receives the port."""
        now = trio.current_time()
        config = self.config
        if self.tor_only:
            # Nothing may leave outside Tor: the socket only serves the session's loopback
            # plumbing, on a random port (the derived one would tell a local observer).
            self._udp = UdpSocket(0, host="127.0.0.1")
        else:
            self._udp = UdpSocket(config.port or self.params.port)
        self.port = self._udp.port
        self._endpoint = Endpoint(
            self.params, self.identity, now=now, path_rank=self.paths.rank, keep_warm=_is_tor
        )
        self._race = RaceCore(now)
        self._race_started = now
        only = self.tor_only
        self.wan = WanCore(
            self.params,
            stun=() if only else config.stun,
            assists=() if only else config.assists,
            tcp=config.tcp and not only,
            now=now,
            wall=time.time(),
            local=[] if only else [(str(i.ip), self.port) for _, i in ipv4_interfaces(None)],
            local_port=self.port,
        )
        self._io = WanIO(
            on_datagram=self._on_tcp_datagram,
            on_link_closed=self._on_link_closed,
            counters=self.counters,
        )
        try:
            with single_errors():
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._start_tasks(nursery, now)
                    task_status.started(self.port)
        finally:
            self._udp.close()

    @property
    def tor_only(self) -> bool:
        """Whether nothing may leave this node outside Tor (``--tor-only``)."""
        return self.config.tor is not None and self.config.tor.only

    async def _start_tasks(self, nursery: trio.Nursery, now: float) -> None:
        assert self._io is not None and self.wan is not None and self._udp is not None
        config = self.config
        await nursery.start(self._io.run, self.port, config.tcp and not self.tor_only)
        nursery.start_soon(self._receive_loop)
        nursery.start_soon(self._timer_loop)
        if config.tor is not None:
            self.tor = TorRunner(
                self.params,
                config.tor,
                on_stream=self._on_tor_stream,
                needed=self._tor_needed,
                on_progress=self._emit,
                counters=self.counters,
            )
            nursery.start_soon(self.tor.run)
        if self.tor_only:
            self._kick.set()
            return
        if self.config.beacons:
            nursery.start_soon(
                run_beacons,
                self._udp.send,
                self._beacon,
                self.params.port,
                self.config.interfaces,
            )
        if self.config.mdns:
            nursery.start_soon(
                run_mdns,
                self.params.rendezvous_id,
                self.port,
                self.config.interfaces,
                self._on_lan_candidate,
            )
        for target in config.targets:
            self.add_candidate(Candidate(target, "direct", now))
        if config.targets and config.tcp:
            self._tcp_targets_at = now + TCP_TARGET_AFTER
        for candidate in config.offer:
            self.paths.note(candidate.addr, candidate.path)
            self.add_candidate(Candidate(candidate.addr, candidate.path, now))
        self.wan.peer_candidates("offer", [(c.path, c.addr) for c in config.offer], now)
        if config.portmap:
            self._start_portmap()
        self._kick.set()  # the WAN cores queued their first requests: send them

    def _on_lan_candidate(self, addr: Addr) -> None:
        self.add_candidate(Candidate(addr, "lan", trio.current_time()))

    def add_candidate(self, candidate: Candidate) -> None:
        """A transport found a way that may reach a peer: race it."""
        if candidate.addr == ("127.0.0.1", self.port) or self._race is None:
            return
        if not vaddr.is_virtual(candidate.addr):
            self.paths.note(candidate.addr, candidate.path)
        elif candidate.path == "relay" and candidate.found_at >= 0 and not self._race.over:
            # A relayed path: give hole punching RELAYED_HOLDOFF to find a direct one.  (A
            # relay reached over TCP means our UDP is blocked: nothing to wait for.)
            held = Candidate(candidate.addr, candidate.path, -1.0)
            self._held.append((trio.current_time() + RELAYED_HOLDOFF, held))
            self._kick.set()
            return
        if self._race.over:
            # The race that timed the first connection is decided; later peers (a third
            # node, a peer that came back) are connected to directly.
            self._late.append(candidate.addr)
        else:
            self._race.add(candidate, trio.current_time())
        self._kick.set()

    async def _receive_loop(self) -> None:
        assert self._udp is not None and self._endpoint is not None and self.wan is not None
        udp, endpoint, wan = self._udp, self._endpoint, self.wan
        while True:
            await udp.wait_readable()
            now, wall = trio.current_time(), time.time()
            packets = size = 0
            for data, addr in udp.drain():
                packets += 1
                size += len(data)
                if data[:1] == BEACON_TYPE:
                    if self._beacon.verify_untrusted(data, wall):
                        self.add_candidate(Candidate(addr, "lan", now))
                    else:
                        self.counters["drop_beacon"] += 1
                    continue
                if WanCore.claims(data):
                    for inner, source in wan.receive_udp(data, addr, now, wall):
                        endpoint.receive_datagram(inner, source, now, wall)
                    continue
                endpoint.receive_datagram(data, addr, now, wall)
            self.counters["packets_in"] += packets
            self.counters["bytes_in"] += size
            await self._pump()
            self._kick.set()  # the cores' timers may have moved: the timer loop looks again

    async def _timer_loop(self) -> None:
        assert self._endpoint is not None
        while True:
            deadline = self._next_deadline()
            with trio.move_on_at(deadline):
                await self._kick.wait()
            self._kick = trio.Event()
            now, wall = trio.current_time(), time.time()
            endpoint_timer = self._endpoint.get_timer()
            if endpoint_timer is not None and endpoint_timer <= now:
                self._endpoint.handle_timer(now, wall)
            self._wan_timers(now, wall)
            for peer in self.peers.values():
                timer = peer.channel.get_timer()
                if timer is not None and timer <= now:
                    peer.channel.handle_timer(now)
            await self._pump()

    def _next_deadline(self) -> float:
        assert self._endpoint is not None and self._race is not None
        assert self.wan is not None
        timers = [self._endpoint.get_timer(), self._race.get_timer(), self.wan.get_timer()]
        timers += [self._repunch_at, self._tcp_targets_at]
        timers += [due for due, _ in self._held]
        timers += [peer.channel.get_timer() for peer in self.peers.values()]
        return min((t for t in timers if t is not None), default=math.inf)

    # -- the pump ---------------------------------------------------------------------

    async def _pump(self) -> None:
        """Run the cores until quiescent, then send what they produced."""
        assert self._endpoint is not None and self._race is not None and self.wan is not None
        endpoint, race, wan = self._endpoint, self._race, self.wan
        now, wall = trio.current_time(), time.time()
        late, self._late = self._late, []
        for addr in [*race.due(now), *late]:
            endpoint.connect(addr, now, wall)
        busy = True
        while busy:
            busy = False
            while (event := endpoint.next_event()) is not None:
                busy = True
                self._on_endpoint_event(event, now)
            for peer_id, peer in list(self.peers.items()):
                for plaintext in peer.channel.datagrams_to_send(now):
                    busy = True
                    try:
                        endpoint.send(peer_id, plaintext, now)
                    except LocalError:  # keys expired or peer lost: the channel retransmits
                        self.counters["send_no_keys"] += 1
                cevents = []
                while (cevent := peer.channel.next_event()) is not None:
                    cevents.append(cevent)
                if cevents:
                    busy = True
                    # The peer's addresses (cands) first: a delivery reported in the same
                    # batch then carries the path label they imply (e.g. its mapping).
                    cevents.sort(key=_cands_first)
                    for cevent in cevents:
                        self._on_channel_event(peer_id, peer, cevent)
            for data, addr in endpoint.datagrams_to_send(now, wall):
                routed = wan.outbound(data, addr)
                if routed is None:
                    self.counters["send_no_path"] += 1
                else:
                    self._outbox.append(routed)
            while (wevent := wan.next_event()) is not None:
                busy = True
                self._on_wan_event(wevent, now, wall)
            self._outbox.extend(wan.datagrams_to_send(now))
        await self._flush()

    async def _flush(self) -> None:
        assert self._udp is not None
        udp, counters = self._udp, self.counters
        async with self._send_lock:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                udp_batch: list[tuple[bytes, Addr]] = []
                for data, route in batch:
                    if type(route) is UdpRoute:
                        udp_batch.append((data, route.addr))
                    elif (
                        isinstance(route, TcpRoute)
                        and self._io is not None
                        and not self._io.send(route.link, data)
                    ):
                        counters["send_errors_tcp"] += 1
                for addr, datagrams in _runs_by_address(udp_batch):
                    sent = await udp.send_batch(datagrams, addr)
                    ok = sent.count(True)
                    counters["packets_out"] += ok
                    counters["bytes_out"] += sum(
                        len(data) for data, done in zip(datagrams, sent, strict=True) if done
                    )
                    if ok < len(sent):
                        counters["send_errors"] += len(sent) - ok

    def _on_endpoint_event(self, event: object, now: float) -> None:
        assert self._race is not None
        if type(event) is DataReceived:  # by far the most frequent: checked first
            peer = self.peers.get(event.peer_id)
            if peer is None:
                self.counters["drop_no_channel"] += 1
                return
            if event.data[: len(CONTROL_PREFIX)] == CONTROL_PREFIX:
                self._on_incarnation(event.peer_id, peer, event.data[len(CONTROL_PREFIX) :], now)
                return
            try:
                peer.channel.receive_datagram_untrusted(event.data, now)
            except BadFrame as exc:
                self.counters[f"drop_{exc.reason}"] += 1
        elif isinstance(event, PeerConnected):
            self._on_peer_connected(event, now)
        elif isinstance(event, Rekeyed):
            self._on_rekeyed(event, now)
        elif isinstance(event, PeerAddressChanged):
            peer = self.peers.get(event.peer_id)
            if peer is not None:
                peer.addr, before = event.addr, peer.path
                self._relabel(event.peer_id, peer)
                if peer.path != before:  # another kind of path: its RTT is another one
                    peer.channel.path_changed(now)
        elif isinstance(event, PeerLost):
            peer = self.peers.pop(event.peer_id, None)
            if peer is not None:
                self._emit(PeerDown(event.peer_id, peer.fingerprint, "lost"))
        elif isinstance(event, ConnectFailed):
            self.counters["connect_failed"] += 1
            self._race.failed(event.addr, now)

    def _on_peer_connected(self, event: PeerConnected, now: float) -> None:
        assert self._race is not None
        expected = self.config.expect_peer
        if expected is not None and event.peer_id != expected:
            assert self._endpoint is not None
            self._endpoint.close_peer(event.peer_id)  # not the node that made the offer
            self.counters["unexpected_peer"] += 1
            return
        first = not self._race.over
        result = self._race.won(event.addr, now)
        if first:
            # The race timed the first session; other explicit or LAN addresses that
            # were still queued may be other peers (a space, several --target): try them.
            self._late += [c.addr for c in self._race.unraced if c.path in EXPLICIT_PATHS]
        path = self._label(event.addr)
        elapsed = result.elapsed if result is not None else now - self._race_started
        peer = self.peers.get(event.peer_id)
        if peer is None or peer.closed:
            channel = Channel(now=now, max_plaintext=MAX_PLAINTEXT)
            self.peers[event.peer_id] = PeerState(event.fingerprint, event.addr, path, channel)
            self._emit(PeerUp(event.peer_id, event.fingerprint, event.addr, path, elapsed))
            self._send_cands(event.peer_id, channel, now)
        self._announce(event.peer_id, now)

    def _on_rekeyed(self, event: Rekeyed, now: float) -> None:
        self._announce(event.peer_id, now)
        peer = self.peers.get(event.peer_id)
        if peer is not None and peer.closed:
            # The peer closed its channel and is back (a new process, same key): the
            # endpoint sees a rekey, the application a new peer on a new channel.
            channel = Channel(now=now, max_plaintext=MAX_PLAINTEXT)
            path = self._label(peer.addr)
            self.peers[event.peer_id] = PeerState(peer.fingerprint, peer.addr, path, channel)
            self._emit(PeerUp(event.peer_id, peer.fingerprint, peer.addr, path, 0.0))
            self._send_cands(event.peer_id, channel, now)

    def _announce(self, peer_id: bytes, now: float) -> None:
        """Tell the peer which process we are, so it notices when we restarted."""
        assert self._endpoint is not None
        for _ in range(ANNOUNCE_COPIES):
            try:
                self._endpoint.send(peer_id, CONTROL_PREFIX + self.incarnation, now)
            except LocalError:
                self.counters["announce_no_keys"] += 1
                return

    def _on_incarnation(self, peer_id: bytes, peer: PeerState, value: bytes, now: float) -> None:
        """A new incarnation of a peer whose channel is still open: the process restarted
        (same identity) and its fresh channel cannot continue the old one: start over."""
        if len(value) != INCARNATION_SIZE:
            self.counters["drop_bad_incarnation"] += 1
            return
        if peer.incarnation is None or peer.incarnation == value:
            peer.incarnation = value
            return
        self.counters["peer_restarted"] += 1
        if not peer.closed:
            self._emit(PeerDown(peer_id, peer.fingerprint, "restarted"))
        channel = Channel(now=now, max_plaintext=MAX_PLAINTEXT)
        fresh = PeerState(peer.fingerprint, peer.addr, peer.path, channel, incarnation=value)
        self.peers[peer_id] = fresh
        self._emit(PeerUp(peer_id, peer.fingerprint, peer.addr, peer.path, 0.0))
        self._send_cands(peer_id, channel, now)

    def _on_channel_event(self, peer_id: bytes, peer: PeerState, event: object) -> None:
        if isinstance(event, MessageReceived):
            try:
                message = messages.decode_untrusted(event.data)
                if message.kind == "cands":
                    self._on_cands(peer, messages.candidates_untrusted(message))
                    return
            except BadFrame as exc:
                self.counters[f"drop_{exc.reason}"] += 1
                return
            self._emit(MessageIn(peer_id, peer.fingerprint, message))
        elif isinstance(event, MessageDelivered):
            self._relabel(peer_id, peer)
            self._emit(Delivered(peer_id, peer.fingerprint, event.message_id, event.rtt, peer.path))
        elif isinstance(event, ChannelClosed):
            peer.closed = True
            self._emit(PeerDown(peer_id, peer.fingerprint, event.reason))

    def _emit(self, event: NodeEvent) -> None:
        self._send_events.send_nowait(event)
        if self.tor is not None and isinstance(event, (PeerUp, PeerDown)):
            self.tor.poke()  # whether a meeting at the onion is needed may have changed


#: How every ``cands`` message starts: a 2-entry CBOR map whose first key is "t" = "cands".
CANDS_PREFIX = messages.cands([])[:9]


def _is_tor(addr: Addr) -> bool:
    """The path kept warm after an upgrade: the Tor stream, the one a dead direct path can
    fall back to without a new meeting (a relay is re-registered, a punch re-run)."""
    return isinstance(vaddr.parse(addr), vaddr.TorPath)


def _cands_first(event: object) -> int:
    """Sort key: received ``cands`` messages before everything else (a stable sort keeps
    the order of the rest)."""
    if isinstance(event, MessageReceived) and event.data.startswith(CANDS_PREFIX):
        return 0
    return 1


def _runs_by_address(batch: list[tuple[bytes, Addr]]) -> list[tuple[Addr, list[bytes]]]:
    """Consecutive datagrams to the same address, grouped in order (for batched sends)."""
    runs: list[tuple[Addr, list[bytes]]] = []
    for data, addr in batch:
        if runs and runs[-1][0] == addr:
            runs[-1][1].append(data)
        else:
            runs.append((addr, [data]))
    return runs


__all__ = [
    "Delivered",
    "MessageIn",
    "Node",
    "NodeConfig",
    "NodeEvent",
    "PathChanged",
    "PeerDown",
    "PeerUp",
    "TorProgress",
    "fingerprint",
]
