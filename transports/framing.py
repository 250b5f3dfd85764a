"""Datagrams over a byte stream (TCP, a Tor stream): a 2-byte big-endian length, then the datagram.

Why so plain: every p2pd packet is already authenticated and self-delimiting in meaning, so the
stream only has to keep datagram boundaries.  A length of zero is never valid (no p2pd packet is
empty), which lets a decoder detect a desynchronised or hostile stream at once.  The decoder is
sans-IO: feed it whatever ``recv`` returned, take out whole datagrams.
"""

from __future__ import annotations

from p2pd.errors import BadFrame, LocalError

#: Bytes of the length prefix.
LENGTH_SIZE = 2
#: Largest datagram a frame can carry (the prefix is 16 bits).
MAX_DATAGRAM = 2**16 - 1


def encode_frame(datagram: bytes) -> bytes:
    """One frame carrying ``datagram``; a local error when it cannot be framed."""
    if not 0 < len(datagram) <= MAX_DATAGRAM:
        raise LocalError(f"cannot frame a datagram of {len(datagram)} bytes")
    return len(datagram).to_bytes(LENGTH_SIZE, "big") + datagram


class FrameDecoder:
    """Reassembles datagrams from stream chunks, in order."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def __repr__(self) -> str:
        return f"<FrameDecoder buffered={len(self._buffer)}>"

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def feed_untrusted(self, data: bytes) -> list[bytes]:
        """Every datagram completed by ``data``; BadFrame if the stream is not framing.

        After BadFrame the stream is unusable (its boundaries are lost): close it.
        """
        self._buffer += data
        out: list[bytes] = []
        view = self._buffer
        start = 0
        while len(view) - start >= LENGTH_SIZE:
            size = int.from_bytes(view[start : start + LENGTH_SIZE], "big")
            if size == 0:
                raise BadFrame("empty_frame")
            end = start + LENGTH_SIZE + size
            if end > len(view):
                break
            out.append(bytes(view[start + LENGTH_SIZE : end]))
            start = end
        del self._buffer[:start]
        return out
