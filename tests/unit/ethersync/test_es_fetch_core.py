"""The fetch frames and one fetch core driven by hand: parsing, serving, bounds, hostile input."""

from __future__ import annotations

import os
import random
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ethersync.envelope import open_untrusted
from ethersync.fetch import FetchConfig, FetchCore, FileComplete, FileProgress
from ethersync.fetch_wire import (
    FILE_ID_SIZE,
    MAX_CHUNK_BLOB,
    MAX_FRAME_SIZE,
    Chunk,
    Frame,
    Get,
    Have,
    Nope,
    decode_untrusted,
    encode,
)
from ethersync.keys import DeviceKey, SpaceKeys
from ethersync.manifest import (
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    Manifest,
    manifest_untrusted,
    publish_file,
)
from ethersync.store import Store
from p2pd.errors import BadFrame, LocalError

KEYS = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
ALICE = DeviceKey.from_seed(b"a" * 32)
CHUNK = MIN_CHUNK_SIZE
CHUNKS = 6
ids = st.binary(min_size=32, max_size=32)


def _publish(tmp: Path, chunks: int = CHUNKS) -> tuple[Store, bytes, Manifest]:
    source = tmp / "source.bin"
    source.write_bytes(os.urandom(max(0, chunks * CHUNK - 10)))
    store = Store(tmp / "seeder.sqlite3")
    sealed = publish_file(store, KEYS, ALICE, source, ts=1, chunk_size=CHUNK)
    return store, sealed.id, manifest_untrusted(open_untrusted(sealed.blob, KEYS))


def _core(store: Store, config: FetchConfig | None = None) -> FetchCore:
    return FetchCore(store, KEYS, 0.0, config=config, rng=random.Random(1))


def _frames(out: list[tuple[str, bytes]], peer: str) -> list[Frame]:
    return [decode_untrusted(frame) for name, frame in out if name == peer]


# -- frames -----------------------------------------------------------------------------


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from(["have", "get", "chunk", "nope"]))
    file_id, chunk_hash = draw(ids), draw(ids)
    if kind == "have":
        count = draw(st.integers(0, MAX_CHUNKS))
        return Have(file_id, count, draw(st.integers(0, (1 << count) - 1)))
    if kind == "chunk":
        return Chunk(file_id, chunk_hash, draw(st.binary(min_size=40, max_size=2000)))
    return Get(file_id, chunk_hash) if kind == "get" else Nope(file_id, chunk_hash)


