"""The assist relay's wire format (0x07 frames between a node and ``p2pd relay``).

Theory of operation
-------------------
Peers of one passphrase register at a relay under a 16-byte rendezvous tag
(:func:`p2pd.subkeys.relay_tag` of the current 5-minute epoch).  The relay answers with the
address it saw (the peer's reflexive address, as STUN would) and the slots and addresses of
the other registrants of that tag; it pushes a PEER frame to each of them when a newcomer
joins.  A slot (random u32) names one registration (tag, client address) for as long as it
is refreshed.  A client SENDs a p2pd datagram to a slot; the relay DELIVERs it to that slot's
address, naming the sender's slot under the same tag.  The relay sees tags and ciphertext
only.

Every frame starts ``0x07 · op · 0x00 0x00``; integers are big-endian; no frame is ever 20
bytes long (so it can never pass the node's STUN test).  An address is
``family u8 (4|6) · port u16 · ip (4|16 bytes)``: 7 or 19 bytes; port 0 is invalid, and so
is an IPv4-mapped IPv6 address (IPv4 is always family 4).

=============  ===  =========  ==================================================================
frame          op   direction  body after the header
=============  ===  =========  ==================================================================
REGISTER        1   c -> r     tag[16] nonce[8] cookie[16] zero[24]              (68 bytes)
REGISTERED      2   r -> c     tag[16] nonce[8] cookie[16] flags u8 lifetime u16 reflexive-addr
                               count u8, then count x (slot u32, addr)
PEER            3   r -> c     tag[16] slot u32 addr                             (31 or 43)
SEND            4   c -> r     slot u32 (destination) payload[32..1444]
DELIVER         5   r -> c     slot u32 (the sender's, under the shared tag) payload[32..1444]
=============  ===  =========  ==================================================================

Refinement of the first draft, and why: a relay that answered a bare REGISTER with a long
peer list, and registered whatever source address it came from, would amplify and reflect
traffic to a spoofed victim.  So registration proves return routability with a stateless
cookie, as WireGuard's cookie and QUIC's Retry do:

* A REGISTER whose cookie is not the relay's ``MAC(secret, tag, address)`` (the first one
  carries zeros) creates no state and gets a REGISTERED with flag bit 0 (``VERIFIED``)
  clear, no peers, and the cookie to use.  The client repeats the REGISTER at once with it.
* REGISTER is padded with 24 zero bytes so that this unverified answer (at most 67 bytes
  for an IPv6 client) is never larger than the request: no amplification.
* Only a REGISTER with a valid cookie registers (``VERIFIED`` set in the answer, which lists
  the other registrants); only verified registrants receive PEER and DELIVER, or may SEND.

``nonce`` is echoed so a client accepts only answers to its own requests (an off-path
forger cannot feed it a false reflexive address).  ``lifetime`` is in seconds: the client
refreshes every third of it.  ``count`` is at most :data:`MAX_LISTED`.  Reserved bytes
(header bytes 2-3, padding, unknown flag bits) must be zero.  The payload of SEND and
DELIVER is a whole p2pd datagram: at least 32 bytes (a DATA keepalive) and at most 1444 so a
DELIVER fits a 1500-byte IPv6 packet.  Anything else is a BadFrame, dropped and counted.

The cookie is the relay's own business (clients echo it): :mod:`transports.relay_server` uses
``BLAKE2b(key=secret, data="p2pd v1 relay cookie" || tag || addr || stream u8, 16)``, where
``addr`` is the address encoding above and ``stream`` is 1 for a TCP connection; ``secret``
is 32 random bytes, rotated every 120 s, the previous one still accepted.

Timers and limits (defaults, in :mod:`transports.relay_server` and
:mod:`transports.relay_client`): lifetime 60 s, refreshed every lifetime/3; unanswered
REGISTERs repeated after 1, 2, 4 ... 30 s; a client registers the tags of every epoch within
60 s of its wall clock (two near a boundary); per relay 10000 registrations, 32 client
endpoints per IP (IPv6: per /64), 4 tags per endpoint, 32 registrants per tag; per
registrant (client endpoint) 4000 packets/s with bursts of 1000 and 256 MiB relayed per
hour.  A REGISTER refused by a limit, and a SEND refused by a rule or limit, get no answer.
Over TCP each frame is carried by :mod:`transports.framing` (2-byte length prefix), and the
endpoint is the connection: its registrations end when it closes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from p2pd.errors import BadFrame, LocalError

#: Type byte of relay frames (after the beacon's 0x06), as the node's demultiplexer sees it.
TYPE_RELAY: Final = 0x07
#: Operation codes (header byte 1).
OP_REGISTER: Final = 1
OP_REGISTERED: Final = 2
OP_PEER: Final = 3
OP_SEND: Final = 4
OP_DELIVER: Final = 5
#: Header: type, op, two reserved zero bytes.
HEADER_SIZE: Final = 4
RESERVED: Final = b"\x00\x00"
#: Rendezvous tag: :data:`p2pd.subkeys.RELAY_TAG_SIZE`; opaque to the relay.
TAG_SIZE: Final = 16
#: Request nonce: 64 random bits, enough to match an answer to one of a few requests.
NONCE_SIZE: Final = 8
#: Return-routability cookie: a 128-bit keyed BLAKE2b, unforgeable off path.
COOKIE_SIZE: Final = 16
#: Cookie of a first REGISTER, before the relay gave one.
NO_COOKIE: Final = bytes(COOKIE_SIZE)
#: Padding so an unverified REGISTERED is never larger than the REGISTER (no amplification).
REGISTER_PADDING: Final = 24
#: Slots are u32.
SLOT_SIZE: Final = 4
MAX_SLOT: Final = 2**32 - 1
#: REGISTERED flag bit: the registration is in place (the cookie was valid).
FLAG_VERIFIED: Final = 0x01
#: Largest lifetime a u16 carries.
MAX_LIFETIME: Final = 2**16 - 1
#: Most registrants listed in one REGISTERED: keeps it under 800 bytes (a relay caps a tag's
#: registrants at ``MAX_LISTED + 1``).
MAX_LISTED: Final = 31
#: Smallest relayed payload: a p2pd DATA keepalive (:data:`p2pd.wire.DATA_MIN_SIZE`).  It
#: also keeps SEND and DELIVER off 20 bytes.
MIN_PAYLOAD: Final = 32
#: Largest relayed payload: 1500 (Ethernet MTU) - 40 (IPv6) - 8 (UDP) - 8 (DELIVER header).
MAX_PAYLOAD: Final = 1444
#: Address encodings: family byte, port, packed IP.
FAMILY_IPV4: Final = 4
FAMILY_IPV6: Final = 6
IP_SIZES: Final = {FAMILY_IPV4: 4, FAMILY_IPV6: 16}
ADDR_HEAD_SIZE: Final = 3

REGISTER_SIZE: Final = HEADER_SIZE + TAG_SIZE + NONCE_SIZE + COOKIE_SIZE + REGISTER_PADDING
#: REGISTERED before its reflexive address: tag, nonce, cookie, flags, lifetime.
REGISTERED_HEAD_SIZE: Final = HEADER_SIZE + TAG_SIZE + NONCE_SIZE + COOKIE_SIZE + 1 + 2
#: SEND / DELIVER before the payload.
RELAYED_HEAD_SIZE: Final = HEADER_SIZE + SLOT_SIZE
assert REGISTER_SIZE == 68
assert REGISTERED_HEAD_SIZE + ADDR_HEAD_SIZE + 16 + 1 <= REGISTER_SIZE

#: An IPv4 or IPv6 ``(host, port)`` pair.
Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Register:
    """Client asks to be registered (or refreshed) under ``tag``."""

    tag: bytes
    nonce: bytes
    cookie: bytes = NO_COOKIE


@dataclass(frozen=True, slots=True)
class Registered:
    """Relay's answer to a REGISTER: the reflexive address and, if verified, the peers."""

    tag: bytes
    nonce: bytes
    cookie: bytes
    verified: bool
    lifetime: int
    reflexive: Addr
    peers: tuple[tuple[int, Addr], ...] = ()


