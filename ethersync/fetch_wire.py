"""Fetch protocol data: frames and their parser, the core's tunables, events and state.

Theory of operation
-------------------
A file is named by its manifest's envelope id (``f``, 32 bytes) and a chunk by the
BLAKE2b-256 hash of its ciphertext (``h``, 32 bytes), so a peer can serve a chunk it
holds without knowing which file asks for it, and a fetcher checks the answer against
the manifest before it spends a decryption.  Every frame is one CBOR map whose ``"t"``
names its type; the types differ from gossip's, so one driver can carry both.

| ``t`` | fields | meaning |
|---|---|---|
| ``have`` | ``f``, ``n``: chunk count, ``b``: bitmap | "I hold these chunks of file f" |
| ``get`` | ``f``, ``h`` | "send me chunk h (of file f)" |
| ``chunk`` | ``f``, ``h``, ``b``: sealed chunk | the answer to a ``get`` |
| ``nope`` | ``f``, ``h`` | "I do not hold chunk h (any more)" |

The bitmap holds bit ``i`` (of byte ``i // 8``, least significant bit first) for chunk
index ``i``; it is ``ceil(n / 8)`` bytes and bits past ``n`` are zero, so one file's
announcement is at most 248 bytes.  A ``have`` with no bit set still says "I want this
file": the peer answers with its own bitmap.

:func:`decode_untrusted` checks sizes and shapes and raises :class:`BadFrame` with a
``fetch_*`` reason for anything else, so the core can count drops by reason.

The second half holds what :mod:`ethersync.fetch` keeps and decides with, as plain data
and pure functions so that module stays the state machine alone: :class:`FetchConfig`,
the events, the per-file and per-peer bookkeeping (bitmaps by random rank) and the choice
of the next request (:func:`pick_request`, :func:`pick_endgame_request`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

import cbor2

from ethersync.chunks import CHUNK_OVERHEAD, HASH_SIZE
from ethersync.manifest import MAX_CHUNK_SIZE, MAX_CHUNKS, Assembler, Manifest
from p2pd.errors import BadFrame, LocalError

#: Bytes of a file id (a manifest envelope's BLAKE2b-256 content hash).
FILE_ID_SIZE = 32
#: Largest sealed chunk a ``chunk`` frame may carry.
MAX_CHUNK_BLOB = MAX_CHUNK_SIZE + CHUNK_OVERHEAD
#: Largest frame: a full chunk plus its CBOR map, type and two ids, with headroom.
#: Anything longer is dropped unparsed.
MAX_FRAME_SIZE = MAX_CHUNK_BLOB + 256
#: Frame types, for a driver that routes frames by ``t`` before handing them over.
FETCH_TYPES = frozenset({"have", "get", "chunk", "nope"})


@dataclass(frozen=True, slots=True)
class Have:
    file_id: bytes
    count: int
    bits: int

    def holds(self, index: int) -> bool:
        return bool(self.bits >> index & 1)


@dataclass(frozen=True, slots=True)
class Get:
    file_id: bytes
    chunk_hash: bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    file_id: bytes
    chunk_hash: bytes
    blob: bytes


@dataclass(frozen=True, slots=True)
class Nope:
    file_id: bytes
    chunk_hash: bytes


Frame = Have | Get | Chunk | Nope


def bitmap_size(count: int) -> int:
    """Bytes of the bitmap of a file of ``count`` chunks."""
    return -(-count // 8)


def encode(frame: Frame) -> bytes:
    """The CBOR bytes of ``frame`` (local values: no checks beyond the types)."""
    body: dict[str, object]
    match frame:
        case Have(file_id, count, bits):
            bitmap = bits.to_bytes(bitmap_size(count), "little")
            body = {"t": "have", "f": file_id, "n": count, "b": bitmap}
        case Get(file_id, chunk_hash):
            body = {"t": "get", "f": file_id, "h": chunk_hash}
        case Chunk(file_id, chunk_hash, blob):
            body = {"t": "chunk", "f": file_id, "h": chunk_hash, "b": blob}
        case Nope(file_id, chunk_hash):
            body = {"t": "nope", "f": file_id, "h": chunk_hash}
    return bytes(cbor2.dumps(body))


def _bytes(value: object, size: int, reason: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise BadFrame(reason)
    return value


def _have_untrusted(obj: dict[object, object], file_id: bytes) -> Have:
    count = obj.get("n")
    if type(count) is not int or not 0 <= count <= MAX_CHUNKS:
        raise BadFrame("fetch_have_count")
    bitmap = _bytes(obj.get("b"), bitmap_size(count), "fetch_have_bitmap")
    bits = int.from_bytes(bitmap, "little")
    if bits >> count:
        raise BadFrame("fetch_have_bitmap")
    return Have(file_id, count, bits)


def decode_untrusted(data: bytes) -> Frame:
    """Parse one fetch frame from a peer; :class:`BadFrame` for anything malformed."""
    if len(data) > MAX_FRAME_SIZE:
        raise BadFrame("fetch_too_big")
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        raise BadFrame("fetch_cbor") from None
    if not isinstance(obj, dict):
        raise BadFrame("fetch_shape")
    kind = obj.get("t")
    if kind not in FETCH_TYPES:
        raise BadFrame("fetch_type")
    file_id = _bytes(obj.get("f"), FILE_ID_SIZE, "fetch_file_id")
    if kind == "have":
        return _have_untrusted(obj, file_id)
    chunk_hash = _bytes(obj.get("h"), HASH_SIZE, "fetch_hash")
    if kind == "get":
        return Get(file_id, chunk_hash)
    if kind == "nope":
        return Nope(file_id, chunk_hash)
    blob = obj.get("b")
    if not isinstance(blob, bytes) or not CHUNK_OVERHEAD <= len(blob) <= MAX_CHUNK_BLOB:
        raise BadFrame("fetch_blob")
    return Chunk(file_id, chunk_hash, blob)


# -- the core's tunables and events -------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """Tunables of the fetch core; two peers with different ones interoperate."""

    #: Requests outstanding to one peer: enough to fill a WAN path's bandwidth-delay
    #: product (8 x 256 KiB = 2 MiB, 160 ms at 100 Mbit/s) without queueing a whole file
    #: behind one slow peer.
    max_in_flight_per_peer: int = 8
    #: Requests outstanding in all: bounds the chunks arriving at once.
    max_in_flight: int = 32
    #: Seconds before an unanswered request is asked elsewhere: 8 queued 256 KiB chunks
    #: take ~17 s on a 1 Mbit/s uplink, so this only catches peers that really stall.
    get_timeout: float = 30.0
    #: Requests open at once for one chunk in the endgame (every missing chunk asked
    #: for): two let an idle holder race a stalled one for the price of one duplicate
    #: answer; 1 turns the endgame off.
    endgame_copies: int = 2
    #: Seconds a peer that sent a tampered chunk is not asked for that chunk again.
    tamper_avoid: float = 600.0
    #: Seconds chunk completions are batched into one ``have`` per file and peer.
    have_delay: float = 0.25
    #: Requests queued from one peer; a well-behaved peer has max_in_flight_per_peer.
    max_serve_queue: int = 16
    #: Chunk bytes one datagrams_to_send call reads and returns at most.
    max_send_bytes: int = 8 * 1024 * 1024
    #: Peers and files tracked at once.
    max_peers: int = 256
    max_files: int = 4096
    #: ``have`` bitmaps kept for files whose manifest has not arrived yet (~250 B each).
    max_pending_haves: int = 1024
    #: Timed-out requests per peer whose late answer is still taken.
    max_late: int = 64
    #: Events kept for the driver; older ones are dropped (counted) past this.
    max_events: int = 4096
    #: Seconds of accepted chunks the reported rate averages over.
    rate_window: float = 5.0

    def __post_init__(self) -> None:
        limits = [self.max_in_flight_per_peer, self.max_in_flight, self.max_serve_queue]
        limits += [self.max_send_bytes, self.max_peers, self.max_files]
        limits += [self.max_pending_haves, self.max_late, self.max_events, self.endgame_copies]
        if min(limits) < 1:
            raise LocalError("fetch limits must be at least 1")
        if min(self.get_timeout, self.have_delay, self.rate_window) <= 0:
            raise LocalError("fetch timeouts and delays must be positive")


@dataclass(frozen=True, slots=True)
class FileProgress:
    file_id: bytes
    verified_bytes: int
    total_bytes: int
    #: Plaintext bytes per second verified over the last ``rate_window``.
    rate: float


@dataclass(frozen=True, slots=True)
class FileComplete:
    file_id: bytes


@dataclass(frozen=True, slots=True)
class ChunkRejected:
    peer: str
    file_id: bytes
    index: int


Event = FileProgress | FileComplete | ChunkRejected


# -- the core's bookkeeping and its choice of requests ------------------------------------

Key = tuple[bytes, bytes]  # (file id, chunk hash)
#: Weight of a new sample in a peer's smoothed service time (as TCP's SRTT, RFC 6298).
SERVICE_GAIN = 0.125
#: Rarity levels told apart: chunks held by 1, 2, 3 or more peers.  Beyond a few holders
#: a chunk is common either way, and each level costs one pass over the bitmaps.
RARITY_LEVELS = 4


def set_bits(mask: int) -> Iterator[int]:
    """Positions of the set bits of ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


