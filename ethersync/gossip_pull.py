"""Which peer is streaming us what we lack, and when to ask it again.

Theory of operation
-------------------
After a version-vector exchange, a peer streams us every item we lack.  Two peers
streaming the same backlog would send every item twice, so a node pulls from one peer at
a time: the pull lasts until ``timeout`` after its last new item, and meanwhile other
peers' probes go unanswered (they probe again next round).  When we asked with our own
vector we also know the peer's, the *target*: if the stream goes quiet before our vector
covers it, a message was lost, and we ask again (at most :data:`MAX_PULL_RETRIES` times)
rather than wait a whole anti-entropy round.
"""

from __future__ import annotations

#: Times a quiet pull is asked again before the next anti-entropy round takes over.
MAX_PULL_RETRIES = 3


def behind(ours: dict[bytes, int], theirs: dict[bytes, int]) -> bool:
    """Whether ``theirs`` holds anything ``ours`` lacks."""
    return any(top > ours.get(author, 0) for author, top in theirs.items())


class Pull:
    """The one pull in progress, if any; see the module docstring."""

    __slots__ = ("_retries", "_target", "_timeout", "_until", "peer")

    def __init__(self, now: float, timeout: float) -> None:
        self._timeout = timeout
        self.peer: bytes | None = None
        self._until = now
        self._target: dict[bytes, int] | None = None
        self._retries = 0

    def elsewhere(self, peer: bytes, now: float) -> bool:
        """Whether another peer than ``peer`` is streaming to us now."""
        return peer != self.peer and now < self._until

    def claim(self, peer: bytes, now: float, target: dict[bytes, int] | None = None) -> bool:
        """Pull from ``peer`` (or keep doing so) unless another peer is streaming to us.

        ``target`` is the peer's vector when we ask it with ours; it arms the retry.
        """
        if self.elsewhere(peer, now):
            return False
        self.peer = peer
        self._until = now + self._timeout
        if target is not None:
            self._target, self._retries = target, 0
        return True

    def timer(self) -> float | None:
        """When :meth:`retry` may have something to do, or None."""
        return self._until if self._target is not None else None

    def retry(self, now: float, ours: dict[bytes, int]) -> bytes | None:
        """The peer to ask again if the pull went quiet short of its target, else None."""
        if self._target is None or now < self._until:
            return None
        if (
            self.peer is not None
            and behind(ours, self._target)
            and self._retries < MAX_PULL_RETRIES
        ):
            self._retries += 1
            self._until = now + self._timeout
            return self.peer
        self._target = None
        return None