@given(frames())
def test_every_frame_survives_a_round_trip(frame: Frame) -> None:
    assert decode_untrusted(encode(frame)) == frame


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"t": "have", "f": b"f" * 32, "n": 3, "b": b"\x08"}, "fetch_have_bitmap"),
        ({"t": "have", "f": b"f" * 32, "n": 9, "b": b"\x01"}, "fetch_have_bitmap"),
        ({"t": "have", "f": b"f" * 32, "n": MAX_CHUNKS + 1, "b": b""}, "fetch_have_count"),
        ({"t": "have", "f": b"f" * 32, "n": True, "b": b""}, "fetch_have_count"),
        ({"t": "get", "f": b"f" * 31, "h": b"h" * 32}, "fetch_file_id"),
        ({"t": "nope", "f": b"f" * 32, "h": "h" * 32}, "fetch_hash"),
        ({"t": "chunk", "f": b"f" * 32, "h": b"h" * 32, "b": b"x" * 39}, "fetch_blob"),
        ({"t": "chunk", "f": b"f" * 32, "h": b"h" * 32}, "fetch_blob"),
        ({"t": "push", "f": b"f" * 32}, "fetch_type"),
        ([1, 2], "fetch_shape"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(body: object, reason: str) -> None:
    with pytest.raises(BadFrame) as caught:
        decode_untrusted(cbor2.dumps(body))
    assert caught.value.reason == reason


def test_oversized_or_undecodable_frames_are_refused_unparsed() -> None:
    big = encode(Chunk(b"f" * 32, b"h" * 32, b"x" * MAX_CHUNK_BLOB))
    assert len(big) <= MAX_FRAME_SIZE
    with pytest.raises(BadFrame, match="fetch_too_big"):
        decode_untrusted(b"\0" * (MAX_FRAME_SIZE + 1))
    with pytest.raises(BadFrame, match="fetch_cbor"):
        decode_untrusted(b"\xff\x00")


# -- one core ---------------------------------------------------------------------------


def test_a_peer_is_told_what_we_hold_and_a_get_is_answered(tmp_path: Path) -> None:
    store, file_id, manifest = _publish(tmp_path)
    seeder = _core(store)
    seeder.want(file_id, manifest)
    assert seeder.complete(file_id) and seeder.next_event() is None, "seeding emits nothing"
    assert seeder.add_peer("bob") and not seeder.add_peer("bob")
    [have] = _frames(seeder.datagrams_to_send(0.0), "bob")
    assert have == Have(file_id, CHUNKS, (1 << CHUNKS) - 1)
    assert seeder.receive_untrusted("bob", encode(Get(file_id, manifest.hashes[2])), 0.1)
    assert seeder.receive_untrusted("bob", encode(Get(file_id, b"u" * 32)), 0.1)
    answer, nope = _frames(seeder.datagrams_to_send(0.1), "bob")
    blob = store.get_chunk(manifest.hashes[2])
    assert blob is not None and answer == Chunk(file_id, manifest.hashes[2], blob)
    assert nope == Nope(file_id, b"u" * 32)
    assert seeder.stats["chunk_served"] == seeder.stats["nope_sent"] == 1


def test_requests_beyond_the_serve_queue_are_dropped_and_sending_is_paced(tmp_path: Path) -> None:
    store, file_id, manifest = _publish(tmp_path)
    config = FetchConfig(max_serve_queue=4, max_send_bytes=2 * CHUNK)
    seeder = _core(store, config)
    seeder.add_peer("mallory")
    seeder.datagrams_to_send(0.0)
    for _ in range(10):
        seeder.receive_untrusted("mallory", encode(Get(file_id, manifest.hashes[0])), 0.0)
    assert seeder.drops["fetch_serve_overflow"] == 6
    sent: list[int] = []
    while seeder.get_timer() == 0.0:
        out = seeder.datagrams_to_send(0.0)
        sent.append(sum(len(frame) for _, frame in out))
        assert sum(len(frame) for _, frame in out[:-1]) < config.max_send_bytes
    assert len(sent) == 2 and seeder.stats["chunk_served"] == 4
    assert seeder.get_timer() is None


def test_chunks_nobody_asked_for_are_dropped_unstored(tmp_path: Path) -> None:
    seeder_store, file_id, manifest = _publish(tmp_path)
    fetcher = _core(Store(tmp_path / "bob.sqlite3"))
    fetcher.want(file_id, manifest)
    fetcher.add_peer("alice")
    blob = seeder_store.get_chunk(manifest.hashes[0])
    assert blob is not None
    assert not fetcher.receive_untrusted(
        "alice", encode(Chunk(file_id, manifest.hashes[0], blob)), 1
    )
    assert not fetcher.receive_untrusted("stranger", encode(Get(file_id, b"h" * 32)), 1)
    assert fetcher.drops == {"fetch_unsolicited": 1, "fetch_unknown_peer": 1}
    assert fetcher.store.counts().chunks == 0


def _have_all(file_id: bytes) -> bytes:
    return encode(Have(file_id, CHUNKS, (1 << CHUNKS) - 1))


def test_a_have_heard_before_the_manifest_is_used_once_it_arrives(tmp_path: Path) -> None:
    _, file_id, manifest = _publish(tmp_path)
    fetcher = _core(Store(tmp_path / "bob.sqlite3"))
    fetcher.add_peer("alice")
    assert fetcher.receive_untrusted("alice", _have_all(file_id), 0.0)
    assert fetcher.datagrams_to_send(0.0) == []
    fetcher.want(file_id, manifest)
    sent = _frames(fetcher.datagrams_to_send(0.0), "alice")
    assert sent[0] == Have(file_id, CHUNKS, 0), "our (empty) bitmap says we want it"
    assert {frame.chunk_hash for frame in sent[1:] if isinstance(frame, Get)} == set(
        manifest.hashes
    )


def test_a_have_is_answered_with_ours_once(tmp_path: Path) -> None:
    store, file_id, manifest = _publish(tmp_path)
    seeder = _core(store)
    seeder.want(file_id, manifest)
    seeder.add_peer("bob")
    seeder.datagrams_to_send(0.0)
    empty = encode(Have(file_id, CHUNKS, 0))
    assert seeder.receive_untrusted("bob", empty, 0.0)
    assert seeder.datagrams_to_send(0.0) == [], "bob heard ours on add_peer"
    seeder.remove_peer("bob")
    seeder.add_peer("bob")
    seeder.datagrams_to_send(0.0)
    assert not seeder.receive_untrusted("bob", encode(Have(file_id, CHUNKS + 1, 0)), 0.0)
    assert seeder.drops["fetch_have_count"] == 1


def test_nope_moves_the_request_to_another_holder(tmp_path: Path) -> None:
    _, file_id, manifest = _publish(tmp_path, chunks=1)
    fetcher = _core(Store(tmp_path / "bob.sqlite3"))
    fetcher.want(file_id, manifest)
    for peer in ("p1", "p2"):
        fetcher.add_peer(peer)
        fetcher.receive_untrusted(peer, encode(Have(file_id, 1, 1)), 0.0)
    out = fetcher.datagrams_to_send(0.0)
    [(first, _)] = [(name, frame) for name, frame in out if b"get" in frame]
    other = "p2" if first == "p1" else "p1"
    assert fetcher.receive_untrusted(first, encode(Nope(file_id, manifest.hashes[0])), 0.1)
    assert _frames(fetcher.datagrams_to_send(0.1), other) == [Get(file_id, manifest.hashes[0])]
    assert fetcher.datagrams_to_send(0.2) == [], "the first peer is not asked again"


def test_a_removed_peer_s_requests_go_to_another(tmp_path: Path) -> None:
    _, file_id, manifest = _publish(tmp_path)
    fetcher = _core(Store(tmp_path / "bob.sqlite3"), FetchConfig(max_in_flight_per_peer=CHUNKS))
    fetcher.want(file_id, manifest)
    fetcher.add_peer("p1")
    fetcher.receive_untrusted("p1", _have_all(file_id), 0.0)
    fetcher.datagrams_to_send(0.0)
    fetcher.add_peer("p2")
    fetcher.receive_untrusted("p2", _have_all(file_id), 0.0)
    assert fetcher.in_flight("p1") == CHUNKS and fetcher.in_flight("p2") == 0
    fetcher.remove_peer("p1")
    fetcher.datagrams_to_send(0.1)
    assert fetcher.in_flight("p2") == fetcher.in_flight() == CHUNKS


def test_an_empty_file_is_complete_at_once(tmp_path: Path) -> None:
    _, file_id, manifest = _publish(tmp_path, chunks=0)
    fetcher = _core(Store(tmp_path / "bob.sqlite3"))
    fetcher.want(file_id, manifest)
    assert fetcher.complete(file_id) and fetcher.next_event() is None
    assert fetcher.assembler(file_id).write(tmp_path / "dl").read_bytes() == b""


def test_local_misuse_raises_local_errors(tmp_path: Path) -> None:
    _, file_id, manifest = _publish(tmp_path)
    fetcher = _core(Store(tmp_path / "bob.sqlite3"), FetchConfig(max_files=1))
    fetcher.want(file_id, manifest)
    fetcher.want(file_id, manifest)  # again: nothing changes
    with pytest.raises(LocalError):
        fetcher.want(file_id, Manifest("x", 1, CHUNK, (b"h" * 32,), b"r" * 32))
    with pytest.raises(LocalError):
        fetcher.want(b"o" * 32, manifest)
    with pytest.raises(LocalError):
        fetcher.complete(b"o" * 32)
    with pytest.raises(LocalError):
        FetchConfig(max_in_flight=0)
    with pytest.raises(LocalError):
        FetchConfig(get_timeout=0.0)


# -- hostile peers ----------------------------------------------------------------------


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_frames_never_raise_and_keep_the_bounds(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    seeder_store, file_id, manifest = _publish(tmp)
    config = FetchConfig(max_in_flight_per_peer=2, max_in_flight=3, max_serve_queue=3)
    core = _core(Store(tmp / "bob.sqlite3"), config)
    core.want(file_id, manifest)
    peers = ["m1", "m2", "m3"]
    for peer in peers:
        core.add_peer(peer)
    blobs = [b for h in manifest.hashes if (b := seeder_store.get_chunk(h)) is not None]
    known_ids = st.sampled_from([file_id, *manifest.hashes]) | ids
    structured = st.one_of(
        st.builds(Have, known_ids, st.just(CHUNKS), st.integers(0, (1 << CHUNKS) - 1)),
        st.builds(Get, known_ids, known_ids),
        st.builds(Nope, known_ids, known_ids),
        st.builds(
            Chunk,
            known_ids,
            known_ids,
            st.sampled_from(blobs) | st.binary(min_size=40, max_size=1200),
        ),
    ).map(encode)
    raw = st.binary(max_size=200) | st.builds(
        cbor2.dumps,
        st.dictionaries(st.sampled_from(["t", "f", "h", "n", "b"]), st.integers() | ids),
    )
    now = 0.0
    for _ in range(data.draw(st.integers(1, 40))):
        peer = data.draw(st.sampled_from([*peers, "stranger"]))
        frame = data.draw(structured | raw)
        before = sum(core.drops.values())
        accepted = core.receive_untrusted(peer, frame, now)
        assert accepted == (sum(core.drops.values()) == before)
        now += data.draw(st.floats(0, 40))
        timer = core.get_timer()
        if timer is not None and timer <= now:
            core.handle_timer(now)
        out = core.datagrams_to_send(now)
        assert len(out) <= len(peers) * (1 + config.max_serve_queue + config.max_in_flight)
        assert core.in_flight() <= config.max_in_flight
        assert all(core.in_flight(p) <= config.max_in_flight_per_peer for p in peers)
        while core.next_event() is not None:
            pass
    # Whatever was stored is exactly what the manifest lists, verified.
    stored = core.store.verified_indices(file_id)
    assert all(core.store.get_chunk(manifest.hashes[i]) in blobs for i in stored)


def test_progress_events_track_verified_bytes(tmp_path: Path) -> None:
    store, file_id, manifest = _publish(tmp_path, chunks=2)
    fetcher = _core(Store(tmp_path / "bob.sqlite3"))
    fetcher.want(file_id, manifest)
    fetcher.add_peer("alice")
    fetcher.receive_untrusted("alice", encode(Have(file_id, 2, 3)), 0.0)
    fetcher.datagrams_to_send(0.0)
    for step, digest in enumerate(manifest.hashes, start=1):
        blob = store.get_chunk(digest)
        assert blob is not None
        assert fetcher.receive_untrusted("alice", encode(Chunk(file_id, digest, blob)), step)
    events = []
    while (event := fetcher.next_event()) is not None:
        events.append(event)
    assert events == [
        FileProgress(file_id, CHUNK, manifest.size, CHUNK / 1.0),
        FileProgress(file_id, manifest.size, manifest.size, manifest.size / 2.0),
        FileComplete(file_id),
    ]
    assert len(file_id) == FILE_ID_SIZE


def test_a_full_event_queue_drops_progress_never_completion(tmp_path: Path) -> None:
    store, file_id, manifest = _publish(tmp_path, chunks=3)
    fetcher = _core(Store(tmp_path / "bob.sqlite3"), FetchConfig(max_events=2))
    fetcher.want(file_id, manifest)
    fetcher.add_peer("alice")
    fetcher.receive_untrusted("alice", encode(Have(file_id, 3, 7)), 0.0)
    fetcher.datagrams_to_send(0.0)
    for digest in manifest.hashes:
        blob = store.get_chunk(digest)
        assert blob is not None
        fetcher.receive_untrusted("alice", encode(Chunk(file_id, digest, blob)), 1.0)
    kept = [fetcher.next_event(), fetcher.next_event(), fetcher.next_event()]
    assert kept[1:] == [FileComplete(file_id), None]
    assert isinstance(kept[0], FileProgress) and kept[0].verified_bytes == manifest.size
    assert fetcher.stats["event_dropped"] == 2


def test_chunks_held_for_another_file_are_not_fetched_again(tmp_path: Path) -> None:
    store, first_id, first = _publish(tmp_path)
    again = publish_file(store, KEYS, ALICE, tmp_path / "source.bin", ts=2, chunk_size=CHUNK)
    second = manifest_untrusted(open_untrusted(again.blob, KEYS))
    assert again.id != first_id and second.hashes == first.hashes
    fetcher = _core(Store(tmp_path / "bob.sqlite3"))
    fetcher.want(first_id, first)
    fetcher.add_peer("alice")
    fetcher.receive_untrusted("alice", _have_all(first_id), 0.0)
    for frame in _frames(fetcher.datagrams_to_send(0.0), "alice"):
        if isinstance(frame, Get):
            blob = store.get_chunk(frame.chunk_hash)
            assert blob is not None
            fetcher.receive_untrusted("alice", encode(Chunk(first_id, frame.chunk_hash, blob)), 1)
    assert fetcher.complete(first_id)
    while fetcher.next_event() is not None:
        pass
    fetcher.want(again.id, second)
    assert fetcher.complete(again.id) and fetcher.stats["chunk_reused"] == CHUNKS
    assert fetcher.stats["get_sent"] == CHUNKS, "nothing was asked for the second file"
    events = []
    while (event := fetcher.next_event()) is not None:
        events.append(event)
    assert events[-1] == FileComplete(again.id), "the driver hears it is complete"
