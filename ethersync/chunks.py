"""File chunks: fixed-size pieces, encrypted for the space, named by the hash of their ciphertext.

Theory of operation
-------------------
A file is cut into ``chunk_size`` pieces (the last one shorter; an empty file has none).
Each piece is sealed on its own::

    nonce = BLAKE2b(key=nonce_key, data=plaintext, 24)
    blob  = nonce || XChaCha20-Poly1305(chunk_key, nonce, AD = space_id, plaintext)
    hash  = BLAKE2b-256(blob)

* **Why a deterministic nonce is safe here.**  The nonce is a keyed PRF of the whole
  plaintext (the SIV construction), so two encryptions share a nonce only when they share
  the plaintext, and then they are the same bytes: nothing leaks but "these two chunks are
  equal", and only to members, who can decrypt them anyway.  The PRF key is secret, so an
  outsider cannot test a guessed plaintext against a nonce.  In return the same content
  always gives the same chunk, so a re-published file costs no new storage or transfer.
* **Why the ciphertext is hashed.**  A fetcher checks a chunk against the manifest's hash
  list before it spends a decryption, and a peer can serve and verify chunks it
  stores as ciphertext.  The AEAD then proves it came from a member of the space; the
  hash, signed in the manifest, proves it is the one the author published at that index.

The second half of the module puts a downloaded file on disk safely:
:func:`sanitize_filename` turns a name chosen by a remote author into one plain file name,
and :func:`write_new_file` writes a temporary file in the target directory, fsyncs it and
links it under a free name (``name (1).ext`` and so on), so an existing file is never
overwritten and a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import nacl.exceptions
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from ethersync.keys import SpaceKeys
from p2pd.errors import BadFrame, LocalError

#: Default chunk size: 256 KiB keeps a 200 MiB file at 800 chunks (its hash list fits in
#: one envelope) while one lost or tampered chunk costs little to fetch again.
CHUNK_SIZE = 256 * 1024
#: XChaCha20-Poly1305 nonce size.
NONCE_SIZE = 24
#: Poly1305 authenticator size.
TAG_SIZE = 16
#: Bytes a sealed chunk adds to its plaintext.
CHUNK_OVERHEAD = NONCE_SIZE + TAG_SIZE
#: Size of a chunk hash (BLAKE2b-256).
HASH_SIZE = 32

#: Longest sanitised file name in UTF-8 bytes: under the usual 255-byte limit with room for
#: a `` (NNN)`` suffix and the temporary name's prefix and suffix.
MAX_NAME_BYTES = 200
#: Longest extension kept intact when a name is shortened.
MAX_EXTENSION_BYTES = 16
#: Name used when nothing usable is left of the author's name.
FALLBACK_NAME = "unnamed"
#: Characters that separate paths or are forbidden in Windows file names.
_REPLACED = frozenset('/\\<>:"|?*')
#: Unicode categories removed: controls, formatting (bidi overrides, zero-width),
#: surrogates, private use, unassigned, line and paragraph separators.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: Device names Windows reserves whatever the extension (compared case-insensitively).
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(10)}
    | {f"LPT{i}" for i in range(10)}
)
#: How many ``name (N).ext`` candidates to try before giving up.
MAX_NAME_ATTEMPTS = 1000
#: errno values of file systems that cannot hard-link (FAT, some FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})
#: Mode of a downloaded file: it came from a private space, so it stays private until
#: its owner decides otherwise.
DOWNLOAD_FILE_MODE = 0o600


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks a file of ``size`` bytes has (0 for an empty file)."""
    if size < 0 or chunk_size <= 0:
        raise LocalError("size must be >= 0 and chunk size > 0")
    return -(-size // chunk_size)


def chunk_length(size: int, chunk_size: int, index: int) -> int:
    """Plaintext length of chunk ``index`` of a file of ``size`` bytes."""
    if not 0 <= index < chunk_count(size, chunk_size):
        raise LocalError(f"chunk {index} is outside a file of {size} bytes")
    return min(chunk_size, size - index * chunk_size)


def chunk_hash(blob: bytes) -> bytes:
    """The name of a sealed chunk: BLAKE2b-256 of its bytes."""
    return hashlib.blake2b(blob, digest_size=HASH_SIZE).digest()


def seal_chunk(keys: SpaceKeys, plaintext: bytes) -> tuple[bytes, bytes]:
    """``(hash, blob)`` of one chunk; the same plaintext always gives the same bytes."""
    nonce = hashlib.blake2b(plaintext, key=keys.nonce_key, digest_size=NONCE_SIZE).digest()
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, keys.space_id, nonce, keys.chunk_key
    )
    blob = nonce + sealed
    return chunk_hash(blob), blob


