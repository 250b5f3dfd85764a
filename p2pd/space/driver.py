"""The trio driver of one EtherSync space over a p2pd node.

Theory of operation
-------------------
A :class:`Space` owns nothing clever: it moves frames between the node's connected peers
and two sans-IO cores, the :class:`~ethersync.gossip.GossipCore` (envelopes, over an
:class:`~ethersync.gossip_store.EnvelopeStore`) and the :class:`~ethersync.fetch.FetchCore`
(file chunks), and runs their timers.  The node's peers are the space's peers: a peer
that completed the handshake knows the passphrase, so a stranger never reaches the cores.

Every frame of either core travels as one node message ``{"t": "es", "s": space id,
"f": frame}``; frames for another space id are dropped and counted, and the frame's own
``"t"`` (``have``/``get``/``chunk``/``nope`` for fetch, the rest for gossip) picks the
core.  Gossip names a peer by its static key, fetch by its fingerprint.

After every input (a node event, a timer, a local publish) the loop runs both cores'
timers, sends what they produced, and turns their events into :data:`SpaceEvent` values
on :attr:`Space.events`: messages, file announcements, fetch progress and completion.
Announced files are fetched into the download directory unless ``auto_fetch`` is off;
files already in the store are seeded (or resumed) from the start.

The driver also reads fetch ``have`` bitmaps on their way in, so a publisher can tell
when a peer holds a whole file (:class:`PeerHasFile`), and it notices when a push that
carries an envelope we published was acknowledged by a peer's reliable channel
(:class:`ItemDelivered`): that peer has stored it.

Peer exchange: every :data:`PX_INTERVAL` seconds, and soon after a peer joins, each peer
gets a ``{"t": "px", "a": [[host, port], ...]}`` frame with the real (not virtual)
addresses of our *other* peers, at most :data:`PX_MAX`.  A receiver races a ``direct``
candidate for each address it is not connected to (bounded per frame, and an address is
offered again at most every :data:`PX_RETRY` seconds), so two devices that only share a
third one end up connected directly.  Retention: the store is pruned at start and every
:data:`PRUNE_INTERVAL` seconds with its :class:`~ethersync.store.Retention`.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cbor2
import trio

from ethersync.envelope import KIND_FILE, KIND_MSG, Envelope, open_untrusted, seal
from ethersync.fetch import FetchCore, FileComplete, FileProgress
from ethersync.fetch_wire import FETCH_TYPES, Have
from ethersync.fetch_wire import decode_untrusted as fetch_frame_untrusted
from ethersync.gossip import GossipCore, ItemReceived
from ethersync.gossip_config import GossipConfig
from ethersync.gossip_store import EnvelopeStore
from ethersync.gossip_wire import Item
from ethersync.keys import DeviceKey, SpaceKeys
from ethersync.manifest import Manifest, manifest_untrusted, publish_file
from ethersync.store import Store
from p2pd import messages, vaddr
from p2pd.errors import BadFrame, LocalError
from p2pd.identity import fingerprint
from p2pd.node import Delivered, MessageIn, Node, PeerDown, PeerUp
from p2pd.space.px import (
    PX_INTERVAL,
    PX_JOIN_DELAY,
    PX_MAX,
    PX_RETRY,
    PX_SEEN_MAX,
    PX_TYPE,
    px_untrusted,
)
from p2pd.space.types import (
    FileAnnounced,
    FileDone,
    FileProgressed,
    ItemDelivered,
    MessagePosted,
    PeerHasFile,
    PeerJoined,
    PeerLeft,
    SpaceEvent,
)
from transports.base import Addr, Candidate

#: Node message type that carries EtherSync frames.
ES_TYPE = "es"
#: Seconds between anti-entropy rounds in a space: a space is a few devices, so a ~30 byte
#: digest every few seconds is cheap, and a peer that connects mid-interval catches up
#: within seconds instead of the core's default ten.
SPACE_ANTI_ENTROPY = 3.0
#: Milliseconds per second, for envelope timestamps.
MS = 1000
#: Seconds between store prunes (retention by age and size).
PRUNE_INTERVAL = 600.0

__all__ = [
    "FileAnnounced",
    "FileDone",
    "FileProgressed",
    "ItemDelivered",
    "MessagePosted",
    "PeerHasFile",
    "PeerJoined",
    "PeerLeft",
    "Space",
    "SpaceEvent",
]


class _OwnItems(EnvelopeStore):
    """An :class:`EnvelopeStore` that lets gossip publish an envelope we stored ourselves.

    :func:`~ethersync.manifest.publish_file` stores the manifest envelope with its chunks;
    :meth:`GossipCore.publish` insists on storing the item itself, so the id is marked
    here first and its ``put`` then reports it as new.
    """

    def __init__(self, store: Store, keys: SpaceKeys) -> None:
        super().__init__(store, keys)
        self.own: set[bytes] = set()

    def put(self, item: Item) -> bool:
        if item.item_id in self.own:
            self.own.discard(item.item_id)
            return self.store.has(item.item_id)
        return super().put(item)


def wall_ms() -> int:
    """Envelope timestamps are wall-clock milliseconds (only drivers read clocks)."""
    return int(time.time() * MS)


def message_text(envelope: Envelope) -> str:
    body = envelope.body
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else ""


class Space:
    """See the module docstring.  Construct inside ``trio.run``; run :meth:`run` beside
    the node's own :meth:`Node.run` (this takes over ``node.events``)."""

    def __init__(
        self,
        node: Node,
        store: Store,
        device: DeviceKey,
        *,
        download_dir: Path | None = None,
        auto_fetch: bool = True,
    ) -> None:
        self.node = node
        self.store = store
        self.device = device
        self.keys = SpaceKeys.from_params(node.params)
        self.download_dir = download_dir
        self.auto_fetch = auto_fetch and download_dir is not None
        now = trio.current_time()
        self._items = _OwnItems(store, self.keys)
        config = GossipConfig(anti_entropy_interval=SPACE_ANTI_ENTROPY)
        self.gossip = GossipCore(node.identity.public, now, config=config, store=self._items)
        self.fetch = FetchCore(store, self.keys, now)
        self.manifests: dict[bytes, Manifest] = {}
        self.wanted: set[bytes] = set()
        #: Peers (fingerprint -> static key) now connected.
        self.peers: dict[str, bytes] = {}
        #: Latest ``have`` bitmap of each (peer, file).
        self.peer_bits: dict[tuple[str, bytes], int] = {}
        self.counters: Counter[str] = Counter()
        self._watch: set[bytes] = set()
        self._sent: dict[tuple[bytes, int], bytes] = {}
        self._send_events, self.events = trio.open_memory_channel[SpaceEvent](math.inf)
        self._px_at = now + PX_INTERVAL
        self._px_seen: dict[Addr, float] = {}
        self._prune_at = now

    # -- local calls ------------------------------------------------------------------

    @property
    def space_id(self) -> bytes:
        return self.keys.space_id

    def publish_text(self, text: str) -> Envelope:
        """Seal, store and spread a message; returns its envelope."""
        sealed = seal(
            self.keys,
            self.device,
            seq=self.store.next_seq(self.device.public),
            ts=wall_ms(),
            kind=KIND_MSG,
            body=text.encode("utf-8"),
        )
        envelope = sealed.envelope
        self._watch.add(sealed.id)
        self.gossip.publish(
            Item(sealed.id, envelope.author, envelope.seq, sealed.blob), self._now()
        )
        self._on_envelope(envelope, local=True)
        self.node.kick()
        return envelope

    def publish_file(self, path: Path, name: str | None = None) -> tuple[Envelope, Manifest]:
        """Chunk and store ``path``, spread its manifest and seed it."""
        sealed = publish_file(self.store, self.keys, self.device, path, ts=wall_ms(), name=name)
        envelope = sealed.envelope
        self._items.own.add(sealed.id)
        self._watch.add(sealed.id)
        self.gossip.publish(
            Item(sealed.id, envelope.author, envelope.seq, sealed.blob), self._now()
        )
        self._on_envelope(envelope, local=True)
        self.node.kick()
        return envelope, self.manifests[sealed.id]

    def fetch_file(self, file_id: bytes) -> Manifest:
        """Start fetching a file whose manifest this node holds."""
        manifest = self.manifests.get(file_id)
        if manifest is None:
            raise LocalError(f"file {file_id.hex()[:16]} is not known here")
        self._want(file_id, manifest)
        self.node.kick()
        return manifest

    def peer_bytes(self, file_id: bytes) -> int:
        """The most bytes of ``file_id`` any connected peer announced holding."""
        manifest = self.manifests.get(file_id)
        if manifest is None:
            return 0
        best = 0
        for (peer, fid), bits in self.peer_bits.items():
            if fid == file_id and peer in self.peers:
                held = sum(manifest.length(i) for i in range(len(manifest.hashes)) if bits >> i & 1)
                best = max(best, held)
        return best

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update({f"gossip_{k}": v for k, v in self.gossip.drops.items()})
        out.update({f"store_{k}": v for k, v in self._items.drops.items()})
        out.update(self.fetch.drops)
        return out

    # -- the loop ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive both cores until cancelled (the node must be running)."""
        self._load_files()
        task_status.started()
        while True:
            now = self._now()
            self.gossip.handle_timer(now)
            self.fetch.handle_timer(now)
            self._own_timers(now)
            self._flush(now)
            self._drain()
            fetch_timer = self.fetch.get_timer()
            deadline = min(
                self.gossip.get_timer(),
                math.inf if fetch_timer is None else fetch_timer,
                self._px_at,
                self._prune_at,
            )
            with trio.move_on_at(deadline):
                event = await self.node.events.receive()
                self._on_node_event(event, self._now())

    def _now(self) -> float:
        return trio.current_time()

    def _own_timers(self, now: float) -> None:
        if now >= self._prune_at:
            self._prune_at = now + PRUNE_INTERVAL
            self.counters["pruned"] += self.store.prune(wall_ms())
        if now >= self._px_at:
            self._px_at = now + PX_INTERVAL
            self._send_px()

    def _peer_addr(self, peer_id: bytes) -> Addr | None:
        state = self.node.peers.get(peer_id)
        addr = None if state is None else state.addr
        return None if addr is None or vaddr.is_virtual(addr) else addr

    def _send_px(self) -> None:
        """Tell each peer the real addresses of our other peers."""
        known = {pid: self._peer_addr(pid) for pid in self.peers.values()}
        for peer_id in self.peers.values():
            addrs = [list(a) for pid, a in known.items() if pid != peer_id and a is not None]
            if not addrs:
                continue
            frame = cbor2.dumps({"t": PX_TYPE, "a": addrs[:PX_MAX]})
            try:
                self.node.send_message(peer_id, messages.encode(ES_TYPE, s=self.space_id, f=frame))
            except LocalError:
                self.counters["es_peer_gone"] += 1
                continue
            self.counters["px_sent"] += 1

    def _on_px(self, frame: bytes, now: float) -> None:
        try:
            addrs = px_untrusted(frame)
        except BadFrame as exc:
            self.counters[exc.reason] += 1
            return
        connected = {self._peer_addr(pid) for pid in self.peers.values()}
        for addr in addrs:
            if addr in connected or (addr[1] == self.node.port and _is_loopback(addr[0])):
                self.counters["px_known"] += 1
                continue
            if now < self._px_seen.get(addr, -math.inf) + PX_RETRY:
                self.counters["px_recent"] += 1
                continue
            if len(self._px_seen) >= PX_SEEN_MAX:
                self._px_seen.clear()
            self._px_seen[addr] = now
            self.counters["px_candidate"] += 1
            self.node.add_candidate(Candidate(addr, "direct", now))

    def _load_files(self) -> None:
        """Seed complete files, and resume incomplete ones when fetching automatically."""
        for meta in self.store.list_envelopes(KIND_FILE):
            blob = self.store.get(meta.id)
            if blob is None:
                continue
            try:
                manifest = manifest_untrusted(open_untrusted(blob, self.keys))
            except BadFrame as exc:
                self.counters[f"stored_{exc.reason}"] += 1
                continue
            self.manifests[meta.id] = manifest
            done = len(self.store.verified_indices(meta.id)) == len(manifest.hashes)
            if done or self.auto_fetch:
                self._want(meta.id, manifest)

    def _want(self, file_id: bytes, manifest: Manifest) -> None:
        try:
            self.fetch.want(file_id, manifest)
        except LocalError:
            self.counters["want_refused"] += 1
            return
        self.wanted.add(file_id)

    def _on_node_event(self, event: object, now: float) -> None:
        if isinstance(event, PeerUp):
            self.peers[event.fingerprint] = event.peer_id
            self.gossip.add_peer(event.peer_id)
            self.fetch.add_peer(event.fingerprint)
            addr = f"{event.addr[0]}:{event.addr[1]}"
            self._emit(PeerJoined(event.fingerprint, event.path, addr))
            self._px_at = min(self._px_at, now + PX_JOIN_DELAY)
        elif isinstance(event, PeerDown):
            if self.peers.pop(event.fingerprint, None) is not None:
                self.gossip.remove_peer(event.peer_id)
                self.fetch.remove_peer(event.fingerprint)
                self._emit(PeerLeft(event.fingerprint, event.reason))
        elif isinstance(event, MessageIn) and event.message.kind == ES_TYPE:
            self._on_frame(event, now)
        elif isinstance(event, Delivered):
            envelope_id = self._sent.pop((event.peer_id, event.message_id), None)
            if envelope_id is not None:
                self._emit(ItemDelivered(event.fingerprint, envelope_id))

    def _on_frame(self, event: MessageIn, now: float) -> None:
        fields = event.message.fields
        frame = fields.get("f")
        if fields.get("s") != self.space_id:
            self.counters["es_other_space"] += 1
            return
        if not isinstance(frame, bytes) or event.fingerprint not in self.peers:
            self.counters["es_shape"] += 1
            return
        try:
            kind = _frame_type_untrusted(frame)
        except BadFrame as exc:
            self.counters[exc.reason] += 1
            return
        if kind == PX_TYPE:
            self._on_px(frame, now)
            return
        if kind not in FETCH_TYPES:
            self.gossip.receive_untrusted(event.peer_id, frame, now)
            return
        if self.fetch.receive_untrusted(event.fingerprint, frame, now) and kind == "have":
            have = fetch_frame_untrusted(frame)
            assert isinstance(have, Have)
            self._on_have(event.fingerprint, have)

    def _on_have(self, peer: str, have: Have) -> None:
        key = (peer, have.file_id)
        full = (1 << have.count) - 1
        was_full = self.peer_bits.get(key) == full
        self.peer_bits[key] = have.bits
        if have.bits == full and not was_full:
            self._emit(PeerHasFile(peer, have.file_id))

    def _flush(self, now: float) -> None:
        out: list[tuple[bytes, bytes, bool]] = [
            (peer, frame, True) for peer, frame in self.gossip.datagrams_to_send(now)
        ]
        for name, frame in self.fetch.datagrams_to_send(now):
            peer_id = self.peers.get(name)
            if peer_id is not None:
                out.append((peer_id, frame, False))
        for peer_id, frame, is_gossip in out:
            data = messages.encode(ES_TYPE, s=self.space_id, f=frame)
            try:
                message_id = self.node.send_message(peer_id, data)
            except LocalError:
                self.counters["es_peer_gone"] += 1
                continue
            if is_gossip and self._watch:
                for envelope_id in self._watch:
                    if envelope_id in frame:
                        self._sent[(peer_id, message_id)] = envelope_id

    def _drain(self) -> None:
        while (gossip_event := self.gossip.next_event()) is not None:
            if isinstance(gossip_event, ItemReceived):
                try:
                    envelope = open_untrusted(gossip_event.item.blob, self.keys)
                except BadFrame as exc:  # the store opened it already; never expected
                    self.counters[exc.reason] += 1
                    continue
                self._on_envelope(envelope, local=False)
        while (fetch_event := self.fetch.next_event()) is not None:
            if isinstance(fetch_event, FileProgress):
                name = self._name(fetch_event.file_id)
                self._emit(
                    FileProgressed(
                        fetch_event.file_id,
                        name,
                        fetch_event.verified_bytes,
                        fetch_event.total_bytes,
                        fetch_event.rate,
                    )
                )
            elif isinstance(fetch_event, FileComplete):
                self.write_file(fetch_event.file_id)
            else:
                self.counters["chunk_rejected"] += 1

    def _name(self, file_id: bytes) -> str:
        manifest = self.manifests.get(file_id)
        return manifest.name if manifest is not None else file_id.hex()[:16]

    def write_file(self, file_id: bytes) -> None:
        """Write a complete file into the download dir; a :class:`FileDone` says where."""
        name = self._name(file_id)
        if self.download_dir is None:
            self._emit(FileDone(file_id, name, None))
            return
        try:
            self.download_dir.mkdir(parents=True, exist_ok=True)
            path = self.fetch.assembler(file_id).write(self.download_dir)
        except (LocalError, OSError) as exc:
            self.counters["write_failed"] += 1
            self._emit(FileDone(file_id, name, None, str(exc)))
            return
        self._emit(FileDone(file_id, name, path))

    def _on_envelope(self, envelope: Envelope, *, local: bool) -> None:
        author = fingerprint(envelope.author)
        if envelope.kind == KIND_MSG:
            text = message_text(envelope)
            self._emit(MessagePosted(envelope.id, author, envelope.seq, envelope.ts, text, local))
        elif envelope.kind == KIND_FILE:
            try:
                manifest = manifest_untrusted(envelope)
            except BadFrame as exc:
                self.counters[exc.reason] += 1
                return
            self.manifests[envelope.id] = manifest
            self._emit(
                FileAnnounced(
                    envelope.id,
                    author,
                    envelope.seq,
                    envelope.ts,
                    manifest.name,
                    manifest.size,
                    local,
                )
            )
            if local or self.auto_fetch:
                self._want(envelope.id, manifest)

    def _emit(self, event: SpaceEvent) -> None:
        self._send_events.send_nowait(event)


def _frame_type_untrusted(frame: bytes) -> str:
    """The ``"t"`` of a gossip or fetch frame, to route it; BadFrame if it has none."""
    try:
        obj: Any = cbor2.loads(frame)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        raise BadFrame("es_cbor") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise BadFrame("es_frame_shape")
    return str(obj["t"])


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback
