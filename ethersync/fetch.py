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
* **Fetching.**  :meth:`datagrams_to_send` fills free request slots
  (``max_in_flight_per_peer`` per peer, ``max_in_flight`` in all) least-loaded peer
  first -- load is requests outstanding times the peer's smoothed service time, so a
  seeder queueing requests from many fetchers is asked less than an idle neighbour --
  each with the rarest wanted chunk that peer holds (held by 1, 2, 3 or more peers) and,
  among equally rare ones, the first in this core's own random order: fetchers starting
  together ask the seeder for different chunks and then trade among themselves (a file
  is written only once complete, so file order would buy nothing).  A chunk is asked of
  one peer at a time until the *endgame*: once every missing chunk of a file is asked
  for, an idle holder is asked too (``endgame_copies``), so a stalled peer delays the
  end by one request, not ``get_timeout``.  Bookkeeping is in bitmaps by random rank
  (Python ints), so a request costs a few big-int operations whatever the file size.
  A request unanswered after ``get_timeout`` goes back to the pool; that peer gets it
  again only if no other peer in good standing holds it, and its late answer is still
  taken.  A chunk the Assembler rejects is counted (``drops["fetch_tampered"]``),
  reported as :class:`ChunkRejected`, and that peer is not asked for it for
  ``tamper_avoid``.  A ``nope`` clears the peer's bit and the chunk is asked elsewhere.
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
import heapq
import random

