"""Manifests and the assembler: verify every chunk, resume from the store, write the file once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ethersync.chunks import HASH_SIZE, read_chunks, seal_chunk
from ethersync.envelope import KIND_FILE, MAX_BLOB_SIZE, open_untrusted, seal
from ethersync.keys import DeviceKey, SpaceKeys
from ethersync.manifest import (
    MAX_CHUNKS,
    MAX_NAME_LENGTH,
    MIN_CHUNK_SIZE,
    Assembler,
    Manifest,
    Offer,
    content_root,
    manifest_untrusted,
    publish_file,
)
from ethersync.store import Store
from p2pd.errors import BadFrame, LocalError

KEYS = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
ALICE = DeviceKey.from_seed(b"a" * 32)
CHUNK = MIN_CHUNK_SIZE


def _publish(tmp: Path, data: bytes, name: str = "photo.jpg") -> tuple[Store, Manifest, bytes]:
    """Alice publishes ``data``; returns her store, the manifest as a peer parses it, its id."""
    source = tmp / "source.bin"
    source.write_bytes(data)
    store = Store(tmp / "alice.sqlite3")
    sealed = publish_file(store, KEYS, ALICE, source, ts=1, name=name, chunk_size=CHUNK)
    manifest = manifest_untrusted(open_untrusted(sealed.blob, KEYS))
    return store, manifest, sealed.id


def _fetch_all(source: Store, assembler: Assembler) -> None:
    for digest in assembler.missing():
        blob = source.get_chunk(digest)
        assert blob is not None
        assert assembler.offer(digest, blob) is Offer.ACCEPTED


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(size=st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK]) | st.integers(0, 9000))
def test_published_file_arrives_intact(tmp_path_factory: pytest.TempPathFactory, size: int) -> None:
    tmp = tmp_path_factory.mktemp("pub")
    data = os.urandom(size)
    alice, manifest, file_id = _publish(tmp, data)
    assert manifest.size == size and len(manifest.hashes) == -(-size // CHUNK)
    assert Assembler(alice, KEYS, file_id, manifest).complete, "the publisher serves it all"
    bob = Store(tmp / "bob.sqlite3")
    assembler = Assembler(bob, KEYS, file_id, manifest)
    _fetch_all(alice, assembler)
    assert assembler.complete and assembler.verified_bytes == size
    written = assembler.write(tmp / "downloads")
    assert written.name == "photo.jpg" and written.read_bytes() == data


def test_restarted_assembler_skips_verified_chunks(tmp_path: Path) -> None:
    alice, manifest, file_id = _publish(tmp_path, os.urandom(5 * CHUNK + 7))
    bob_path = tmp_path / "bob.sqlite3"
    first = Assembler(Store(bob_path), KEYS, file_id, manifest)
    for digest in first.missing()[:3]:
        blob = alice.get_chunk(digest)
        assert blob is not None
        first.offer(digest, blob)
    del first  # the process dies here
    resumed = Assembler(Store(bob_path), KEYS, file_id, manifest)
    assert resumed.missing() == list(manifest.hashes[3:])
    assert resumed.verified_bytes == 3 * CHUNK
    _fetch_all(alice, resumed)
    assert resumed.complete


def test_tampered_or_foreign_chunks_are_rejected_and_counted(tmp_path: Path) -> None:
    alice, manifest, file_id = _publish(tmp_path, os.urandom(2 * CHUNK))
    assembler = Assembler(Store(tmp_path / "bob.sqlite3"), KEYS, file_id, manifest)
    digest = manifest.hashes[0]
    good = alice.get_chunk(digest)
    assert good is not None
    bad = bytearray(good)
    bad[100] ^= 1
    assert assembler.offer(digest, bytes(bad)) is Offer.REJECTED
    assert assembler.offer(b"\0" * HASH_SIZE, good) is Offer.REJECTED
    assert assembler.offer(digest, good[:-1]) is Offer.REJECTED
    assert assembler.drops == {"chunk_hash": 1, "chunk_unknown": 1, "chunk_size": 1}
    assert assembler.missing() == list(manifest.hashes)
    assert assembler.offer(digest, good) is Offer.ACCEPTED  # the same chunk from elsewhere
    assert assembler.offer(digest, good) is Offer.DUPLICATE


def test_repeated_chunks_are_fetched_once(tmp_path: Path) -> None:
    alice, manifest, file_id = _publish(tmp_path, b"z" * (4 * CHUNK))
    assert len(set(manifest.hashes)) == 1
    assembler = Assembler(Store(tmp_path / "bob.sqlite3"), KEYS, file_id, manifest)
    assert len(assembler.missing()) == 1
    _fetch_all(alice, assembler)
    assert assembler.complete
    assert assembler.write(tmp_path / "dl").read_bytes() == b"z" * (4 * CHUNK)


def test_incomplete_file_is_not_written(tmp_path: Path) -> None:
    _, manifest, file_id = _publish(tmp_path, b"abc")
    assembler = Assembler(Store(tmp_path / "bob.sqlite3"), KEYS, file_id, manifest)
    with pytest.raises(LocalError):
        assembler.write(tmp_path / "dl")
    assert not (tmp_path / "dl").exists()


def test_hostile_manifest_name_lands_inside_the_download_dir(tmp_path: Path) -> None:
    alice, manifest, file_id = _publish(tmp_path, b"payload", name="../../.ssh/authorized_keys")
    assembler = Assembler(alice, KEYS, file_id, manifest)
    written = assembler.write(tmp_path / "dl")
    assert written.parent == tmp_path / "dl" and written.name == "_.._.ssh_authorized_keys"


def test_largest_manifest_fits_in_one_envelope() -> None:
    hashes = tuple(os.urandom(HASH_SIZE) for _ in range(MAX_CHUNKS))
    size = MAX_CHUNKS * 4 * 1024 * 1024
    chunk_size = 4 * 1024 * 1024
    manifest = Manifest("n" * MAX_NAME_LENGTH, size, chunk_size, hashes, b"")
    body = manifest.to_body()
    body["root"] = content_root(size, chunk_size, hashes)
    sealed = seal(KEYS, ALICE, seq=2**62, ts=2**62, kind=KIND_FILE, body=body)
    assert len(sealed.blob) <= MAX_BLOB_SIZE
    assert manifest_untrusted(open_untrusted(sealed.blob, KEYS)).hashes == hashes


def _body(**overrides: object) -> dict[str, object]:
    hashes = (b"h" * HASH_SIZE, b"g" * HASH_SIZE)
    body: dict[str, object] = {
        "name": "f",
        "size": CHUNK + 1,
        "chunk_size": CHUNK,
        "hashes": b"".join(hashes),
        "root": content_root(CHUNK + 1, CHUNK, hashes),
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"name": ""}, "manifest_name"),
        ({"name": "x" * (MAX_NAME_LENGTH + 1)}, "manifest_name"),
        ({"name": b"f"}, "manifest_name"),
        ({"chunk_size": 1}, "manifest_chunk_size"),
        ({"size": -1}, "manifest_size"),
        ({"size": CHUNK * (MAX_CHUNKS + 1)}, "manifest_size"),
        ({"size": 2 * CHUNK + 1}, "manifest_hashes"),
        ({"hashes": b"h" * 63}, "manifest_hashes"),
        ({"root": b"r" * 32}, "manifest_root"),
        ({"extra": 1}, "manifest_fields"),
    ],
)
def test_bad_manifests_are_refused(overrides: dict[str, object], reason: str) -> None:
    sealed = seal(KEYS, ALICE, seq=1, ts=1, kind=KIND_FILE, body=_body(**overrides))
    with pytest.raises(BadFrame, match=reason):
        manifest_untrusted(open_untrusted(sealed.blob, KEYS))
    assert manifest_untrusted(seal(KEYS, ALICE, seq=1, ts=1, kind="file", body=_body()).envelope)


def test_a_message_is_not_a_manifest() -> None:
    sealed = seal(KEYS, ALICE, seq=1, ts=1, kind="msg", body=_body())
    with pytest.raises(BadFrame, match="manifest_fields"):
        manifest_untrusted(sealed.envelope)


def test_publish_and_write_stream_large_files(tmp_path: Path) -> None:
    """16 MiB through publish, fetch and write with well under 16 MiB of Python memory."""
    size = 16 * 1024 * 1024
    source = tmp_path / "big.bin"
    with source.open("wb") as handle:
        for _ in range(size // (1024 * 1024)):
            handle.write(os.urandom(1024 * 1024))
    alice = Store(tmp_path / "alice.sqlite3")
    tracemalloc.start()
    try:
        sealed = publish_file(alice, KEYS, ALICE, source, ts=1)
        manifest = manifest_untrusted(sealed.envelope)
        assembler = Assembler(Store(tmp_path / "bob.sqlite3"), KEYS, sealed.id, manifest)
        _fetch_all(alice, assembler)
        written = assembler.write(tmp_path / "dl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    with source.open("rb") as one, written.open("rb") as two:
        assert all(a == b for a, b in zip(read_chunks(one), read_chunks(two), strict=True))


def test_publish_refuses_a_file_that_changes_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(3 * CHUNK))
    calls = 0
    real = seal_chunk

    def seal_then_modify(keys: SpaceKeys, plaintext: bytes) -> tuple[bytes, bytes]:
        nonlocal calls
        calls += 1
        if calls == 3:  # the first pass is done reading: change the file
            source.write_bytes(os.urandom(3 * CHUNK))
        return real(keys, plaintext)

    monkeypatch.setattr("ethersync.manifest.seal_chunk", seal_then_modify)
    store = Store(tmp_path / "s.sqlite3")
    with pytest.raises(LocalError, match="changed"):
        publish_file(store, KEYS, ALICE, source, ts=1, chunk_size=CHUNK)
    assert store.counts().envelopes == 0


_FETCHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ethersync.envelope import open_untrusted
    from ethersync.keys import SpaceKeys
    from ethersync.manifest import Assembler, manifest_untrusted
    from ethersync.store import Store

    keys = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
    alice, bob = Store(Path(sys.argv[1])), Store(Path(sys.argv[2]))
    file_id = bytes.fromhex(sys.argv[3])
    blob = alice.get(file_id)
    manifest = manifest_untrusted(open_untrusted(blob, keys))
    assembler = Assembler(bob, keys, file_id, manifest)
    while True:  # fetch the same chunks again and again; report each acceptance
        for digest in assembler.missing():
            assembler.offer(digest, alice.get_chunk(digest))
            sys.stdout.write(digest.hex() + "\\n")
            sys.stdout.flush()
    """
)


def test_fetcher_killed_mid_download_keeps_every_accepted_chunk(tmp_path: Path) -> None:
    alice, manifest, file_id = _publish(tmp_path, os.urandom(40 * CHUNK))
    alice.close()
    bob_path = tmp_path / "bob.sqlite3"
    args = [str(tmp_path / "alice.sqlite3"), str(bob_path), file_id.hex()]
    child = subprocess.Popen(
        [sys.executable, "-c", _FETCHER, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert child.stdout is not None
    accepted = [bytes.fromhex(child.stdout.readline().strip()) for _ in range(17)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    resumed = Assembler(Store(bob_path), KEYS, file_id, manifest)
    assert not set(accepted) & set(resumed.missing())
    assert len(resumed.missing()) <= 40 - 17
