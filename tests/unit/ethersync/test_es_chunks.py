"""Chunks (sealed, named by hash, streamed) and safe file names and writes."""

from __future__ import annotations

import errno
import io
import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ethersync.chunks import (
    CHUNK_OVERHEAD,
    FALLBACK_NAME,
    MAX_NAME_BYTES,
    chunk_count,
    chunk_length,
    numbered_name,
    open_chunk_untrusted,
    read_chunks,
    sanitize_filename,
    seal_chunk,
    write_new_file,
)
from ethersync.keys import SpaceKeys
from p2pd.errors import BadFrame, LocalError

KEYS = SpaceKeys.from_space_key(b"i" * 16, b"k" * 32)
OTHER = SpaceKeys.from_space_key(b"i" * 16, b"o" * 32)


class _Trickle(io.RawIOBase):
    """A reader that returns at most 3 bytes per read, like a pipe or a slow disk."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 3) if size >= 0 else 3)


@settings(max_examples=200)
@given(size=st.integers(0, 5000), chunk_size=st.integers(1, 700))
def test_chunking_covers_every_byte_once(size: int, chunk_size: int) -> None:
    data = os.urandom(size)
    pieces = list(read_chunks(io.BytesIO(data), chunk_size))
    assert b"".join(pieces) == data
    assert len(pieces) == chunk_count(size, chunk_size)
    assert [len(p) for p in pieces] == [
        chunk_length(size, chunk_size, i) for i in range(len(pieces))
    ]
    assert all(len(p) == chunk_size for p in pieces[:-1])


@pytest.mark.parametrize(("size", "count"), [(0, 0), (1, 1), (1024, 1), (1025, 2), (3072, 3)])
def test_chunk_count_edges(size: int, count: int) -> None:
    assert chunk_count(size, 1024) == count


def test_short_reads_still_give_full_chunks() -> None:
    data = os.urandom(100)
    pieces = list(read_chunks(_Trickle(data), 16))  # type: ignore[arg-type]
    assert [len(p) for p in pieces] == [16] * 6 + [4]
    assert b"".join(pieces) == data


def test_chunk_length_outside_the_file_is_local_error() -> None:
    with pytest.raises(LocalError):
        chunk_length(10, 4, 3)


def test_chunk_round_trip_is_deterministic_and_hides_plaintext() -> None:
    digest, blob = seal_chunk(KEYS, b"plain text " * 10)
    assert (digest, blob) == seal_chunk(KEYS, b"plain text " * 10)
    assert b"plain text" not in blob and len(blob) == 110 + CHUNK_OVERHEAD
    assert open_chunk_untrusted(KEYS, blob, digest, 110) == b"plain text " * 10
    assert seal_chunk(OTHER, b"plain text " * 10)[1][:24] != blob[:24], "nonce is keyed"


@settings(max_examples=100)
@given(st.data())
def test_tampered_chunk_is_refused(data: st.DataObject) -> None:
    digest, blob = seal_chunk(KEYS, b"abc" * 20)
    tampered = bytearray(blob)
    tampered[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BadFrame, match="chunk_hash"):
        open_chunk_untrusted(KEYS, bytes(tampered), digest, 60)


def test_chunk_checks_length_hash_then_key() -> None:
    digest, blob = seal_chunk(KEYS, b"abc")
    with pytest.raises(BadFrame, match="chunk_size"):
        open_chunk_untrusted(KEYS, blob, digest, 4)
    with pytest.raises(BadFrame, match="chunk_aead"):
        open_chunk_untrusted(OTHER, blob, digest, 3)


# -- names --------------------------------------------------------------------------

HOSTILE = [
    "../../etc/passwd",
    "/etc/shadow",
    "..",
    ".",
    "...",
    "",
    " ",
    "a/../../b",
    "..\\..\\windows\\system32",
    "C:\\boot.ini",
    "file\x00.txt",
    "new\nline",
    "evil\u202etxt.exe",
    "CON",
    "con.txt",
    "LPT1.tar.gz",
    "nul ",
    ".bashrc",
    "trailing. . .",
    "x" * 5000,
    "é" * 300 + ".tar",
    "\udcff",
    "a\u200b\u0301",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_become_plain_names(name: str) -> None:
    _check_safe(sanitize_filename(name))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(codec=None), max_size=400) | st.sampled_from(HOSTILE))
def test_any_name_becomes_a_plain_name(name: str) -> None:
    safe = sanitize_filename(name)
    _check_safe(safe)
    assert sanitize_filename(safe) == safe


@given(st.text(alphabet="abcxyz-_ é", min_size=1, max_size=50).map(str.strip).filter(bool))
def test_ordinary_names_pass_unchanged(name: str) -> None:
    name = unicodedata.normalize("NFC", name)
    if name[0] != "." and name[-1] != ".":
        assert sanitize_filename(name + ".txt") == name + ".txt"


def _check_safe(safe: str) -> None:
    assert safe and safe not in (".", "..")
    assert "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert not safe.startswith((".", " ")) and not safe.endswith((".", " "))
    assert all(unicodedata.category(c)[0] != "C" for c in safe)
    assert len(safe.encode("utf-8")) <= MAX_NAME_BYTES
    assert safe.split(".")[0].rstrip().upper() not in {"CON", "NUL", "LPT1", "AUX", "PRN"}
    assert Path("/downloads", safe).parent == Path("/downloads")


def test_long_names_keep_their_extension() -> None:
    safe = sanitize_filename("x" * 5000 + ".tar")
    assert safe.endswith(".tar") and len(safe.encode()) <= MAX_NAME_BYTES
    assert sanitize_filename("...") == FALLBACK_NAME


def test_separators_are_replaced_not_followed() -> None:
    assert sanitize_filename("../report.pdf") == "_report.pdf"
    assert sanitize_filename("a/b\\c.txt") == "a_b_c.txt"


def test_numbered_names() -> None:
    assert numbered_name("a.txt", 0) == "a.txt"
    assert numbered_name("a.txt", 2) == "a (2).txt"
    assert numbered_name("noext", 1) == "noext (1)"


def test_write_never_overwrites_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(b"mine")
    first = write_new_file(tmp_path, "report.pdf", [b"new ", b"data"])
    second = write_new_file(tmp_path, "report.pdf", iter([b"again"]))
    assert (tmp_path / "report.pdf").read_bytes() == b"mine"
    assert first == tmp_path / "report (1).pdf" and first.read_bytes() == b"new data"
    assert second == tmp_path / "report (2).pdf" and second.read_bytes() == b"again"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "report (1).pdf",
        "report (2).pdf",
        "report.pdf",
    ]


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    def pieces() -> list[bytes]:
        raise LocalError("source vanished")

    with pytest.raises(LocalError):
        write_new_file(tmp_path, "x.bin", (p for p in pieces()))
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_a_symlinked_name_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "f.txt").symlink_to(outside)
    written = write_new_file(downloads, "f.txt", [b"new"])
    assert written == downloads / "f (1).txt"
    assert outside.read_bytes() == b"keep"


def test_without_hard_links_the_name_is_claimed_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "a.txt").write_bytes(b"mine")
    written = write_new_file(tmp_path, "a.txt", [b"theirs"])
    assert written == tmp_path / "a (1).txt" and written.read_bytes() == b"theirs"
    assert (tmp_path / "a.txt").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a (1).txt", "a.txt"]
