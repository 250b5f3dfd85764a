"""The fetch core in a swarm: several FetchCores wired through an in-memory network.

The network gives each node an uplink of limited bandwidth and a fixed latency, so a
lone seeder is the bottleneck a swarm must route around, and time only moves when the
next frame arrives or a core's timer fires (explicit ``now``, no clock).
"""

from __future__ import annotations

import heapq
import os
import random
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ethersync.envelope import open_untrusted
from ethersync.fetch import ChunkRejected, Event, FetchConfig, FetchCore, FileComplete, FileProgress
from ethersync.fetch_wire import Chunk, Get, Have, Nope, decode_untrusted, encode
from ethersync.keys import DeviceKey, SpaceKeys
from ethersync.manifest import MIN_CHUNK_SIZE, Manifest, manifest_untrusted, publish_file
from ethersync.store import Store

KEYS = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
OTHER_KEYS = SpaceKeys.from_space_key(b"i" * 16, b"x" * 32)
ALICE = DeviceKey.from_seed(b"a" * 32)
CHUNK = MIN_CHUNK_SIZE
#: Seconds one frame takes across the network, and bytes/s of every node's uplink.
LATENCY = 0.02
UPLINK = 64 * 1024.0
#: Simulated seconds after which a test gives up.
HORIZON = 600.0

Mangle = Callable[[str, str, bytes], bytes | None]


@dataclass(order=True)
class _Packet:
    at: float
    seq: int
    src: str = field(compare=False)
    dst: str = field(compare=False)
    frame: bytes = field(compare=False)


class Net:
    """Cores by name, links between them, and frames in flight ordered by arrival."""

    def __init__(self, mangle: Mangle | None = None) -> None:
        self.cores: dict[str, FetchCore] = {}
        self.events: dict[str, list[Event]] = {}
        self.mangle = mangle
        self.now = 0.0
        self._queue: list[_Packet] = []
        self._seq = 0
        self._free_at: dict[str, float] = {}
        self.max_in_flight_seen = 0

    def add(self, name: str, core: FetchCore) -> None:
        self.cores[name] = core
        self.events.setdefault(name, [])
        self._free_at.setdefault(name, 0.0)

    def connect(self, a: str, b: str) -> None:
        assert self.cores[a].add_peer(b) and self.cores[b].add_peer(a)
        self.flush(a)
        self.flush(b)

    def inject(self, at: float, src: str, dst: str, frame: bytes) -> None:
        """A frame from a node that runs no core (a hostile one)."""
        self._seq += 1
        heapq.heappush(self._queue, _Packet(at, self._seq, src, dst, frame))

    def flush(self, name: str) -> None:
        core = self.cores[name]
        for dst, frame in core.datagrams_to_send(self.now):
            sent = self.mangle(name, dst, frame) if self.mangle else frame
            if sent is None:
                continue
            depart = max(self.now, self._free_at[name]) + len(sent) / UPLINK
            self._free_at[name] = depart
            self._seq += 1
            heapq.heappush(self._queue, _Packet(depart + LATENCY, self._seq, name, dst, sent))
        while (event := core.next_event()) is not None:
            self.events[name].append(event)
        cfg = core.config
        assert core.in_flight() <= cfg.max_in_flight
        for peer in self.cores:
            assert core.in_flight(peer) <= cfg.max_in_flight_per_peer
        self.max_in_flight_seen = max(self.max_in_flight_seen, core.in_flight())

    def step(self) -> bool:
        """Advance to the next arrival or timer; False when nothing is left to happen."""
        times = [core.get_timer() for core in self.cores.values()]
        pending = [t for t in times if t is not None]
        if self._queue:
            pending.append(self._queue[0].at)
        if not pending:
            return False
        self.now = max(self.now, min(pending))
        while self._queue and self._queue[0].at <= self.now:
            packet = heapq.heappop(self._queue)
            if packet.dst in self.cores:
                self.cores[packet.dst].receive_untrusted(packet.src, packet.frame, self.now)
                self.flush(packet.dst)
        for name, core in self.cores.items():
            timer = core.get_timer()
            if timer is not None and timer <= self.now:
                core.handle_timer(self.now)
                self.flush(name)
        return True

    def run(self, until: Callable[[], bool], horizon: float = HORIZON) -> None:
        while not until():
            assert self.now < horizon, "the swarm did not finish in time"
            assert self.step(), "the swarm went quiet before finishing"