@dataclass(frozen=True, slots=True)
class Peer:
    """Relay tells a registrant of ``tag`` that ``slot`` at ``addr`` joined."""

    tag: bytes
    slot: int
    addr: Addr


@dataclass(frozen=True, slots=True)
class Send:
    """Client asks the relay to pass ``payload`` to ``slot``."""

    slot: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Relay passes ``payload`` from the registrant ``slot``."""

    slot: int
    payload: bytes


Frame = Register | Registered | Peer | Send | Deliver


def _header(op: int) -> bytes:
    return bytes([TYPE_RELAY, op]) + RESERVED


def _check_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise LocalError(f"{name} must be {size} bytes, got {len(value)}")


def _check_slot(slot: int) -> None:
    if not 0 <= slot <= MAX_SLOT:
        raise LocalError(f"slot {slot} does not fit in a u32")


def _check_payload(payload: bytes) -> None:
    if not MIN_PAYLOAD <= len(payload) <= MAX_PAYLOAD:
        raise LocalError(f"relayed payload must be {MIN_PAYLOAD}..{MAX_PAYLOAD} bytes")


def encode_addr(addr: Addr) -> bytes:
    """``family · port · ip`` of an IP-literal address; IPv4-mapped IPv6 becomes IPv4."""
    host, port = addr
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise LocalError(f"relay addresses must be IP literals, got {host!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not 0 < port <= 0xFFFF:
        raise LocalError(f"port {port} is not a valid port")
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    return bytes([family]) + port.to_bytes(2, "big") + ip.packed


def decode_addr_untrusted(data: bytes, offset: int) -> tuple[Addr, int]:
    """The address at ``offset`` and the offset after it; BadFrame if malformed."""
    if len(data) < offset + ADDR_HEAD_SIZE:
        raise BadFrame("short_addr")
    family = data[offset]
    size = IP_SIZES.get(family)
    if size is None:
        raise BadFrame("bad_family")
    port = int.from_bytes(data[offset + 1 : offset + 3], "big")
    if port == 0:
        raise BadFrame("bad_port")
    start = offset + ADDR_HEAD_SIZE
    if len(data) < start + size:
        raise BadFrame("short_addr")
    packed = bytes(data[start : start + size])
    ip = ipaddress.IPv4Address(packed) if size == 4 else ipaddress.IPv6Address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise BadFrame("mapped_addr")  # IPv4 has its own family: one encoding per address
    return (str(ip), port), start + size


def encode(frame: Frame) -> bytes:
    """The bytes of ``frame``; LocalError if a field does not fit the format."""
    if isinstance(frame, Register):
        _check_size("tag", frame.tag, TAG_SIZE)
        _check_size("nonce", frame.nonce, NONCE_SIZE)
        _check_size("cookie", frame.cookie, COOKIE_SIZE)
        return (
            _header(OP_REGISTER) + frame.tag + frame.nonce + frame.cookie + bytes(REGISTER_PADDING)
        )
    if isinstance(frame, Registered):
        _check_size("tag", frame.tag, TAG_SIZE)
        _check_size("nonce", frame.nonce, NONCE_SIZE)
        _check_size("cookie", frame.cookie, COOKIE_SIZE)
        if not 0 <= frame.lifetime <= MAX_LIFETIME:
            raise LocalError(f"lifetime {frame.lifetime} does not fit in a u16")
        if len(frame.peers) > MAX_LISTED:
            raise LocalError(f"at most {MAX_LISTED} peers fit in a REGISTERED")
        parts = [
            _header(OP_REGISTERED),
            frame.tag,
            frame.nonce,
            frame.cookie,
            bytes([FLAG_VERIFIED if frame.verified else 0]),
            frame.lifetime.to_bytes(2, "big"),
            encode_addr(frame.reflexive),
            bytes([len(frame.peers)]),
        ]
        for slot, addr in frame.peers:
            _check_slot(slot)
            parts += [slot.to_bytes(SLOT_SIZE, "big"), encode_addr(addr)]
        return b"".join(parts)
    if isinstance(frame, Peer):
        _check_size("tag", frame.tag, TAG_SIZE)
        _check_slot(frame.slot)
        return (
            _header(OP_PEER)
            + frame.tag
            + frame.slot.to_bytes(SLOT_SIZE, "big")
            + encode_addr(frame.addr)
        )
    op = OP_SEND if isinstance(frame, Send) else OP_DELIVER
    _check_slot(frame.slot)
    _check_payload(frame.payload)
    return _header(op) + frame.slot.to_bytes(SLOT_SIZE, "big") + frame.payload


def _parse_registered(data: bytes) -> Registered:
    if len(data) < REGISTERED_HEAD_SIZE:
        raise BadFrame("short_registered")
    offset = HEADER_SIZE
    tag = data[offset : offset + TAG_SIZE]
    offset += TAG_SIZE
    nonce = data[offset : offset + NONCE_SIZE]
    offset += NONCE_SIZE
    cookie = data[offset : offset + COOKIE_SIZE]
    offset += COOKIE_SIZE
    flags = data[offset]
    if flags & ~FLAG_VERIFIED:
        raise BadFrame("bad_flags")
    lifetime = int.from_bytes(data[offset + 1 : offset + 3], "big")
    reflexive, offset = decode_addr_untrusted(data, offset + 3)
    if len(data) < offset + 1:
        raise BadFrame("short_registered")
    count = data[offset]
    offset += 1
    if count > MAX_LISTED:
        raise BadFrame("too_many_peers")
    peers: list[tuple[int, Addr]] = []
    for _ in range(count):
        if len(data) < offset + SLOT_SIZE:
            raise BadFrame("short_registered")
        slot = int.from_bytes(data[offset : offset + SLOT_SIZE], "big")
        addr, offset = decode_addr_untrusted(data, offset + SLOT_SIZE)
        peers.append((slot, addr))
    if offset != len(data):
        raise BadFrame("trailing_bytes")
    verified = bool(flags & FLAG_VERIFIED)
    if not verified and peers:
        raise BadFrame("unverified_with_peers")
    return Registered(tag, nonce, cookie, verified, lifetime, reflexive, tuple(peers))


def parse_untrusted(data: bytes) -> Frame:
    """The frame in ``data``; BadFrame(reason) if it is not a well-formed relay frame."""
    data = bytes(data)
    if len(data) < HEADER_SIZE or data[0] != TYPE_RELAY:
        raise BadFrame("not_relay")
    if data[2:HEADER_SIZE] != RESERVED:
        raise BadFrame("bad_header")
    op = data[1]
    if op == OP_REGISTER:
        if len(data) != REGISTER_SIZE:
            raise BadFrame("bad_register_size")
        if any(data[REGISTER_SIZE - REGISTER_PADDING :]):
            raise BadFrame("bad_padding")
        offset = HEADER_SIZE
        return Register(
            data[offset : offset + TAG_SIZE],
            data[offset + TAG_SIZE : offset + TAG_SIZE + NONCE_SIZE],
            data[offset + TAG_SIZE + NONCE_SIZE : offset + TAG_SIZE + NONCE_SIZE + COOKIE_SIZE],
        )
    if op == OP_REGISTERED:
        return _parse_registered(data)
    if op == OP_PEER:
        if len(data) < HEADER_SIZE + TAG_SIZE + SLOT_SIZE:
            raise BadFrame("short_peer")
        offset = HEADER_SIZE + TAG_SIZE
        slot = int.from_bytes(data[offset : offset + SLOT_SIZE], "big")
        addr, end = decode_addr_untrusted(data, offset + SLOT_SIZE)
        if end != len(data):
            raise BadFrame("trailing_bytes")
        return Peer(data[HEADER_SIZE:offset], slot, addr)
    if op in (OP_SEND, OP_DELIVER):
        size = len(data) - RELAYED_HEAD_SIZE
        if size < MIN_PAYLOAD:
            raise BadFrame("short_payload")
        if size > MAX_PAYLOAD:
            raise BadFrame("long_payload")
        slot = int.from_bytes(data[HEADER_SIZE:RELAYED_HEAD_SIZE], "big")
        payload = data[RELAYED_HEAD_SIZE:]
        return Send(slot, payload) if op == OP_SEND else Deliver(slot, payload)
    raise BadFrame("bad_op")
