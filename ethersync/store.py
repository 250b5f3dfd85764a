"""The local store of one space: envelopes and file chunks as ciphertext, in SQLite.

Theory of operation
-------------------
One SQLite file per space (``DATA_DIR/ethersync/<space id hex>.sqlite3``, directory 0700,
file 0600), in WAL mode with ``synchronous=FULL``: every write is one transaction, and a
method returns only after its COMMIT is on disk, so whatever a caller was told is stored
survives a crash or power loss at any later moment (tests/unit/ethersync kills a writer
with SIGKILL to check it).  Blobs stay exactly as sealed; the few clear columns (author,
seq, ts, kind, size) are what gossip and retention need, and the file is private to its
owner.

Tables:

* ``envelopes`` (id, author, seq, ts, kind, size, blob): at most one envelope per
  (author, seq).  A second, different id for a taken (author, seq) is an equivocating
  author; the first one stays (counted as ``conflict``).  Retention replaces ``blob`` by
  NULL, leaving a *tombstone* that still says "seen".
* ``authors`` (author, contiguous): the version vector, the highest seq up to which every
  envelope of that author has been stored.  It never goes back, not even when retention
  drops envelopes, so peers never offer them again; an envelope with seq <= contiguous
  that is not stored was pruned and is refused.  Tombstones at or below ``contiguous``
  carry no information beyond it and are deleted.
* ``chunks`` (hash, blob) and ``verified`` (file, idx, hash): chunks that passed
  verification against a manifest, and which indices of which file (a manifest's
  envelope id) they fill, so a restart resumes without refetching.  A chunk lives as
  long as one file refers to it.

Retention (:class:`Retention`) applies by age and total size alike to every envelope,
oldest ``ts`` first; dropping a file manifest drops its chunks.  Nothing is exempt, not
even an author's latest envelope: the version vector lives in ``authors``, so no later
exchange needs the dropped envelope, and a size cap with exemptions would not be a cap.
"""

from __future__ import annotations

import collections
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ethersync.envelope import KIND_FILE, Envelope, envelope_id
from p2pd.errors import LocalError, StateDirError
from p2pd.paths import ensure_state_dir