@dataclass
class Published:
    data: bytes
    file_id: bytes
    manifest: Manifest
    seeder: Store


def _publish(tmp: Path, chunks: int, chunk_size: int = CHUNK) -> Published:
    data = os.urandom(chunks * chunk_size - 100)
    source = tmp / "source.bin"
    source.write_bytes(data)
    store = Store(tmp / "seeder.sqlite3")
    sealed = publish_file(
        store, KEYS, ALICE, source, ts=1, name="report.pdf", chunk_size=chunk_size
    )
    manifest = manifest_untrusted(open_untrusted(sealed.blob, KEYS))
    return Published(data, sealed.id, manifest, store)


def _core(
    store: Store, seed: int, keys: SpaceKeys = KEYS, config: FetchConfig | None = None
) -> FetchCore:
    return FetchCore(store, keys, 0.0, config=config, rng=random.Random(seed))


def _swarm(
    tmp: Path,
    pub: Published,
    fetchers: int,
    seeders: int = 1,
    mangle: Mangle | None = None,
    config: FetchConfig | None = None,
) -> Net:
    """``seeder`` (and ``seeder1``...: more complete copies) and fetchers ``f0``..., all linked."""
    net = Net(mangle)
    for n in range(seeders):
        name = f"seeder{n or ''}"
        net.add(name, _core(pub.seeder, 100 + n))
        net.cores[name].want(pub.file_id, pub.manifest)
    for n in range(fetchers):
        name = f"f{n}"
        net.add(name, _core(Store(tmp / f"{name}.sqlite3"), n + 1, config=config))
        net.cores[name].want(pub.file_id, pub.manifest)
    names = list(net.cores)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            net.connect(a, b)
    return net


def _all_complete(net: Net, file_id: bytes, names: list[str]) -> Callable[[], bool]:
    return lambda: all(net.cores[name].complete(file_id) for name in names)


def test_four_fetchers_get_the_file_from_all_peers_at_once(tmp_path: Path) -> None:
    pub = _publish(tmp_path, 48)
    net = _swarm(tmp_path, pub, 4)
    fetchers = [f"f{n}" for n in range(4)]
    net.run(_all_complete(net, pub.file_id, fetchers))
    for name in fetchers:
        core = net.cores[name]
        written = core.assembler(pub.file_id).write(tmp_path / name)
        assert written.read_bytes() == pub.data
        assert net.events[name][-1] == FileComplete(pub.file_id)
        progress = [e for e in net.events[name] if isinstance(e, FileProgress)]
        assert progress[-1].verified_bytes == progress[-1].total_bytes == len(pub.data)
        assert all(e.rate > 0 for e in progress[1:])
        assert not core.drops and core.stats["chunk_accepted"] == 48
        # Requests beyond one per chunk are endgame copies: at most one per open request.
        assert core.stats["get_sent"] - 48 <= core.config.max_in_flight
        # Every fetcher asked several peers, not only the seeder.
        assert len(core.gets_by_peer) >= 3, core.gets_by_peer
    served = net.cores["seeder"].stats["chunk_served"]
    assert served < 4 * 48 * 0.75, "the fetchers served each other a good part of the file"


def test_a_restarted_fetcher_fetches_only_missing_chunks(tmp_path: Path) -> None:
    pub = _publish(tmp_path, 24)
    net = _swarm(tmp_path, pub, 1)
    first = net.cores["f0"]
    net.run(lambda: first.assembler(pub.file_id).verified_bytes >= 10 * CHUNK)
    # The process dies: a new core on the same store, reconnected.
    net.cores["seeder"].remove_peer("f0")
    resumed = _core(first.store, 7)
    net.add("f0", resumed)
    resumed.want(pub.file_id, pub.manifest)
    held = len(first.store.verified_indices(pub.file_id))
    assert 10 <= held < 24
    net.connect("seeder", "f0")
    net.run(lambda: resumed.complete(pub.file_id))
    assert resumed.stats["get_sent"] == 24 - held
    assert resumed.assembler(pub.file_id).write(tmp_path / "dl").read_bytes() == pub.data


