"""Packet formats: the one place where p2pd's datagrams are laid out in bytes.

Theory of operation
-------------------
docs/protocol.md ("Packets") is the specification; this module is its only encoder and
decoder.  Every datagram opens with a 4-byte header, ``type u8 · reserved[3]``, the
reserved bytes zero.  Handshake packets and COOKIE_REPLY have one fixed size per type;
DATA is a 16-byte header (which is also the AEAD associated data) followed by at least a
Poly1305 tag.  Integers are little-endian, as in WireGuard.

Invariants:

* :func:`parse_untrusted` raises only :class:`~p2pd.errors.BadFrame`, whatever the
  bytes, and returns a message whose :meth:`encode` gives back exactly the input.
* Constructing a message with a field of the wrong size or an index out of range is
  the caller's bug and raises :class:`BadField` (a :class:`~p2pd.errors.LocalError`),
  so nothing malformed is ever encoded.
* Parsing checks shape only.  Nothing here authenticates: tags and MACs are checked by
  :mod:`p2pd.earlydrop` / :mod:`p2pd.cookie`, DATA by :mod:`p2pd.session`.

The MAC helpers (:func:`mac1_region`, :func:`mac2_region`, :func:`with_macs`) are plain
slicing rules so that :mod:`p2pd.cookie` can compute and fill MACs on encoded packets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final

from p2pd.errors import BadFrame, LocalError

#: Packet types (docs/protocol.md, "Packets").
TYPE_HANDSHAKE_INIT: Final = 0x01
TYPE_HANDSHAKE_RESP: Final = 0x02
TYPE_HANDSHAKE_FINISH: Final = 0x03
TYPE_DATA: Final = 0x04
TYPE_COOKIE_REPLY: Final = 0x05
#: Every type byte this version understands, for cheap demultiplexing.
KNOWN_TYPES: Final = frozenset(
    {TYPE_HANDSHAKE_INIT, TYPE_HANDSHAKE_RESP, TYPE_HANDSHAKE_FINISH, TYPE_DATA, TYPE_COOKIE_REPLY}
)

#: Type byte and three reserved bytes open every datagram.
HEADER_SIZE: Final = 4
#: The reserved bytes must be zero, so a later version can give them meaning.
RESERVED: Final = b"\x00\x00\x00"
#: sender_index / receiver_index: u32, as WireGuard's session indices.
INDEX_SIZE: Final = 4
#: Largest session index that fits in a u32.
MAX_INDEX: Final = 2**32 - 1
#: Rendezvous tag carried by handshake packets (p2pd.tags): 128 bits.
TAG_SIZE: Final = 16
#: mac1 and mac2 are 128-bit keyed BLAKE2b outputs, as in WireGuard.
MAC_SIZE: Final = 16
#: mac1 · mac2 close every handshake packet.
MACS_SIZE: Final = 2 * MAC_SIZE
#: mac2 when the sender holds no fresh cookie (and the placeholder before stamping).
ZERO_MAC: Final = bytes(MAC_SIZE)
#: Poly1305 authenticator appended by ChaCha20-Poly1305 and XChaCha20-Poly1305.
AEAD_TAG_SIZE: Final = 16
#: Noise messages with empty payloads: msg1 = e; msg2 = e, enc(s), enc(""); msg3 = enc(s), enc("").
NOISE_MSG1_SIZE: Final = 32
NOISE_MSG2_SIZE: Final = 32 + (32 + AEAD_TAG_SIZE) + AEAD_TAG_SIZE
NOISE_MSG3_SIZE: Final = (32 + AEAD_TAG_SIZE) + AEAD_TAG_SIZE
#: DATA counter: u64, the ChaCha20-Poly1305 nonce's last 8 bytes.
COUNTER_SIZE: Final = 8
#: Largest counter that fits in a u64.
MAX_COUNTER: Final = 2**64 - 1
#: XChaCha20-Poly1305 nonce of a COOKIE_REPLY: 24 random bytes never repeat in practice.
COOKIE_NONCE_SIZE: Final = 24
#: A 16-byte cookie plus its Poly1305 tag.
ENCRYPTED_COOKIE_SIZE: Final = 16 + AEAD_TAG_SIZE

#: Fixed packet sizes (docs/protocol.md table).
HANDSHAKE_INIT_SIZE: Final = HEADER_SIZE + INDEX_SIZE + TAG_SIZE + NOISE_MSG1_SIZE + MACS_SIZE
HANDSHAKE_RESP_SIZE: Final = HEADER_SIZE + 2 * INDEX_SIZE + TAG_SIZE + NOISE_MSG2_SIZE + MACS_SIZE
HANDSHAKE_FINISH_SIZE: Final = HEADER_SIZE + 2 * INDEX_SIZE + TAG_SIZE + NOISE_MSG3_SIZE + MACS_SIZE
COOKIE_REPLY_SIZE: Final = HEADER_SIZE + INDEX_SIZE + COOKIE_NONCE_SIZE + ENCRYPTED_COOKIE_SIZE
#: DATA header (type, reserved, receiver_index, counter): also the AEAD associated data.
DATA_HEADER_SIZE: Final = HEADER_SIZE + INDEX_SIZE + COUNTER_SIZE
#: Smallest DATA packet: a keepalive, header plus an empty plaintext's Poly1305 tag.
DATA_MIN_SIZE: Final = DATA_HEADER_SIZE + AEAD_TAG_SIZE
#: Fixed size by type byte, for the packets that have one.
FIXED_SIZES: Final = {
    TYPE_HANDSHAKE_INIT: HANDSHAKE_INIT_SIZE,
    TYPE_HANDSHAKE_RESP: HANDSHAKE_RESP_SIZE,
    TYPE_HANDSHAKE_FINISH: HANDSHAKE_FINISH_SIZE,
    TYPE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}
assert (HANDSHAKE_INIT_SIZE, HANDSHAKE_RESP_SIZE, HANDSHAKE_FINISH_SIZE) == (88, 156, 124)
assert (DATA_MIN_SIZE, COOKIE_REPLY_SIZE) == (32, 64)

#: Offsets inside each layout, after the header.
SENDER_INDEX_OFFSET: Final = HEADER_SIZE
RECEIVER_INDEX_OFFSET: Final = HEADER_SIZE
INIT_TAG_OFFSET: Final = HEADER_SIZE + INDEX_SIZE
REPLY_TAG_OFFSET: Final = HEADER_SIZE + 2 * INDEX_SIZE
DATA_COUNTER_OFFSET: Final = HEADER_SIZE + INDEX_SIZE

_HEADER = struct.Struct("<B3x")
_INIT_HEAD = struct.Struct("<B3xI")
_REPLY_HEAD = struct.Struct("<B3xII")
_DATA_HEAD = struct.Struct("<B3xIQ")
_COOKIE_HEAD = struct.Struct("<B3xI")
_NAMES: Final = {
    TYPE_HANDSHAKE_INIT: "HANDSHAKE_INIT",
    TYPE_HANDSHAKE_RESP: "HANDSHAKE_RESP",
    TYPE_HANDSHAKE_FINISH: "HANDSHAKE_FINISH",
    TYPE_DATA: "DATA",
    TYPE_COOKIE_REPLY: "COOKIE_REPLY",
}


class BadField(LocalError):
    """A message was built with a field of the wrong size or out of range."""


def _need_size(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise BadField(f"{name} must be {size} bytes")


def _need_index(name: str, value: int) -> None:
    if not 0 <= value <= MAX_INDEX:
        raise BadField(f"{name} must fit in a u32")


@dataclass(frozen=True, slots=True)
class HandshakeInit:
    """HANDSHAKE_INIT (0x01): ``sender_index · tag · noise_msg1 · mac1 · mac2``."""

    sender_index: int
    tag: bytes
    noise_msg: bytes
    mac1: bytes = ZERO_MAC
    mac2: bytes = ZERO_MAC

    def __post_init__(self) -> None:
        _need_index("sender_index", self.sender_index)
        _need_size("tag", self.tag, TAG_SIZE)
        _need_size("noise_msg", self.noise_msg, NOISE_MSG1_SIZE)
        _need_size("mac1", self.mac1, MAC_SIZE)
        _need_size("mac2", self.mac2, MAC_SIZE)

    def encode(self) -> bytes:
        head = _INIT_HEAD.pack(TYPE_HANDSHAKE_INIT, self.sender_index)
        return head + self.tag + self.noise_msg + self.mac1 + self.mac2


@dataclass(frozen=True, slots=True)
class _HandshakeReply:
    """The layout RESP and FINISH share: ``sender · receiver · tag · noise_msg · mac1 · mac2``."""

    sender_index: int
    receiver_index: int
    tag: bytes
    noise_msg: bytes
    mac1: bytes = ZERO_MAC
    mac2: bytes = ZERO_MAC

    TYPE: ClassVar[int]
    NOISE_SIZE: ClassVar[int]

    def __post_init__(self) -> None:
        _check_reply_fields(self.sender_index, self.receiver_index, self.tag, self.mac1, self.mac2)
        _need_size("noise_msg", self.noise_msg, self.NOISE_SIZE)

    def encode(self) -> bytes:
        head = _REPLY_HEAD.pack(self.TYPE, self.sender_index, self.receiver_index)
        return head + self.tag + self.noise_msg + self.mac1 + self.mac2


@dataclass(frozen=True, slots=True)
class HandshakeResp(_HandshakeReply):
    """HANDSHAKE_RESP (0x02): ``sender · receiver · tag · noise_msg2 · mac1 · mac2``."""

    TYPE: ClassVar[int] = TYPE_HANDSHAKE_RESP
    NOISE_SIZE: ClassVar[int] = NOISE_MSG2_SIZE


@dataclass(frozen=True, slots=True)
class HandshakeFinish(_HandshakeReply):
    """HANDSHAKE_FINISH (0x03): ``sender · receiver · tag · noise_msg3 · mac1 · mac2``."""

    TYPE: ClassVar[int] = TYPE_HANDSHAKE_FINISH
    NOISE_SIZE: ClassVar[int] = NOISE_MSG3_SIZE


def _check_reply_fields(sender: int, receiver: int, tag: bytes, mac1: bytes, mac2: bytes) -> None:
    _need_index("sender_index", sender)
    _need_index("receiver_index", receiver)
    _need_size("tag", tag, TAG_SIZE)
    _need_size("mac1", mac1, MAC_SIZE)
    _need_size("mac2", mac2, MAC_SIZE)


@dataclass(frozen=True, slots=True)
class DataMessage:
    """DATA (0x04): ``receiver_index · counter · ciphertext`` (ciphertext ends in its tag)."""

    receiver_index: int
    counter: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        _need_index("receiver_index", self.receiver_index)
        if not 0 <= self.counter <= MAX_COUNTER:
            raise BadField("counter must fit in a u64")
        if not isinstance(self.ciphertext, bytes) or len(self.ciphertext) < AEAD_TAG_SIZE:
            raise BadField(f"ciphertext must be at least {AEAD_TAG_SIZE} bytes")

    def header(self) -> bytes:
        """The 16-byte header, which is the AEAD associated data."""
        return data_header(self.receiver_index, self.counter)

    def encode(self) -> bytes:
        return self.header() + self.ciphertext


def data_header(receiver_index: int, counter: int) -> bytes:
    """The 16-byte DATA header (and associated data) for these values."""
    _need_index("receiver_index", receiver_index)
    if not 0 <= counter <= MAX_COUNTER:
        raise BadField("counter must fit in a u64")
    return _DATA_HEAD.pack(TYPE_DATA, receiver_index, counter)


@dataclass(frozen=True, slots=True)
class CookieReply:
    """COOKIE_REPLY (0x05): ``receiver_index · nonce · encrypted_cookie``."""

    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    def __post_init__(self) -> None:
        _need_index("receiver_index", self.receiver_index)
        _need_size("nonce", self.nonce, COOKIE_NONCE_SIZE)
        _need_size("encrypted_cookie", self.encrypted_cookie, ENCRYPTED_COOKIE_SIZE)

    def encode(self) -> bytes:
        head = _COOKIE_HEAD.pack(TYPE_COOKIE_REPLY, self.receiver_index)
        return head + self.nonce + self.encrypted_cookie


Message = HandshakeInit | HandshakeResp | HandshakeFinish | DataMessage | CookieReply
HandshakeMessage = HandshakeInit | HandshakeResp | HandshakeFinish


def peek_type(data: bytes) -> int | None:
    """The packet's type if its header is well formed and the type known, else None.

    Costs a length check, one byte and a 3-byte comparison: for routing datagrams to
    the handshake, cookie or data path before anything else is spent on them.
    """
    if len(data) < HEADER_SIZE or data[1:HEADER_SIZE] != RESERVED:
        return None
    kind = data[0]
    return kind if kind in KNOWN_TYPES else None


def parse_untrusted(data: bytes) -> Message:
    """Decode one datagram from the network; raise BadFrame(reason) unless well formed."""
    if len(data) < HEADER_SIZE:
        raise BadFrame("shorter than the header")
    kind = data[0]
    if kind not in KNOWN_TYPES:
        raise BadFrame("unknown packet type")
    if data[1:HEADER_SIZE] != RESERVED:
        raise BadFrame("reserved bytes not zero")
    data = bytes(data)
    if kind == TYPE_DATA:
        if len(data) < DATA_MIN_SIZE:
            raise BadFrame("DATA shorter than header and tag")
        _, receiver, counter = _DATA_HEAD.unpack_from(data)
        return DataMessage(receiver, counter, data[DATA_HEADER_SIZE:])
    if len(data) != FIXED_SIZES[kind]:
        raise BadFrame(f"{_NAMES[kind]} has the wrong size")
    if kind == TYPE_COOKIE_REPLY:
        _, receiver = _COOKIE_HEAD.unpack_from(data)
        nonce_end = HEADER_SIZE + INDEX_SIZE + COOKIE_NONCE_SIZE
        return CookieReply(receiver, data[HEADER_SIZE + INDEX_SIZE : nonce_end], data[nonce_end:])
    mac1, mac2 = data[-MACS_SIZE:-MAC_SIZE], data[-MAC_SIZE:]
    if kind == TYPE_HANDSHAKE_INIT:
        _, sender = _INIT_HEAD.unpack_from(data)
        tag_end = INIT_TAG_OFFSET + TAG_SIZE
        tag, noise = data[INIT_TAG_OFFSET:tag_end], data[tag_end:-MACS_SIZE]
        return HandshakeInit(sender, tag, noise, mac1, mac2)
    _, sender, receiver = _REPLY_HEAD.unpack_from(data)
    tag_end = REPLY_TAG_OFFSET + TAG_SIZE
    tag, noise = data[REPLY_TAG_OFFSET:tag_end], data[tag_end:-MACS_SIZE]
    if kind == TYPE_HANDSHAKE_RESP:
        return HandshakeResp(sender, receiver, tag, noise, mac1, mac2)
    return HandshakeFinish(sender, receiver, tag, noise, mac1, mac2)


def _need_macs_room(packet: bytes) -> None:
    if len(packet) < HEADER_SIZE + MACS_SIZE:
        raise BadField("packet too short to carry mac1 and mac2")


def mac1_region(packet: bytes) -> bytes:
    """What mac1 covers: everything before mac1 (``packet[:-32]``)."""
    _need_macs_room(packet)
    return packet[:-MACS_SIZE]


def mac2_region(packet: bytes) -> bytes:
    """What mac2 covers: everything before mac2, mac1 included (``packet[:-16]``)."""
    _need_macs_room(packet)
    return packet[:-MAC_SIZE]


def macs_of(packet: bytes) -> tuple[bytes, bytes]:
    """The (mac1, mac2) a handshake packet carries: its last 32 bytes."""
    _need_macs_room(packet)
    return packet[-MACS_SIZE:-MAC_SIZE], packet[-MAC_SIZE:]


def with_macs(packet: bytes, mac1: bytes, mac2: bytes = ZERO_MAC) -> bytes:
    """``packet`` with its last 32 bytes replaced by ``mac1 · mac2``.

    Compute mac1 over :func:`mac1_region` of the packet first, then mac2 over
    :func:`mac2_region` of ``with_macs(packet, mac1)``: mac2 covers mac1.
    """
    _need_macs_room(packet)
    _need_size("mac1", mac1, MAC_SIZE)
    _need_size("mac2", mac2, MAC_SIZE)
    return packet[:-MACS_SIZE] + mac1 + mac2