from ethersync.fetch_wire import (
    RARITY_LEVELS,
    SERVICE_GAIN,
    Chunk,
    ChunkRejected,
    Event,
    FetchConfig,
    FileComplete,
    FileProgress,
    FileState,
    Frame,
    Get,
    Have,
    Key,
    Nope,
    PeerState,
    decode_untrusted,
    encode,
    expected_wait,
    held_elsewhere,
    pick_endgame_request,
    pick_request,
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
        self._files: dict[bytes, FileState] = {}
        self._peers: dict[str, PeerState] = {}
        self._in_flight: dict[Key, set[str]] = {}  # peers asked for each chunk
        self._requests = 0
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
        """Fetch, resume, or (when complete) seed file ``file_id`` as ``manifest`` describes it.

        Chunks the store holds for other files are taken at once (with events); a file
        complete in the store already emits nothing.
        """
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
        rank = self._rng.sample(range(count), count)
        by_rank = [b""] * count
        for index, position in enumerate(rank):
            by_rank[position] = manifest.hashes[index]
        entry = FileState(
            file_id=file_id,
            manifest=manifest,
            assembler=assembler,
            missing=missing,
            rank=rank,
            by_rank=by_rank,
            wanted=sum(1 << rank[indices[0]] for indices in missing.values()),
            holders=[0] * count,
            levels=[0] * RARITY_LEVELS,
            verified=sum(1 << index for index in done),
            verified_bytes=sum(manifest.length(index) for index in done),
        )
        self._files[file_id] = entry
        for chunk_hash in [digest for digest in missing if self.store.has_chunk(digest)]:
            self._reuse(entry, chunk_hash, self._now)
        for peer in self._peers.values():
            have = self._pending_haves.pop((peer.name, file_id), None)
            if have is not None and have.count == count and entry.missing:
                entry.set_have(peer.holding(file_id), have.bits)
            self._announce(peer, entry)

    def add_peer(self, peer: str) -> bool:
        """Start trading with ``peer``; False if it is known already or the table is full."""
        if peer in self._peers or len(self._peers) >= self.config.max_peers:
            return False
        state = self._peers[peer] = PeerState(peer)
        for entry in self._files.values():
            self._announce(state, entry)
        return True

    def remove_peer(self, peer: str) -> None:
        """Forget ``peer``; what it was asked for is asked elsewhere."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        for key, (_, rank) in state.in_flight.items():
            self._unrequest(peer, key, rank)
        for file_id, holding in state.files.items():
            self._files[file_id].set_have(holding, 0)
        for pending in [k for k in self._pending_haves if k[0] == peer]:
            del self._pending_haves[pending]

    def complete(self, file_id: bytes) -> bool:
        return self._file(file_id).assembler.complete

    def assembler(self, file_id: bytes) -> Assembler:
        return self._file(file_id).assembler

    def in_flight(self, peer: str | None = None) -> int:
        """Requests outstanding, to ``peer`` or in all (for stats and tests)."""
        if peer is None:
            return self._requests
        state = self._peers.get(peer)
        return 0 if state is None else len(state.in_flight)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def _file(self, file_id: bytes) -> FileState:
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

    def _handle(self, peer: PeerState, frame: Frame, now: float) -> None:
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
                if entry is not None and chunk_hash in entry.missing:
                    holding = peer.holding(file_id)
                    gone = sum(1 << index for index in entry.missing[chunk_hash])
                    entry.set_have(holding, holding.bits & ~gone)

    def _on_have(self, peer: PeerState, have: Have) -> None:
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
        if entry.missing:
            entry.set_have(peer.holding(have.file_id), have.bits)
        if have.file_id not in peer.announced:
            self._announce(peer, entry)

    def _release(self, peer: PeerState, key: Key) -> None:
        """Take ``key`` off ``peer``'s requests; BadFrame if it was never asked of it."""
        flight = peer.in_flight.pop(key, None)
        if flight is not None:
            deadline, rank = flight
            self._unrequest(peer.name, key, rank)
            elapsed = max(0.0, self._now - (deadline - self.config.get_timeout))
            old = peer.service
            peer.service = elapsed if old is None else old + SERVICE_GAIN * (elapsed - old)
        elif key in peer.late:
            del peer.late[key]
            self.stats["late_answer"] += 1
        else:
            raise BadFrame("fetch_unsolicited")

    def _unrequest(self, peer: str, key: Key, rank: int) -> None:
        """A request is over: the chunk is wanted again if no other request for it is open."""
        self._requests -= 1
        asked = self._in_flight[key]
        asked.discard(peer)
        if asked:
            return
        del self._in_flight[key]
        entry = self._files.get(key[0])
        if entry is not None and key[1] in entry.missing:
            entry.wanted |= 1 << rank

    def _on_chunk(
        self, peer: PeerState, file_id: bytes, chunk_hash: bytes, blob: bytes, now: float
    ) -> None:
        entry = self._files.get(file_id)
        if entry is None or chunk_hash not in entry.missing:
            self.stats["chunk_duplicate"] += 1
            return
        result = entry.assembler.offer(chunk_hash, blob)
        if result is Offer.REJECTED:
            holding = peer.holding(file_id)
            rank = entry.rep(chunk_hash)
            holding.banned[rank] = now + self.config.tamper_avoid
            holding.banned_mask |= 1 << rank
            self._emit(ChunkRejected(peer.name, file_id, entry.missing[chunk_hash][0]))
            raise BadFrame("fetch_tampered")
        self._verified(entry, chunk_hash, now)
        for other in self._files.values():
            if chunk_hash in other.missing:
                self._reuse(other, chunk_hash, now)

    def _reuse(self, entry: FileState, chunk_hash: bytes, now: float) -> None:
        """Fill ``entry`` with a chunk the store holds for another file: equal hashes are
        equal bytes, so a file published again, or sharing chunks, costs no transfer."""
        blob = self.store.get_chunk(chunk_hash)
        if blob is not None and entry.assembler.offer(chunk_hash, blob) is not Offer.REJECTED:
            self.stats["chunk_reused"] += 1
            self._verified(entry, chunk_hash, now)

    def _verified(self, entry: FileState, chunk_hash: bytes, now: float) -> None:
        added = 0
        entry.wanted &= ~(1 << entry.rep(chunk_hash))
        for index in entry.missing.pop(chunk_hash):
            entry.verified |= 1 << index
            added += entry.manifest.length(index)
        entry.verified_bytes += added
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
            for peer in self._peers.values():  # nothing left to choose between them for
                peer.files.pop(entry.file_id, None)

    def _rate(self, entry: FileState, now: float) -> float:
        started = now if entry.started is None else entry.started
        span = min(self.config.rate_window, now - started)
        return sum(size for _, size in entry.samples) / span if span > 0 else 0.0

    def _emit(self, event: Event) -> None:
        """Queue ``event``; when full, drop the oldest progress report (it is superseded)."""
        if len(self._events) >= self.config.max_events:
            stale = next((e for e in self._events if isinstance(e, FileProgress)), None)
            if stale is None:
                self._events.popleft()
            else:
                self._events.remove(stale)
            self.stats["event_dropped"] += 1
        self._events.append(event)

    # -- timers -----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` (and then :meth:`datagrams_to_send`) should run next."""
        if any(peer.serve for peer in self._peers.values()):
            return self._now
        times = [t for peer in self._peers.values() for t, _ in peer.in_flight.values()]
        if self._have_at is not None:
            times.append(self._have_at)
        for peer in self._peers.values():
            times.extend(t for held in peer.files.values() for t in held.banned.values())
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Expire requests (to be asked elsewhere) and tamper bans that ran out."""
        self._now = now
        for peer in self._peers.values():
            for key, (deadline, rank) in list(peer.in_flight.items()):
                if deadline > now:
                    continue
                del peer.in_flight[key]
                self._unrequest(peer.name, key, rank)
                if len(peer.late) >= self.config.max_late:
                    del peer.late[next(iter(peer.late))]
                peer.late[key] = None
                if key[1] in self._files[key[0]].missing:
                    peer.holding(key[0]).slow |= 1 << rank
                self.stats["timeout"] += 1
            for held in peer.files.values():
                for rank in [r for r, until in held.banned.items() if until <= now]:
                    del held.banned[rank]
                    held.banned_mask &= ~(1 << rank)

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

    def _announce(self, peer: PeerState, entry: FileState) -> None:
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
        """Fill free request slots, least-loaded peer first, each with its rarest chunk."""
        cfg = self.config
        room = cfg.max_in_flight - self._requests
        active = [entry for entry in self._files.values() if entry.wanted]
        endgame = [e for e in self._files.values() if e.missing and not e.wanted]
        if room <= 0 or not (active or endgame):
            return
        heap = [
            (expected_wait(peer), self._rng.random(), peer.name)
            for peer in self._peers.values()
            if len(peer.in_flight) < cfg.max_in_flight_per_peer
        ]
        heapq.heapify(heap)
        elsewhere = held_elsewhere(list(self._peers.values()), active)
        while heap and room > 0:
            peer = self._peers[heapq.heappop(heap)[2]]
            pick = pick_request(peer, active, elsewhere) or pick_endgame_request(
                peer, endgame, self._in_flight, cfg.endgame_copies
            )
            if pick is None:
                continue
            entry, rank = pick
            chunk_hash = entry.by_rank[rank]
            key = (entry.file_id, chunk_hash)
            entry.wanted &= ~(1 << rank)
            peer.in_flight[key] = (now + cfg.get_timeout, rank)
            peer.late.pop(key, None)
            self._in_flight.setdefault(key, set()).add(peer.name)
            self._requests += 1
            peer.out.append(encode(Get(entry.file_id, chunk_hash)))
            self.stats["get_sent"] += 1
            self.gets_by_peer[peer.name] += 1
            if entry.started is None:
                entry.started = now
            room -= 1
            if len(peer.in_flight) < cfg.max_in_flight_per_peer:
                heapq.heappush(heap, (expected_wait(peer), self._rng.random(), peer.name))
