"""File manifests (signed envelopes of kind ``file``) and the assembler that fetches against one.

Theory of operation
-------------------
Publishing reads the file twice, one chunk at a time: once to seal every chunk and list
the hashes, then, once the manifest envelope is sealed and so has an id, again to store
each chunk in the store under that id (checked against the list, so a file that changed
in between is refused rather than published half old, half new).  The manifest body::

    {"name": str, "size": uint, "chunk_size": uint, "hashes": bytes[32 * n], "root": bytes[32]}
    root = BLAKE2b-256(ROOT_CONTEXT || size u64 LE || chunk_size u32 LE || hashes)

``root`` names the content whoever publishes it and whenever, so two manifests of the
same file can be recognised as one; the hash list itself is authenticated by the
author's signature on the envelope.

:class:`Assembler` is the receiving side and does no network I/O: the fetcher asks it
which chunk hashes are still missing, hands it whatever blob a peer returned, and is told
whether the chunk was accepted, already there, or rejected (then it asks another peer).
Every accepted chunk is committed to the store with the indices it fills before
:meth:`Assembler.offer` returns, so an assembler built again after a restart starts
from what was verified and fetches nothing twice.  :meth:`Assembler.write` streams the
chunks out of the store, decrypting one at a time, into a new file
(:func:`ethersync.chunks.write_new_file`).
"""

from __future__ import annotations

import collections
import enum
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ethersync.chunks import (
    CHUNK_OVERHEAD,
    CHUNK_SIZE,
    HASH_SIZE,
    chunk_count,
    chunk_length,
    open_chunk_untrusted,
    read_chunks,
    seal_chunk,
    write_new_file,
)
from ethersync.envelope import KIND_FILE, Envelope, SealedEnvelope, seal
from ethersync.keys import DeviceKey, SpaceKeys
from ethersync.store import Store
from p2pd.errors import BadFrame, LocalError

#: Domain separation of the content root.
ROOT_CONTEXT = b"ethersync v1 file root"
#: Most chunks of one file: their hashes (32 bytes each) must fit in one envelope
#: (:data:`ethersync.envelope.MAX_BLOB_SIZE`, 64 KiB) beside the other fields.
MAX_CHUNKS = 1984
#: Smallest and largest chunk size a manifest may declare (tests use small ones).
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
#: Longest file name a manifest may carry, in characters (sanitised when written).
MAX_NAME_LENGTH = 1024
_FIELDS = frozenset({"name", "size", "chunk_size", "hashes", "root"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a file envelope promises: name, size, chunking and the hash of every chunk."""

    name: str
    size: int
    chunk_size: int
    hashes: tuple[bytes, ...]
    root: bytes

    def to_body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "hashes": b"".join(self.hashes),
            "root": self.root,
        }

    def length(self, index: int) -> int:
        """Plaintext length of chunk ``index``."""
        return chunk_length(self.size, self.chunk_size, index)


def content_root(size: int, chunk_size: int, hashes: tuple[bytes, ...]) -> bytes:
    data = ROOT_CONTEXT + size.to_bytes(8, "little") + chunk_size.to_bytes(4, "little")
    return hashlib.blake2b(data + b"".join(hashes), digest_size=HASH_SIZE).digest()


def manifest_untrusted(envelope: Envelope) -> Manifest:
    """The manifest of an opened ``file`` envelope, every field checked."""
    body = envelope.body
    if envelope.kind != KIND_FILE or not isinstance(body, Mapping) or set(body) != _FIELDS:
        raise BadFrame("manifest_fields")
    name, size, chunk_size = body["name"], body["size"], body["chunk_size"]
    hashes, root = body["hashes"], body["root"]
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise BadFrame("manifest_name")
    if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise BadFrame("manifest_chunk_size")
    if type(size) is not int or not 0 <= size <= MAX_CHUNKS * chunk_size:
        raise BadFrame("manifest_size")
    count = chunk_count(size, chunk_size)
    if not isinstance(hashes, bytes) or len(hashes) != count * HASH_SIZE:
        raise BadFrame("manifest_hashes")
    split = tuple(hashes[i : i + HASH_SIZE] for i in range(0, len(hashes), HASH_SIZE))
    if not isinstance(root, bytes) or root != content_root(size, chunk_size, split):
        raise BadFrame("manifest_root")
    return Manifest(name=name, size=size, chunk_size=chunk_size, hashes=split, root=root)


def publish_file(
    store: Store,
    keys: SpaceKeys,
    device: DeviceKey,
    path: Path,
    *,
    ts: int,
    name: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    rng: Callable[[int], bytes] = os.urandom,
) -> SealedEnvelope:
    """Chunk, seal and store ``path`` and its manifest; return the manifest to announce."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise LocalError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    try:
        with path.open("rb") as handle:
            hashes = tuple(seal_chunk(keys, piece)[0] for piece in read_chunks(handle, chunk_size))
            size = handle.tell()
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror}") from None
    if len(hashes) > MAX_CHUNKS:
        raise LocalError(f"{path} is too large: at most {MAX_CHUNKS * chunk_size} bytes")
    manifest = Manifest(
        name=name or path.name,
        size=size,
        chunk_size=chunk_size,
        hashes=hashes,
        root=content_root(size, chunk_size, hashes),
    )
    sealed = seal(
        keys,
        device,
        seq=store.next_seq(device.public),
        ts=ts,
        kind=KIND_FILE,
        body=manifest.to_body(),
        rng=rng,
    )
    assembler = Assembler(store, keys, sealed.id, manifest)
    try:
        with path.open("rb") as handle:
            for piece in read_chunks(handle, chunk_size):
                assembler.offer(*seal_chunk(keys, piece))
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror}") from None
    if not assembler.complete:
        raise LocalError(f"{path} changed while it was being published; publish it again")
    store.put_envelope(sealed.envelope, sealed.blob)
    return sealed