def _tamper_from(evil: str) -> Mangle:
    def mangle(src: str, dst: str, frame: bytes) -> bytes | None:
        if src != evil:
            return frame
        parsed = decode_untrusted(frame)
        if not isinstance(parsed, Chunk):
            return frame
        blob = bytearray(parsed.blob)
        blob[-1] ^= 1
        return encode(Chunk(parsed.file_id, parsed.chunk_hash, bytes(blob)))

    return mangle


def test_a_tampered_chunk_is_counted_and_fetched_from_another_peer(tmp_path: Path) -> None:
    pub = _publish(tmp_path, 16)
    # seeder1 holds a complete copy gone bad: it announces everything and serves garbage.
    net = _swarm(tmp_path, pub, 1, seeders=2, mangle=_tamper_from("seeder1"))
    victim = net.cores["f0"]
    net.run(lambda: victim.complete(pub.file_id))
    rejected = [e for e in net.events["f0"] if isinstance(e, ChunkRejected)]
    assert rejected and all(e.peer == "seeder1" and e.file_id == pub.file_id for e in rejected)
    assert victim.drops["fetch_tampered"] == len(rejected) <= victim.gets_by_peer["seeder1"]
    assert victim.assembler(pub.file_id).drops["chunk_hash"] == len(rejected)
    assert victim.stats["chunk_accepted"] == 16, "every chunk came from the honest seeder"
    assert victim.assembler(pub.file_id).write(tmp_path / "dl").read_bytes() == pub.data


def test_a_peer_without_the_passphrase_stores_nothing(tmp_path: Path) -> None:
    pub = _publish(tmp_path, 8)
    net = Net()
    net.add("seeder", _core(pub.seeder, 0))
    net.cores["seeder"].want(pub.file_id, pub.manifest)
    outsider_store = Store(tmp_path / "outsider.sqlite3")
    outsider = _core(outsider_store, 1, keys=OTHER_KEYS)
    net.add("outsider", outsider)
    # Worst case: it got the manifest somehow, and the seeder serves it ciphertext.
    outsider.want(pub.file_id, pub.manifest)
    net.connect("seeder", "outsider")
    net.run(lambda: outsider.stats["get_sent"] >= 8 and not outsider.in_flight())
    assert outsider_store.counts().chunks == 0
    assert not outsider.complete(pub.file_id)
    assert outsider.drops["fetch_tampered"] >= 8
    assert outsider.assembler(pub.file_id).drops["chunk_aead"] >= 8


def _black_hole(victim: str) -> Mangle:
    return lambda src, dst, frame: None if src == victim and b"chunk" in frame[:16] else frame


def _fetch_past_a_black_hole(tmp: Path, config: FetchConfig) -> tuple[Net, FetchCore]:
    """seeder1 announces every chunk and never answers; f0 fetches with ``config``."""
    pub = _publish(tmp, 12)
    net = _swarm(tmp, pub, 1, seeders=2, mangle=_black_hole("seeder1"), config=config)
    fetcher = net.cores["f0"]
    net.run(lambda: fetcher.complete(pub.file_id))
    assert fetcher.assembler(pub.file_id).write(tmp / "dl").read_bytes() == pub.data
    return net, fetcher


def test_an_unanswered_request_times_out_and_is_asked_elsewhere(tmp_path: Path) -> None:
    net, fetcher = _fetch_past_a_black_hole(tmp_path, FetchConfig(endgame_copies=1))
    assert fetcher.stats["timeout"] == fetcher.gets_by_peer["seeder1"] > 0
    assert fetcher.gets_by_peer["seeder"] == 12
    assert net.now >= fetcher.config.get_timeout


