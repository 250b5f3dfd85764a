"""Chunk fetch core: fetch chunks from every peer that has them at once, serve ours (sans-IO).

Theory of operation
-------------------
One core per space does both sides of the swarm over the frames of
:mod:`ethersync.fetch_wire`:

* **Announcing.**  :meth:`FetchCore.want` registers a file by its manifest (an
  :class:`~ethersync.manifest.Assembler` inside, built from the store, so chunks verified
  before a restart are never fetched again; a complete file is just seeded).  Every peer
  hears a ``have`` bitmap of our verified chunks of every file on :meth:`add_peer`, on
  ``want`` and, batched every ``have_delay``, whenever chunks complete.  A ``have`` from a
  peer that has not yet heard ours for that file is answered with ours, so the peer that
  learns of a file last still hears who holds it.  Bitmaps of files we do not know yet
  are kept (a bounded number) until the manifest arrives.
* **Fetching.**  :meth:`datagrams_to_send` hands out ``get`` requests for missing chunks,
  rarest first; among equally rare ones in file order from a random starting point per
  core, so fetchers starting together ask the seeder for different chunks and then trade
  among themselves.  Each chunk is asked of one holder at a time, the one with the
  fewest requests outstanding, within ``max_in_flight_per_peer`` per peer and
  ``max_in_flight`` in all.  A request unanswered after ``get_timeout`` is asked
  elsewhere (that holder goes last for that chunk; its late answer is still taken).  A
  chunk the Assembler rejects is counted (``drops["fetch_tampered"]``), reported as
  :class:`ChunkRejected`, and that peer is not asked for it again for ``tamper_avoid``.
  A ``nope`` clears the peer's bit and the chunk is asked elsewhere.
* **Serving.**  A ``get`` for any chunk in the store (only verified chunks ever enter
  it) is queued by hash, at most ``max_serve_queue`` per peer, and read from the store
  only when :meth:`datagrams_to_send` sends it, at most ``max_send_bytes`` per call
  (peers in turn; :meth:`get_timer` then asks to be called again at once).

Memory is bounded: no chunk is held past the call that received or sends it, and every
table is capped by the config.  Frames from the network go through
:func:`~ethersync.fetch_wire.decode_untrusted`; drops are counted in ``drops`` and
:meth:`receive_untrusted` never raises on them.  The driver calls
:meth:`datagrams_to_send` after every other call, and :meth:`handle_timer` at
:meth:`get_timer`.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field

from ethersync.fetch_wire import (
    Chunk,
    ChunkRejected,
    Event,
    FetchConfig,
    FileComplete,
    FileProgress,
    Frame,
    Get,
    Have,
    Nope,
    decode_untrusted,
    encode,
)
from ethersync.keys import SpaceKeys
from ethersync.manifest import Assembler, Manifest, Offer
from ethersync.store import Store
from p2pd.errors import BadFrame, LocalError

__all__ = [
    "ChunkRejected",
    "Event",
    "FetchConfig",
    "FetchCore",
    "FileComplete",
    "FileProgress",
]


_Key = tuple[bytes, bytes]  # (file id, chunk hash)
#: Weight of a new sample in a peer's smoothed service time (as TCP's SRTT, RFC 6298).
SERVICE_GAIN = 0.125


@dataclass(slots=True)
class _File:
    file_id: bytes
    manifest: Manifest
    assembler: Assembler
    missing: dict[bytes, list[int]]  # chunk hash -> indices, file order
    verified: int  # bit i: chunk i verified
    verified_bytes: int
    rank: list[int]  # random order among equally rare chunks
    started: float | None = None
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    timed_out: dict[bytes, set[str]] = field(default_factory=dict)
    tampered: dict[bytes, dict[str, float]] = field(default_factory=dict)


@dataclass(slots=True)
class _Peer:
    name: str
    haves: dict[bytes, int] = field(default_factory=dict)
    in_flight: dict[_Key, float] = field(default_factory=dict)  # -> deadline
    late: dict[_Key, None] = field(default_factory=dict)
    serve: collections.deque[_Key] = field(default_factory=collections.deque)
    out: list[bytes] = field(default_factory=list)
    announced: set[bytes] = field(default_factory=set)
    #: Smoothed seconds from ``get`` to ``chunk`` (None: not measured yet).
    service: float | None = None


class FetchCore:
    """One space's chunk swarm, fetching and serving; see the module docstring."""

    def __init__(
        self,
        store: Store,
        keys: SpaceKeys,
        now: float,
        *,
        config: FetchConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.config = config or FetchConfig()
        # Only spreads load; nothing secret depends on it, and a seed makes tests repeatable.
        self._rng = rng or random.Random()  # noqa: S311
        self._now = now
        self._files: dict[bytes, _File] = {}
        self._peers: dict[str, _Peer] = {}
        self._in_flight: dict[_Key, str] = {}
        self._pending_haves: dict[tuple[str, bytes], Have] = {}
        self._have_dirty: set[bytes] = set()
        self._have_at: float | None = None
        self._serve_turn = 0
        self._events: collections.deque[Event] = collections.deque()
        #: Network input dropped, by reason (``fetch_*``; chunk reasons from the Assembler).
        self.drops: collections.Counter[str] = collections.Counter()
        #: What the core did: ``get_sent``, ``chunk_served``, ``nope_sent``, ``timeout``, ...
        self.stats: collections.Counter[str] = collections.Counter()
        #: ``get`` requests sent to each peer, to see the load spread.
        self.gets_by_peer: collections.Counter[str] = collections.Counter()

    # -- local calls ----------------------------------------------------------------

    def want(self, file_id: bytes, manifest: Manifest) -> None:
        """Fetch, resume, or (when complete) seed file ``file_id`` as ``manifest`` describes it."""
        if file_id in self._files:
            if self._files[file_id].manifest != manifest:
                raise LocalError("this file id is already wanted with another manifest")
            return
        if len(self._files) >= self.config.max_files:
            raise LocalError(f"at most {self.config.max_files} files can be fetched at once")
        assembler = Assembler(self.store, self.keys, file_id, manifest)
        done = self.store.verified_indices(file_id)
        missing: dict[bytes, list[int]] = {}
        for index, digest in enumerate(manifest.hashes):
            if index not in done:
                missing.setdefault(digest, []).append(index)
        count = len(manifest.hashes)
        entry = _File(
            file_id=file_id,
            manifest=manifest,
            assembler=assembler,
            missing=missing,
            verified=sum(1 << index for index in done),
            verified_bytes=sum(manifest.length(index) for index in done),
            rank=self._rng.sample(range(count), count),
        )
        self._files[file_id] = entry
        for peer in self._peers.values():
            have = self._pending_haves.pop((peer.name, file_id), None)
            if have is not None and have.count == count:
                peer.haves[file_id] = have.bits
            self._announce(peer, entry)

    def add_peer(self, peer: str) -> bool:
        """Start trading with ``peer``; False if it is known already or the table is full."""
        if peer in self._peers or len(self._peers) >= self.config.max_peers:
            return False
        state = self._peers[peer] = _Peer(peer)
        for entry in self._files.values():
            self._announce(state, entry)
        return True

    def remove_peer(self, peer: str) -> None:
        """Forget ``peer``; what it was asked for is asked elsewhere."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        for key in state.in_flight:
            self._in_flight.pop(key, None)
        for pending in [k for k in self._pending_haves if k[0] == peer]:
            del self._pending_haves[pending]

    def complete(self, file_id: bytes) -> bool:
        return self._file(file_id).assembler.complete

    def assembler(self, file_id: bytes) -> Assembler:
        return self._file(file_id).assembler

    def in_flight(self, peer: str | None = None) -> int:
        """Requests outstanding, to ``peer`` or in all (for stats and tests)."""
        if peer is None:
            return len(self._in_flight)
        state = self._peers.get(peer)
        return 0 if state is None else len(state.in_flight)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def _file(self, file_id: bytes) -> _File:
        entry = self._files.get(file_id)
        if entry is None:
            raise LocalError(f"file {file_id.hex()[:16]} is not wanted here")
        return entry

    # -- network input ----------------------------------------------------------------

    def receive_untrusted(self, peer: str, frame: bytes, now: float) -> bool:
        """Handle one frame from ``peer``; False (and counted in ``drops``) if dropped."""
        self._now = now
        state = self._peers.get(peer)
        if state is None:
            self.drops["fetch_unknown_peer"] += 1
            return False
        try:
            self._handle(state, decode_untrusted(frame), now)
        except BadFrame as exc:
            self.drops[exc.reason] += 1
            return False
        return True

    def _handle(self, peer: _Peer, frame: Frame, now: float) -> None:
        match frame:
            case Have():
                self._on_have(peer, frame)
            case Get(file_id, chunk_hash):
                if len(peer.serve) >= self.config.max_serve_queue:
                    raise BadFrame("fetch_serve_overflow")
                peer.serve.append((file_id, chunk_hash))
            case Chunk(file_id, chunk_hash, blob):
                self._release(peer, (file_id, chunk_hash))
                self._on_chunk(peer, file_id, chunk_hash, blob, now)
            case Nope(file_id, chunk_hash):
                self._release(peer, (file_id, chunk_hash))
                entry = self._files.get(file_id)
                if entry is not None and file_id in peer.haves:
                    for index in entry.missing.get(chunk_hash, ()):
                        peer.haves[file_id] &= ~(1 << index)

    def _on_have(self, peer: _Peer, have: Have) -> None:
        entry = self._files.get(have.file_id)
        if entry is None:
            pending = self._pending_haves
            pending.pop((peer.name, have.file_id), None)
            if len(pending) >= self.config.max_pending_haves:
                del pending[next(iter(pending))]
            pending[(peer.name, have.file_id)] = have
            return
        if have.count != len(entry.manifest.hashes):
            raise BadFrame("fetch_have_count")
        peer.haves[have.file_id] = have.bits
        if have.file_id not in peer.announced:
            self._announce(peer, entry)

    def _release(self, peer: _Peer, key: _Key) -> None:
        """Take ``key`` off ``peer``'s requests; BadFrame if it was never asked of it."""
        deadline = peer.in_flight.pop(key, None)
        if deadline is not None:
            del self._in_flight[key]
            elapsed = max(0.0, self._now - (deadline - self.config.get_timeout))
            old = peer.service
            peer.service = elapsed if old is None else old + SERVICE_GAIN * (elapsed - old)
        elif key in peer.late:
            del peer.late[key]
            self.stats["late_answer"] += 1
        else:
            raise BadFrame("fetch_unsolicited")

    def _on_chunk(
        self, peer: _Peer, file_id: bytes, chunk_hash: bytes, blob: bytes, now: float
    ) -> None:
        entry = self._files.get(file_id)
        if entry is None or chunk_hash not in entry.missing:
            self.stats["chunk_duplicate"] += 1
            return
        result = entry.assembler.offer(chunk_hash, blob)
        if result is Offer.REJECTED:
            index = entry.missing[chunk_hash][0]
            entry.tampered.setdefault(chunk_hash, {})[peer.name] = now + self.config.tamper_avoid
            self._emit(ChunkRejected(peer.name, file_id, index))
            raise BadFrame("fetch_tampered")
        self._verified(entry, chunk_hash, now)

    def _verified(self, entry: _File, chunk_hash: bytes, now: float) -> None:
        added = 0
        for index in entry.missing.pop(chunk_hash):
            entry.verified |= 1 << index
            added += entry.manifest.length(index)
        entry.verified_bytes += added
        entry.timed_out.pop(chunk_hash, None)
        entry.tampered.pop(chunk_hash, None)
        self.stats["chunk_accepted"] += 1
        entry.samples.append((now, added))
        while entry.samples and entry.samples[0][0] <= now - self.config.rate_window:
            entry.samples.popleft()
        self._have_dirty.add(entry.file_id)
        if self._have_at is None:
            self._have_at = now + self.config.have_delay
        total = entry.manifest.size
        self._emit(FileProgress(entry.file_id, entry.verified_bytes, total, self._rate(entry, now)))
        if not entry.missing:
            self._emit(FileComplete(entry.file_id))

    def _rate(self, entry: _File, now: float) -> float:
        started = now if entry.started is None else entry.started
        span = min(self.config.rate_window, now - started)
        return sum(size for _, size in entry.samples) / span if span > 0 else 0.0

    def _emit(self, event: Event) -> None:
        if len(self._events) >= self.config.max_events:
            self._events.popleft()
            self.stats["event_dropped"] += 1
        self._events.append(event)

    # -- timers -----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` (and then :meth:`datagrams_to_send`) should run next."""
        if any(peer.serve for peer in self._peers.values()):
            return self._now
        times = [t for peer in self._peers.values() for t in peer.in_flight.values()]
        if self._have_at is not None:
            times.append(self._have_at)
        for entry in self._files.values():
            times.extend(t for avoid in entry.tampered.values() for t in avoid.values())
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Expire requests (to be asked elsewhere) and tamper bans that ran out."""
        self._now = now
        for peer in self._peers.values():
            for key, deadline in list(peer.in_flight.items()):
                if deadline <= now:
                    del peer.in_flight[key]
                    del self._in_flight[key]
                    if len(peer.late) >= self.config.max_late:
                        del peer.late[next(iter(peer.late))]
                    peer.late[key] = None
                    self.stats["timeout"] += 1
                    entry = self._files.get(key[0])
                    if entry is not None:
                        entry.timed_out.setdefault(key[1], set()).add(peer.name)
        for entry in self._files.values():
            for chunk_hash, avoid in list(entry.tampered.items()):
                for name in [name for name, until in avoid.items() if until <= now]:
                    del avoid[name]
                if not avoid:
                    del entry.tampered[chunk_hash]

    # -- output -----------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[str, bytes]]:
        """Frames to send now, as (peer, frame): announcements, requests, then chunks."""
        self._now = now
        if self._have_at is not None and now >= self._have_at:
            for file_id in self._have_dirty:
                entry = self._files[file_id]
                for peer in self._peers.values():
                    self._announce(peer, entry)
            self._have_dirty.clear()
            self._have_at = None
        self._schedule(now)
        out: list[tuple[str, bytes]] = []
        for peer in self._peers.values():
            out.extend((peer.name, frame) for frame in peer.out)
            peer.out.clear()
        out.extend(self._serve())
        return out

    def _announce(self, peer: _Peer, entry: _File) -> None:
        count = len(entry.manifest.hashes)
        peer.out.append(encode(Have(entry.file_id, count, entry.verified)))
        peer.announced.add(entry.file_id)

    def _serve(self) -> list[tuple[str, bytes]]:
        """Answer queued requests, peers in turn, up to ``max_send_bytes``."""
        out: list[tuple[str, bytes]] = []
        budget = self.config.max_send_bytes
        names = list(self._peers)
        self._serve_turn = (self._serve_turn + 1) % max(len(names), 1)
        order = names[self._serve_turn :] + names[: self._serve_turn]
        active = [self._peers[name] for name in order if self._peers[name].serve]
        while active and budget > 0:
            for peer in active:
                file_id, chunk_hash = peer.serve.popleft()
                blob = self.store.get_chunk(chunk_hash)
                if blob is None:
                    frame = encode(Nope(file_id, chunk_hash))
                    self.stats["nope_sent"] += 1
                else:
                    frame = encode(Chunk(file_id, chunk_hash, blob))
                    self.stats["chunk_served"] += 1
                out.append((peer.name, frame))
                budget -= len(frame)
                if budget <= 0:
                    break
            active = [peer for peer in active if peer.serve]
        return out

    def _schedule(self, now: float) -> None:
        """Ask holders for missing chunks, rarest first, least-loaded holder first."""
        cfg = self.config
        room = cfg.max_in_flight - len(self._in_flight)
        free = {n for n, p in self._peers.items() if len(p.in_flight) < cfg.max_in_flight_per_peer}
        if room <= 0 or not free:
            return
        candidates: list[tuple[int, int, _File, bytes, list[_Peer]]] = []
        for entry in self._files.values():
            held = [
                (p, p.haves[entry.file_id])
                for p in self._peers.values()
                if p.haves.get(entry.file_id)
            ]
            if not entry.missing or not held:
                continue
            for chunk_hash, indices in entry.missing.items():
                if (entry.file_id, chunk_hash) in self._in_flight:
                    continue
                holders = [p for p, bits in held if any(bits >> i & 1 for i in indices)]
                if holders:
                    rank = entry.rank[indices[0]]
                    candidates.append((len(holders), rank, entry, chunk_hash, holders))
        candidates.sort(key=lambda c: (c[0], c[1]))
        for _, _, entry, chunk_hash, holders in candidates:
            banned = entry.tampered.get(chunk_hash, {})
            choices = [p for p in holders if p.name in free and banned.get(p.name, now) <= now]
            if not choices:
                continue
            slow = entry.timed_out.get(chunk_hash, set())
            best = min(choices, key=lambda p: (p.name in slow, _load(p), self._rng.random()))
            key = (entry.file_id, chunk_hash)
            best.in_flight[key] = now + cfg.get_timeout
            best.late.pop(key, None)
            self._in_flight[key] = best.name
            best.out.append(encode(Get(entry.file_id, chunk_hash)))
            self.stats["get_sent"] += 1
            self.gets_by_peer[best.name] += 1
            if entry.started is None:
                entry.started = now
            if len(best.in_flight) >= cfg.max_in_flight_per_peer:
                free.discard(best.name)
            room -= 1
            if room <= 0 or not free:
                return


def _load(peer: _Peer) -> float:
    """Expected wait for one more request to ``peer``: a peer not measured yet is tried first."""
    return (len(peer.in_flight) + 1) * (peer.service or 0.0)