class Offer(enum.Enum):
    """What :meth:`Assembler.offer` did with a chunk."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Assembler:
    """Verifies chunks of one file against its manifest and persists progress in the store.

    ``drops`` counts rejected chunks by reason (``chunk_unknown``, ``chunk_size``,
    ``chunk_hash``, ``chunk_aead``).
    """

    def __init__(self, store: Store, keys: SpaceKeys, file_id: bytes, manifest: Manifest) -> None:
        self.store = store
        self.keys = keys
        self.file_id = file_id
        self.manifest = manifest
        self.drops: collections.Counter[str] = collections.Counter()
        self._indices: dict[bytes, list[int]] = collections.defaultdict(list)
        for index, digest in enumerate(manifest.hashes):
            self._indices[digest].append(index)
        self._verified = store.verified_indices(file_id)

    @property
    def complete(self) -> bool:
        return len(self._verified) == len(self.manifest.hashes)

    @property
    def verified_bytes(self) -> int:
        return sum(self.manifest.length(index) for index in self._verified)

    def missing(self) -> list[bytes]:
        """Hashes of the chunks still wanted, each once, in file order."""
        wanted: dict[bytes, None] = {}
        for index, digest in enumerate(self.manifest.hashes):
            if index not in self._verified:
                wanted[digest] = None
        return list(wanted)

    def offer(self, chunk_hash: bytes, blob: bytes) -> Offer:
        """Check a chunk a peer sent as ``chunk_hash``; store it if it is the one wanted."""
        indices = self._indices.get(chunk_hash)
        if not indices:
            self.drops["chunk_unknown"] += 1
            return Offer.REJECTED
        todo = [index for index in indices if index not in self._verified]
        if not todo:
            return Offer.DUPLICATE
        # Equal hashes mean equal bytes, so only indices of this blob's length can take it.
        length = len(blob) - CHUNK_OVERHEAD
        todo = [index for index in todo if self.manifest.length(index) == length] or todo[:1]
        try:
            open_chunk_untrusted(self.keys, blob, chunk_hash, self.manifest.length(todo[0]))
        except BadFrame as exc:
            self.drops[exc.reason] += 1
            return Offer.REJECTED
        self.store.put_verified_chunk(self.file_id, chunk_hash, todo, blob)
        self._verified.update(todo)
        return Offer.ACCEPTED

    def plaintext(self) -> Iterator[bytes]:
        """The file's bytes, one chunk at a time, read back from the store and checked again."""
        if not self.complete:
            raise LocalError("the file is not complete yet")
        return self._plaintext()

    def _plaintext(self) -> Iterator[bytes]:
        for index, digest in enumerate(self.manifest.hashes):
            blob = self.store.get_chunk(digest)
            if blob is None:
                raise LocalError(f"chunk {index} vanished from the store (pruned?)")
            try:
                yield open_chunk_untrusted(self.keys, blob, digest, self.manifest.length(index))
            except BadFrame:
                raise LocalError(f"chunk {index} is damaged in the store") from None

    def write(self, download_dir: Path) -> Path:
        """Write the complete file into ``download_dir`` under a safe, unused name."""
        return write_new_file(download_dir, self.manifest.name, self.plaintext())