@dataclass(slots=True)
class Holding:
    """What one peer holds of one file and how it served it; masks are bits by rank."""

    bits: int = 0  # as announced: bit i is chunk index i
    have: int = 0  # the same chunks, bit rank[i]
    slow: int = 0  # requests that timed out at this peer
    banned: dict[int, float] = field(default_factory=dict)  # rank -> until (tampered)
    banned_mask: int = 0


@dataclass(slots=True)
class FileState:
    """One wanted file.  Chunks are handled by *rank*, a random permutation of indices,
    so the lowest set bit of a mask is the next chunk in this core's own order; a chunk
    whose hash repeats in the file stands at the rank of its first missing index."""

    file_id: bytes
    manifest: Manifest
    assembler: Assembler
    missing: dict[bytes, list[int]]  # chunk hash -> indices, file order
    rank: list[int]  # index -> rank
    by_rank: list[bytes]  # rank -> chunk hash
    wanted: int  # ranks missing and not requested from anyone
    holders: list[int]  # rank -> peers holding it
    levels: list[int]  # ranks held by 1, 2, ..., RARITY_LEVELS or more peers
    verified: int  # bit i: chunk index i verified
    verified_bytes: int
    started: float | None = None
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def rep(self, chunk_hash: bytes) -> int:
        return self.rank[self.missing[chunk_hash][0]]

    def set_have(self, holding: Holding, bits: int) -> None:
        """Replace a peer's bitmap, moving the chunks that changed between rarity levels."""
        for index in set_bits(holding.bits ^ bits):
            rank = self.rank[index]
            bit = 1 << rank
            old = self.holders[rank]
            new = old + 1 if bits >> index & 1 else old - 1
            self.holders[rank] = new
            holding.have ^= bit
            if old:
                self.levels[min(old, RARITY_LEVELS) - 1] &= ~bit
            if new:
                self.levels[min(new, RARITY_LEVELS) - 1] |= bit
        holding.bits = bits


