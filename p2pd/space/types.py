"""What a :class:`~p2pd.space.driver.Space` reports on its ``events`` channel.

Immutable values, in the order things happened; :mod:`p2pd.space.events` turns them into
JSON objects and text lines.  Authors and peers are fingerprints; ids are raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PeerJoined:
    fingerprint: str
    path: str
    addr: str


@dataclass(frozen=True, slots=True)
class PeerLeft:
    fingerprint: str
    reason: str


@dataclass(frozen=True, slots=True)
class MessagePosted:
    """A text envelope, new to this node (``local``: published here)."""

    envelope_id: bytes
    author: str
    seq: int
    ts: int
    text: str
    local: bool


@dataclass(frozen=True, slots=True)
class FileAnnounced:
    file_id: bytes
    author: str
    seq: int
    ts: int
    name: str
    size: int
    local: bool


@dataclass(frozen=True, slots=True)
class FileProgressed:
    file_id: bytes
    name: str
    verified_bytes: int
    total_bytes: int
    rate: float


@dataclass(frozen=True, slots=True)
class FileDone:
    """Every chunk is verified; ``path`` is where it was written (None: not written)."""

    file_id: bytes
    name: str
    path: Path | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PeerHasFile:
    """``peer`` announced every chunk of ``file_id``."""

    peer: str
    file_id: bytes


@dataclass(frozen=True, slots=True)
class ItemDelivered:
    """A push carrying our envelope ``envelope_id`` was acknowledged by ``peer``."""

    peer: str
    envelope_id: bytes


SpaceEvent = (
    PeerJoined
    | PeerLeft
    | MessagePosted
    | FileAnnounced
    | FileProgressed
    | FileDone
    | PeerHasFile
    | ItemDelivered
)


__all__ = [
    "FileAnnounced",
    "FileDone",
    "FileProgressed",
    "ItemDelivered",
    "MessagePosted",
    "PeerHasFile",
    "PeerJoined",
    "PeerLeft",
    "SpaceEvent",
]