#: Schema version kept in ``PRAGMA user_version``; a different one is refused, not guessed.
SCHEMA_VERSION = 1
#: Sub-directory of the data directory holding one store per space.
STORE_DIR = "ethersync"
#: File mode of a store: it names authors and times in clear.
STORE_FILE_MODE = 0o600
#: How long a writer waits for another connection's lock before failing, in ms.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS envelopes (
    id BLOB PRIMARY KEY,
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    blob BLOB,
    UNIQUE (author, seq)
);
CREATE INDEX IF NOT EXISTS envelopes_ts ON envelopes (ts) WHERE blob IS NOT NULL;
CREATE TABLE IF NOT EXISTS authors (
    author BLOB PRIMARY KEY,
    contiguous INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    hash BLOB PRIMARY KEY,
    blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS verified (
    file BLOB NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (file, idx)
);
CREATE INDEX IF NOT EXISTS verified_hash ON verified (hash);
"""


@dataclass(frozen=True, slots=True)
class Retention:
    """What to keep: envelopes younger than ``max_age_ms``, at most ``max_bytes`` in all.

    ``None`` means no limit of that kind.  Sizes count envelope and chunk blobs.
    """

    max_age_ms: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """The clear columns of a stored envelope (no blob)."""

    id: bytes
    author: bytes
    seq: int
    ts: int
    kind: str
    size: int


@dataclass(frozen=True, slots=True)
class Counts:
    """How much the store holds."""

    envelopes: int
    tombstones: int
    chunks: int
    bytes: int


def _meta(row: tuple[bytes, bytes, int, int, str, int]) -> StoredEnvelope:
    ident, author, seq, ts, kind, size = row
    return StoredEnvelope(bytes(ident), bytes(author), int(seq), int(ts), str(kind), int(size))


def default_store_path(space_id: bytes, data_dir: Path | None = None) -> Path:
    """Where the store of ``space_id`` lives: under the XDG data dir unless told otherwise."""
    base = data_dir or Path(platformdirs.user_data_dir("p2pd", appauthor=False))
    return base / STORE_DIR / f"{space_id.hex()}.sqlite3"


class Store:
    """One space's SQLite store; one instance per process and thread.

    ``stats`` counts what :meth:`put_envelope` declined: ``duplicate``, ``conflict``
    (another envelope holds that author and seq), ``pruned`` (retention dropped it).
    """

    def __init__(self, path: Path, retention: Retention | None = None) -> None:
        self.path = path
        self.retention = retention or Retention()
        self.stats: collections.Counter[str] = collections.Counter()
        ensure_state_dir(path.parent)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, STORE_FILE_MODE)
            os.close(fd)
            self._db = sqlite3.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StateDirError(f"cannot open store {path}: {exc}") from None
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StateDirError(f"store {path} is not usable ({exc}); move it away") from None

    def _setup(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema {version}, expected {SCHEMA_VERSION}")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- envelopes ------------------------------------------------------------------

    def put_envelope(self, envelope: Envelope, blob: bytes) -> bool:
        """Store an opened envelope; True if it was new, after it is durably committed."""
        if envelope_id(blob) != envelope.id:
            raise LocalError("the blob is not the one the envelope was opened from")
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM envelopes WHERE author = ? AND seq = ?",
                (envelope.author, envelope.seq),
            ).fetchone()
            if row is not None:
                self.stats["duplicate" if row[0] == envelope.id else "conflict"] += 1
                return False
            contiguous = self._contiguous(envelope.author)
            if envelope.seq <= contiguous:
                self.stats["pruned"] += 1
                return False
            db.execute(
                "INSERT INTO envelopes (id, author, seq, ts, kind, size, blob)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    envelope.id,
                    envelope.author,
                    envelope.seq,
                    envelope.ts,
                    envelope.kind,
                    len(blob),
                    blob,
                ),
            )
            while db.execute(
                "SELECT 1 FROM envelopes WHERE author = ? AND seq = ?",
                (envelope.author, contiguous + 1),
            ).fetchone():
                contiguous += 1
            db.execute(
                "INSERT INTO authors (author, contiguous) VALUES (?, ?)"
                " ON CONFLICT (author) DO UPDATE SET contiguous = excluded.contiguous",
                (envelope.author, contiguous),
            )
        return True

    def _contiguous(self, author: bytes) -> int:
        row = self._db.execute(
            "SELECT contiguous FROM authors WHERE author = ?", (author,)
        ).fetchone()
        return int(row[0]) if row else 0

    def has(self, envelope_id: bytes) -> bool:
        """True if this envelope was stored, even if retention has dropped its blob since."""
        row = self._db.execute("SELECT 1 FROM envelopes WHERE id = ?", (envelope_id,))
        return row.fetchone() is not None

    def get(self, envelope_id: bytes) -> bytes | None:
        """The sealed blob, or None if unknown or pruned."""
        row = self._db.execute("SELECT blob FROM envelopes WHERE id = ?", (envelope_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def get_meta(self, envelope_id: bytes) -> StoredEnvelope | None:
        """The clear columns of a held envelope (None if unknown or pruned)."""
        row = self._db.execute(
            "SELECT id, author, seq, ts, kind, size FROM envelopes"
            " WHERE id = ? AND blob IS NOT NULL",
            (envelope_id,),
        ).fetchone()
        return None if row is None else _meta(row)

    def version_vector(self) -> dict[bytes, int]:
        """Author -> highest seq up to which every envelope has been stored."""
        rows = self._db.execute("SELECT author, contiguous FROM authors")
        return {bytes(author): int(seq) for author, seq in rows}

    def missing_after(self, author: bytes, seq: int, limit: int | None = None) -> list[bytes]:
        """Ids of stored envelopes of ``author`` with a seq above ``seq``, oldest first.

        What a peer whose version vector says ``seq`` for ``author`` lacks.
        """
        rows = self._db.execute(
            "SELECT id FROM envelopes WHERE author = ? AND seq > ? AND blob IS NOT NULL"
            " ORDER BY seq LIMIT ?",
            (author, seq, -1 if limit is None else limit),
        )
        return [bytes(row[0]) for row in rows]

    def next_seq(self, author: bytes) -> int:
        """The seq ``author``'s next envelope should carry (one above any seen)."""
        row = self._db.execute(
            "SELECT MAX(seq) FROM envelopes WHERE author = ?", (author,)
        ).fetchone()
        return max(int(row[0] or 0), self._contiguous(author)) + 1

    def list_envelopes(self, kind: str | None = None) -> list[StoredEnvelope]:
        """Clear columns of every held envelope (optionally of one kind), oldest first."""
        query = "SELECT id, author, seq, ts, kind, size FROM envelopes WHERE blob IS NOT NULL"
        args: tuple[str, ...] = ()
        if kind is not None:
            query += " AND kind = ?"
            args = (kind,)
        return [_meta(row) for row in self._db.execute(query + " ORDER BY ts, id", args)]

    # -- chunks -------------------------------------------------------------------

    def put_verified_chunk(
        self, file_id: bytes, chunk_hash: bytes, indices: Iterable[int], blob: bytes
    ) -> None:
        """Store a verified chunk and mark ``indices`` of ``file_id`` done, in one commit."""
        rows = [(file_id, index, chunk_hash) for index in indices]
        if not rows:
            raise LocalError("a verified chunk must fill at least one index")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO chunks (hash, blob) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING",
                (chunk_hash, blob),
            )
            db.executemany(
                "INSERT INTO verified (file, idx, hash) VALUES (?, ?, ?)"
                " ON CONFLICT (file, idx) DO NOTHING",
                rows,
            )

    def get_chunk(self, chunk_hash: bytes) -> bytes | None:
        row = self._db.execute("SELECT blob FROM chunks WHERE hash = ?", (chunk_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    def has_chunk(self, chunk_hash: bytes) -> bool:
        row = self._db.execute("SELECT 1 FROM chunks WHERE hash = ?", (chunk_hash,))
        return row.fetchone() is not None

    def verified_indices(self, file_id: bytes) -> set[int]:
        rows = self._db.execute("SELECT idx FROM verified WHERE file = ?", (file_id,))
        return {int(row[0]) for row in rows}

    # -- retention and counts -------------------------------------------------------

    def prune(self, now_ms: int) -> int:
        """Apply the retention policy at wall-clock ``now_ms``; return envelopes dropped."""
        dropped = 0
        with self._transaction() as db:
            max_age, max_bytes = self.retention.max_age_ms, self.retention.max_bytes
            if max_age is not None:
                old = db.execute(
                    "SELECT id FROM envelopes WHERE blob IS NOT NULL AND ts < ?",
                    (now_ms - max_age,),
                ).fetchall()
                for (ident,) in old:
                    self._drop(bytes(ident))
                dropped += len(old)
            if max_bytes is not None:
                total = self._total_bytes()
                oldest = db.execute(
                    "SELECT id, size, kind FROM envelopes WHERE blob IS NOT NULL ORDER BY ts, id"
                ).fetchall()
                for ident, size, kind in oldest:
                    if total <= max_bytes:
                        break
                    self._drop(bytes(ident))
                    dropped += 1
                    freed_chunks = kind == KIND_FILE
                    total = self._total_bytes() if freed_chunks else total - int(size)
            db.execute(
                "DELETE FROM envelopes WHERE blob IS NULL AND seq <= ("
                " SELECT contiguous FROM authors WHERE authors.author = envelopes.author)"
            )
        return dropped

    def _drop(self, envelope_id: bytes) -> None:
        """Tombstone one envelope and free the chunks only its file used (in a transaction)."""
        self._db.execute("UPDATE envelopes SET blob = NULL WHERE id = ?", (envelope_id,))
        freed = self._db.execute("DELETE FROM verified WHERE file = ?", (envelope_id,))
        if freed.rowcount:
            self._db.execute(
                "DELETE FROM chunks WHERE NOT EXISTS"
                " (SELECT 1 FROM verified WHERE verified.hash = chunks.hash)"
            )

    def _total_bytes(self) -> int:
        row = self._db.execute(
            "SELECT (SELECT COALESCE(SUM(size), 0) FROM envelopes WHERE blob IS NOT NULL)"
            " + (SELECT COALESCE(SUM(LENGTH(blob)), 0) FROM chunks)"
        ).fetchone()
        return int(row[0])

    def counts(self) -> Counts:
        envelopes, tombstones = self._db.execute(
            "SELECT COUNT(blob), COUNT(*) - COUNT(blob) FROM envelopes"
        ).fetchone()
        chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return Counts(int(envelopes), int(tombstones), int(chunks), self._total_bytes())