@dataclass(slots=True)
class PeerState:
    name: str
    files: dict[bytes, Holding] = field(default_factory=dict)
    in_flight: dict[Key, tuple[float, int]] = field(default_factory=dict)  # deadline, rank
    late: dict[Key, None] = field(default_factory=dict)
    serve: collections.deque[Key] = field(default_factory=collections.deque)
    out: list[bytes] = field(default_factory=list)
    announced: set[bytes] = field(default_factory=set)
    #: Smoothed seconds from ``get`` to ``chunk`` (None: not measured yet).
    service: float | None = None

    def holding(self, file_id: bytes) -> Holding:
        return self.files.setdefault(file_id, Holding())


def expected_wait(peer: PeerState) -> float:
    """Expected wait for one more request to ``peer``: a peer not measured yet is tried first."""
    return (len(peer.in_flight) + 1) * (peer.service or 0.0)


def held_elsewhere(peers: list[PeerState], active: list[FileState]) -> dict[tuple[str, bytes], int]:
    """Per (peer, file): chunks some *other* peer holds, not timed out or banned there."""
    result: dict[tuple[str, bytes], int] = {}
    for entry in active:
        good = []
        for peer in peers:
            held = peer.files.get(entry.file_id)
            good.append(0 if held is None else held.have & ~held.slow & ~held.banned_mask)
        before = after = 0
        prefix = []
        for mask in good:
            prefix.append(before)
            before |= mask
        for i in range(len(peers) - 1, -1, -1):
            result[(peers[i].name, entry.file_id)] = prefix[i] | after
            after |= good[i]
    return result


def pick_request(
    peer: PeerState, active: list[FileState], elsewhere: dict[tuple[str, bytes], int]
) -> tuple[FileState, int] | None:
    """The rarest wanted chunk ``peer`` holds (lowest rank among equals), if any.

    A chunk that timed out at this peer goes back to it only if no other peer could
    serve it; one it tampered with, not until the ban runs out.
    """
    for level in range(RARITY_LEVELS):
        for entry in active:
            held = peer.files.get(entry.file_id)
            if held is None:
                continue
            usable = held.have & entry.wanted & entry.levels[level] & ~held.banned_mask
            usable &= ~(held.slow & elsewhere[(peer.name, entry.file_id)])
            if usable:
                return entry, (usable & -usable).bit_length() - 1
    return None


def pick_endgame_request(
    peer: PeerState, endgame: list[FileState], asked: dict[Key, set[str]], copies: int
) -> tuple[FileState, int] | None:
    """Endgame: every missing chunk is asked for already; ask an idle holder too.

    A stalled or slow peer then delays the end of a file by one more request rather
    than by ``get_timeout``; at most ``copies`` requests per chunk (``asked``), so the
    duplicate answers cost at most one chunk each.
    """
    for entry in endgame:
        held = peer.files.get(entry.file_id)
        if held is None:
            continue
        for chunk_hash in entry.missing:
            key = (entry.file_id, chunk_hash)
            rank = entry.rep(chunk_hash)
            usable = held.have & ~held.slow & ~held.banned_mask
            askers = asked.get(key, set())
            if usable >> rank & 1 and peer.name not in askers and len(askers) < copies:
                return entry, rank
    return None