def test_the_endgame_asks_an_idle_holder_instead_of_waiting_for_a_stalled_one(
    tmp_path: Path,
) -> None:
    net, fetcher = _fetch_past_a_black_hole(tmp_path, FetchConfig())
    assert fetcher.gets_by_peer["seeder1"] > 0 and fetcher.stats["timeout"] == 0
    assert net.now < 1.0 < fetcher.config.get_timeout


@pytest.mark.parametrize("per_peer,total", [(1, 1), (2, 3), (8, 32)])
def test_requests_in_flight_stay_within_bounds(tmp_path: Path, per_peer: int, total: int) -> None:
    pub = _publish(tmp_path, 20)
    net = Net()
    config = FetchConfig(max_in_flight_per_peer=per_peer, max_in_flight=total)
    for seed, name in enumerate(("s1", "s2", "s3")):
        net.add(name, _core(pub.seeder, seed, config=config))
        net.cores[name].want(pub.file_id, pub.manifest)
    fetcher = _core(Store(tmp_path / "f.sqlite3"), 4, config=config)
    net.add("f", fetcher)
    fetcher.want(pub.file_id, pub.manifest)
    for name in ("s1", "s2", "s3"):
        net.connect(name, "f")
    net.run(lambda: fetcher.complete(pub.file_id))  # Net.flush checks the bounds
    assert net.max_in_flight_seen == min(total, 3 * per_peer)


@pytest.mark.parametrize("chunks,fetchers", [(200, 4), (200, 8)])
def test_a_swarm_beats_the_seeder_alone(tmp_path: Path, chunks: int, fetchers: int) -> None:
    pub = _publish(tmp_path, chunks)
    net = _swarm(tmp_path, pub, fetchers)
    names = [f"f{n}" for n in range(fetchers)]
    net.run(_all_complete(net, pub.file_id, names))
    wire = chunks * (CHUNK + 40) / UPLINK  # seconds to upload one copy of the sealed chunks
    served = net.cores["seeder"].stats["chunk_served"]
    print(
        f"{chunks} x {fetchers}: seeder sent {served} of {chunks * fetchers};"
        f" all complete {net.now:.2f} s; seeder alone {fetchers * wire:.2f} s;"
        f" one copy {wire:.2f} s"
    )
    assert served < chunks * fetchers / 2
    assert net.now < fetchers * wire / 2


def test_memory_is_bounded_by_requests_in_flight_not_file_size(tmp_path: Path) -> None:
    chunk_size = 16 * 1024
    pub = _publish(tmp_path, 256, chunk_size)  # a 4 MiB file
    net = _swarm(tmp_path, pub, 2)
    names = ["f0", "f1"]
    tracemalloc.start()
    try:
        net.run(_all_complete(net, pub.file_id, names))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak {peak / 1024:.0f} KiB moving a {len(pub.data) // 1024} KiB file to 2 fetchers")
    # Chunks exist only in flight (at most 32 requests per fetcher) and in the call that
    # handles them; the file itself never is in memory.
    assert peak < 2 * 32 * chunk_size


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_hostile_peer_cannot_stop_an_honest_fetch(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    pub = _publish(tmp, 12)
    net = _swarm(tmp, pub, 1)
    fetcher = net.cores["f0"]
    assert fetcher.add_peer("mallory")
    hashes = st.sampled_from(pub.manifest.hashes)
    blobs = st.binary(min_size=CHUNK - 60, max_size=CHUNK + 60)
    everything = (1 << 12) - 1
    frames = st.one_of(
        st.builds(Have, st.just(pub.file_id), st.just(12), st.integers(0, everything)),
        st.builds(Get, st.just(pub.file_id), hashes),
        st.builds(Nope, st.just(pub.file_id), hashes),
        st.builds(Chunk, st.just(pub.file_id), hashes, blobs),
    ).map(encode) | st.binary(max_size=64)
    attack = data.draw(st.lists(st.tuples(st.floats(0, 60), frames), max_size=40))
    for at, frame in attack:
        net.inject(at, "mallory", "f0", frame)
    net.run(lambda: fetcher.complete(pub.file_id))
    assert fetcher.assembler(pub.file_id).write(tmp / "dl").read_bytes() == pub.data
    assert fetcher.stats["chunk_accepted"] == 12
