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
its address may change under it (roaming), the channel survives.

Every task lives in the nursery of :meth:`Node.run`; cancelling it (Ctrl-C, SIGTERM,
the command being done) closes the socket and unregisters mDNS.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from p2pd import messages
from p2pd.derive import Params
from p2pd.endpoint import (
    ConnectFailed,
    DataReceived,
    Endpoint,
    PeerAddressChanged,
    PeerConnected,
    PeerLost,
)
from p2pd.errors import BadFrame, LocalError
from p2pd.identity import Identity, fingerprint
from p2pd.reliable import Channel, ChannelClosed, MessageDelivered, MessageReceived
from p2pd.udp import Addr, UdpSocket
from transports.base import Candidate
from transports.beacon import BEACON_TYPE, BeaconCore
from transports.lan import run_beacons
from transports.mdns import run_mdns
from transports.racer import RaceCore

#: Payload bytes of a DATA packet handed to the reliable channel: 1280 (IPv6 minimum MTU)
#: - 40 (IPv6) - 8 (UDP) - 16 (DATA header) - 16 (AEAD tag).
MAX_PLAINTEXT = 1200


@dataclass(frozen=True, slots=True)
class PeerUp:
    """A peer completed the handshake; ``path`` says how it was reached."""

    peer_id: bytes
    fingerprint: str
    addr: Addr
    path: str
    elapsed: float


@dataclass(frozen=True, slots=True)
class MessageIn:
    peer_id: bytes
    fingerprint: str
    message: messages.AppMessage


@dataclass(frozen=True, slots=True)
class Delivered:
    peer_id: bytes
    fingerprint: str
    message_id: int
    rtt: float
    path: str


@dataclass(frozen=True, slots=True)
class PeerDown:
    peer_id: bytes
    fingerprint: str
    reason: str


@dataclass(frozen=True, slots=True)
class PathChanged:
    """A connected peer is now reached another way (an upgrade, or a fallback)."""

    peer_id: bytes
    fingerprint: str
    old_path: str
    path: str
    addr: Addr


@dataclass(frozen=True, slots=True)
class Tick:
    """Nothing happened to a peer; the application asked to be woken (see Node.kick)."""


NodeEvent = PeerUp | MessageIn | Delivered | PeerDown | PathChanged | Tick


@dataclass(slots=True)
class _Peer:
    fingerprint: str
    addr: Addr
    path: str
    channel: Channel
    closed: bool = False


@dataclass(slots=True)
class NodeConfig:
    """What a node listens on and how it discovers peers."""

    port: int | None = None  # None: the derived port (another one if taken)
    interfaces: Sequence[str] | None = None  # None: every interface; ["lo"] in tests
    beacons: bool = True
    mdns: bool = True
    targets: Sequence[Addr] = field(default_factory=tuple)  # explicit candidates (--target)
    stun: Sequence[Addr] = field(default_factory=tuple)  # STUN servers (--stun); none by default
    assists: Sequence[Addr] = field(default_factory=tuple)  # assist relays (--assist)
    portmap: bool = True  # ask the gateway for a port mapping (UPnP, NAT-PMP, PCP)
    tcp: bool = True  # listen on TCP and fall back to it when UDP fails
    offer: Sequence[Candidate] = field(default_factory=tuple)  # from --offer


