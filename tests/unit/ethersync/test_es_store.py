"""The SQLite store: idempotent puts, version vectors, retention, and nothing acknowledged lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ethersync.envelope import KIND_FILE, KIND_MSG, SealedEnvelope, seal
from ethersync.keys import DeviceKey, SpaceKeys
from ethersync.store import Retention, Store, default_store_path
from p2pd.errors import LocalError, StateDirError

KEYS = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
ALICE = DeviceKey.from_seed(b"a" * 32)
BOB = DeviceKey.from_seed(b"b" * 32)


def _env(seq: int, author: DeviceKey = ALICE, ts: int = 1000, size: int = 10) -> SealedEnvelope:
    return seal(KEYS, author, seq=seq, ts=ts, kind=KIND_MSG, body=b"m" * size)


def _put(store: Store, sealed: SealedEnvelope) -> bool:
    return store.put_envelope(sealed.envelope, sealed.blob)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "space.sqlite3")


def test_put_is_idempotent_and_get_returns_the_blob(store: Store) -> None:
    sealed = _env(1)
    assert _put(store, sealed)
    assert not _put(store, sealed)
    assert store.has(sealed.id) and store.get(sealed.id) == sealed.blob
    assert store.get(b"\0" * 32) is None and not store.has(b"\0" * 32)
    assert store.stats["duplicate"] == 1
    meta = store.get_meta(sealed.id)
    assert meta is not None and (meta.author, meta.seq, meta.kind) == (ALICE.public, 1, "msg")
    assert meta.size == len(sealed.blob) and store.get_meta(b"\0" * 32) is None
    assert store.list_envelopes() == [meta] and store.list_envelopes("file") == []


def test_blob_must_match_the_envelope(store: Store) -> None:
    one, two = _env(1), _env(2)
    with pytest.raises(LocalError):
        store.put_envelope(one.envelope, two.blob)
    assert store.counts().envelopes == 0


def test_garbage_file_is_a_state_dir_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateDirError, match="move it away"):
        Store(path)


def test_unknown_schema_is_a_state_dir_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StateDirError, match="schema 99"):
        Store(path)


def test_equivocation_keeps_the_first_envelope(store: Store) -> None:
    first, second = _env(1), _env(1, size=11)
    assert _put(store, first)
    assert not _put(store, second)
    assert store.stats["conflict"] == 1
    assert store.get(first.id) == first.blob and not store.has(second.id)


def test_version_vector_counts_contiguous_seqs_only(store: Store) -> None:
    envs = {seq: _env(seq) for seq in range(1, 6)}
    for seq in (1, 2, 4):
        _put(store, envs[seq])
    _put(store, _env(1, BOB))
    assert store.version_vector() == {ALICE.public: 2, BOB.public: 1}
    _put(store, envs[3])
    assert store.version_vector()[ALICE.public] == 4
    assert store.next_seq(ALICE.public) == 5
    assert store.next_seq(b"\0" * 32) == 1


def test_missing_after_lists_what_a_peer_lacks_in_order(store: Store) -> None:
    envs = [_env(seq) for seq in range(1, 6)]
    for sealed in reversed(envs):
        _put(store, sealed)
    assert store.missing_after(ALICE.public, 2) == [e.id for e in envs[2:]]
    assert store.missing_after(ALICE.public, 2, limit=2) == [e.id for e in envs[2:4]]
    assert store.missing_after(ALICE.public, 5) == []
    assert store.missing_after(BOB.public, 0) == []


def test_reopened_store_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as store:
        _put(store, _env(1))
    with Store(path) as store:
        assert store.version_vector() == {ALICE.public: 1}
        assert store.counts().envelopes == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_path_is_per_space_under_the_data_dir(tmp_path: Path) -> None:
    path = default_store_path(KEYS.space_id, tmp_path)
    assert path == tmp_path / "ethersync" / f"{KEYS.space_id.hex()}.sqlite3"


def test_retention_by_age_keeps_the_version_vector(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3", Retention(max_age_ms=100))
    old, new = _env(1, ts=1000), _env(2, ts=1200)
    _put(store, old)
    _put(store, new)
    assert store.prune(now_ms=1250) == 1
    assert store.get(old.id) is None and store.get(new.id) == new.blob
    assert store.version_vector() == {ALICE.public: 2}
    assert not _put(store, old), "a pruned envelope must not come back"
    assert store.stats["pruned"] == 1
    assert store.missing_after(ALICE.public, 0) == [new.id]


def test_retention_by_size_drops_oldest_first(tmp_path: Path) -> None:
    envs = [_env(seq, ts=1000 + seq, size=1000) for seq in range(1, 6)]
    budget = sum(len(e.blob) for e in envs[-2:])
    store = Store(tmp_path / "s.sqlite3", Retention(max_bytes=budget))
    for sealed in envs:
        _put(store, sealed)
    assert store.prune(now_ms=0) == 3
    assert [store.get(e.id) is not None for e in envs] == [False] * 3 + [True] * 2
    assert store.counts().bytes <= budget


def test_tombstones_above_the_vector_still_say_seen(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3", Retention(max_age_ms=10))
    gap_child = _env(3, ts=0)
    _put(store, _env(1, ts=1000))
    _put(store, gap_child)
    store.prune(now_ms=1000)
    assert store.has(gap_child.id) and store.get(gap_child.id) is None
    assert not _put(store, gap_child)
    assert store.counts().tombstones == 1


def test_dropping_a_manifest_frees_its_chunks_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3", Retention(max_age_ms=100))
    old = seal(KEYS, ALICE, seq=1, ts=0, kind=KIND_FILE, body={"x": 1})
    new = seal(KEYS, ALICE, seq=2, ts=500, kind=KIND_FILE, body={"x": 2})
    for sealed in (old, new):
        _put(store, sealed)
    store.put_verified_chunk(old.id, b"h" * 32, [0], b"c1")
    store.put_verified_chunk(old.id, b"s" * 32, [1], b"shared")
    store.put_verified_chunk(new.id, b"s" * 32, [0], b"shared")
    store.prune(now_ms=550)
    assert not store.has_chunk(b"h" * 32)
    assert store.get_chunk(b"s" * 32) == b"shared"
    assert store.verified_indices(old.id) == set()
    assert store.verified_indices(new.id) == {0}


def test_counts(store: Store) -> None:
    sealed = _env(1)
    _put(store, sealed)
    store.put_verified_chunk(sealed.id, b"h" * 32, [0, 2], b"chunk")
    counts = store.counts()
    assert (counts.envelopes, counts.tombstones, counts.chunks) == (1, 0, 1)
    assert counts.bytes == len(sealed.blob) + len(b"chunk")


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ethersync.envelope import seal
    from ethersync.keys import DeviceKey, SpaceKeys
    from ethersync.store import Store

    keys = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
    device = DeviceKey.from_seed(b"c" * 32)
    store = Store(Path(sys.argv[1]))
    seq = 0
    while True:
        seq += 1
        sealed = seal(keys, device, seq=seq, ts=seq, kind="msg", body=b"x" * 3000)
        store.put_envelope(sealed.envelope, sealed.blob)
        sys.stdout.write(sealed.id.hex() + "\\n")
        sys.stdout.flush()
    """
)


@pytest.mark.parametrize("acknowledged", [1, 57, 300])
def test_sigkill_mid_write_loses_nothing_acknowledged(tmp_path: Path, acknowledged: int) -> None:
    path = tmp_path / "crash.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert child.stdout is not None
    ids = [bytes.fromhex(child.stdout.readline().strip()) for _ in range(acknowledged)]
    child.send_signal(signal.SIGKILL)  # while it is writing the next ones
    child.wait()
    child.stdout.close()
    with Store(path) as store:
        assert all(store.has(ident) for ident in ids)
        assert store.version_vector()[DeviceKey.from_seed(b"c" * 32).public] >= acknowledged
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