def open_chunk_untrusted(keys: SpaceKeys, blob: bytes, expected_hash: bytes, length: int) -> bytes:
    """The plaintext of a chunk that must hash to ``expected_hash`` and hold ``length`` bytes."""
    if len(blob) != length + CHUNK_OVERHEAD:
        raise BadFrame("chunk_size")
    if chunk_hash(blob) != expected_hash:
        raise BadFrame("chunk_hash")
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[NONCE_SIZE:], keys.space_id, blob[:NONCE_SIZE], keys.chunk_key
        )
    except nacl.exceptions.CryptoError:
        raise BadFrame("chunk_aead") from None


def read_chunks(handle: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Plaintext chunks of an open file, one at a time (never the whole file in memory)."""
    while True:
        piece = handle.read(chunk_size)
        if not piece:
            return
        while len(piece) < chunk_size:  # a short read is not the end of a regular file
            more = handle.read(chunk_size - len(piece))
            if not more:
                break
            piece += more
        yield piece


# -- files on disk ----------------------------------------------------------------------


def _truncate_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def sanitize_filename(name: str) -> str:
    """One plain, non-hidden file name from an untrusted one; never a path.

    Separators and Windows-forbidden characters become ``_``; control, formatting and
    unassigned characters go; leading dots and spaces (hidden files, ``..``) and trailing
    dots and spaces go; a Windows device name gets a ``_`` prefix; the result is at most
    :data:`MAX_NAME_BYTES` of UTF-8 and never empty.  Applying it twice changes nothing.
    """
    kept = (
        "_" if char in _REPLACED else char
        for char in name
        if unicodedata.category(char) not in _DROPPED_CATEGORIES
    )
    text = unicodedata.normalize("NFC", "".join(kept))
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) > MAX_EXTENSION_BYTES:
        stem, dot, ext = text, "", ""
    budget = MAX_NAME_BYTES - 1 - len((dot + ext).encode("utf-8"))  # 1: reserved-name "_"
    text = _truncate_utf8(stem, budget) + dot + ext
    text = text.lstrip(". ").rstrip(". ")
    text = unicodedata.normalize("NFC", text) or FALLBACK_NAME
    if text.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        text = "_" + text
    return text


def numbered_name(name: str, number: int) -> str:
    """``name`` for the first try, then ``stem (N).ext`` (``.ext`` kept as is)."""
    if number == 0:
        return name
    stem, ext = os.path.splitext(name)
    return f"{stem} ({number}){ext}"


def write_new_file(directory: Path, name: str, pieces: Iterable[bytes]) -> Path:
    """Write ``pieces`` to a new file under the sanitised ``name``; never replace a file.

    The data goes to a temporary file in ``directory`` (so the final step stays on one
    file system), is fsynced, then hard-linked under the first free candidate name; the
    link fails rather than replace, so two writers or a user's own file are never
    clobbered.  The directory is fsynced so the new name survives a crash.
    """
    safe = sanitize_filename(name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{safe}.{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, DOWNLOAD_FILE_MODE)
    except OSError as exc:
        raise LocalError(f"cannot write into {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        final = _link_free_name(tmp, directory, safe)
        _fsync_directory(directory)
    except OSError as exc:
        raise LocalError(f"cannot write {safe} into {directory}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _link_free_name(tmp: Path, directory: Path, safe: str) -> Path:
    for number in range(MAX_NAME_ATTEMPTS):
        candidate = directory / numbered_name(safe, number)
        try:
            os.link(tmp, candidate, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            if not _reserve_and_replace(tmp, candidate):
                continue
        return candidate
    raise LocalError(f"{MAX_NAME_ATTEMPTS} files named like {safe} exist in {directory}")


def _reserve_and_replace(tmp: Path, candidate: Path) -> bool:
    """For file systems without hard links: claim the name with O_EXCL, then rename onto it.

    The rename replaces only the empty file this call just created, never someone else's;
    the price is that a crash between the two steps leaves an empty file under the name.
    """
    try:
        os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        return False
    os.replace(tmp, candidate)
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