class Node:
    """See the module docstring."""

    def __init__(
        self, params: Params, identity: Identity, config: NodeConfig | None = None
    ) -> None:
        self.params = params
        self.identity = identity
        self.config = config or NodeConfig()
        self.counters: Counter[str] = Counter()
        self.peers: dict[bytes, _Peer] = {}
        self._send_events, self.events = trio.open_memory_channel[NodeEvent](math.inf)
        self._endpoint: Endpoint | None = None
        self._udp: UdpSocket | None = None
        self._beacon = BeaconCore(params.lan_key)
        self._race: RaceCore | None = None
        self._kick = trio.Event()
        self._outbox: list[tuple[bytes, Addr]] = []
        self._late: list[Addr] = []
        self._send_lock = trio.Lock()
        self.port = 0

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
        return dict(merged)

    # -- tasks ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, discover and serve until cancelled. ``task_status`` receives the port."""
        now = trio.current_time()
        self._udp = UdpSocket(self.config.port or self.params.port)
        self.port = self._udp.port
        self._endpoint = Endpoint(self.params, self.identity, now=now)
        self._race = RaceCore(now)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._timer_loop)
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
                for target in self.config.targets:
                    self.add_candidate(Candidate(target, "direct", now))
                task_status.started(self.port)
        finally:
            self._udp.close()

    def _on_lan_candidate(self, addr: Addr) -> None:
        self.add_candidate(Candidate(addr, "lan", trio.current_time()))

    def add_candidate(self, candidate: Candidate) -> None:
        """A transport found a way that may reach a peer: race it."""
        if candidate.addr == ("127.0.0.1", self.port) or self._race is None:
            return
        if self._race.over:
            # The race that timed the first connection is decided; later peers (a third
            # node, a peer that came back) are connected to directly.
            self._late.append(candidate.addr)
        else:
            self._race.add(candidate, trio.current_time())
        self._kick.set()

    async def _receive_loop(self) -> None:
        assert self._udp is not None and self._endpoint is not None
        udp, endpoint = self._udp, self._endpoint
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
            for peer in self.peers.values():
                timer = peer.channel.get_timer()
                if timer is not None and timer <= now:
                    peer.channel.handle_timer(now)
            await self._pump()

    def _next_deadline(self) -> float:
        assert self._endpoint is not None and self._race is not None
        timers = [self._endpoint.get_timer(), self._race.get_timer()]
        timers += [peer.channel.get_timer() for peer in self.peers.values()]
        return min((t for t in timers if t is not None), default=math.inf)

    # -- the pump ---------------------------------------------------------------------

    async def _pump(self) -> None:
        """Run the cores until quiescent, then send what they produced."""
        assert self._endpoint is not None and self._race is not None and self._udp is not None
        endpoint, race = self._endpoint, self._race
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
                while (cevent := peer.channel.next_event()) is not None:
                    busy = True
                    self._on_channel_event(peer_id, peer, cevent)
            self._outbox.extend(endpoint.datagrams_to_send(now, wall))
        await self._flush()

    async def _flush(self) -> None:
        assert self._udp is not None
        udp, counters = self._udp, self.counters
        async with self._send_lock:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                for addr, datagrams in _runs_by_address(batch):
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
            try:
                peer.channel.receive_datagram_untrusted(event.data, now)
            except BadFrame as exc:
                self.counters[f"drop_{exc.reason}"] += 1
        elif isinstance(event, PeerConnected):
            result = self._race.won(event.addr, now)
            path = result.path if result is not None else "lan"
            elapsed = result.elapsed if result is not None else 0.0
            peer = self.peers.get(event.peer_id)
            if peer is None or peer.closed:
                channel = Channel(now=now, max_plaintext=MAX_PLAINTEXT)
                self.peers[event.peer_id] = _Peer(event.fingerprint, event.addr, path, channel)
                self._emit(PeerUp(event.peer_id, event.fingerprint, event.addr, path, elapsed))
        elif isinstance(event, PeerAddressChanged):
            peer = self.peers.get(event.peer_id)
            if peer is not None:
                peer.addr = event.addr
        elif isinstance(event, PeerLost):
            peer = self.peers.pop(event.peer_id, None)
            if peer is not None:
                self._emit(PeerDown(event.peer_id, peer.fingerprint, "lost"))
        elif isinstance(event, ConnectFailed):
            self.counters["connect_failed"] += 1
            self._race.failed(event.addr, now)

    def _on_channel_event(self, peer_id: bytes, peer: _Peer, event: object) -> None:
        if isinstance(event, MessageReceived):
            try:
                message = messages.decode_untrusted(event.data)
            except BadFrame as exc:
                self.counters[f"drop_{exc.reason}"] += 1
                return
            self._emit(MessageIn(peer_id, peer.fingerprint, message))
        elif isinstance(event, MessageDelivered):
            self._emit(Delivered(peer_id, peer.fingerprint, event.message_id, event.rtt, peer.path))
        elif isinstance(event, ChannelClosed):
            peer.closed = True
            self._emit(PeerDown(peer_id, peer.fingerprint, event.reason))

    def _emit(self, event: NodeEvent) -> None:
        self._send_events.send_nowait(event)


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
    "fingerprint",
]
