"""EtherSync spaces over p2pd sessions: the trio driver and the ``p2pd space`` commands."""

from p2pd.space.driver import (
    FileAnnounced,
    FileDone,
    FileProgressed,
    MessagePosted,
    PeerHasFile,
    PeerJoined,
    PeerLeft,
    Space,
    SpaceEvent,
)

__all__ = [
    "FileAnnounced",
    "FileDone",
    "FileProgressed",
    "MessagePosted",
    "PeerHasFile",
    "PeerJoined",
    "PeerLeft",
    "Space",
    "SpaceEvent",
]
