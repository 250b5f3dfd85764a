"""STUN (RFC 8489): a sans-IO Binding codec and a prober that learns and classifies our mapping.

Theory of operation
-------------------
A node behind a NAT cannot see the address the internet sees it at.  It asks STUN servers
(a Binding request from its one UDP socket); each answers with the source address it saw,
XOR-ed with the magic cookie so that NATs rewriting addresses in payloads leave it alone.
Answers from servers at different IPs classify the NAT (:mod:`transports.natclass`).

Wire format (RFC 8489 section 5)::

    0b00 · type[14] · length u16 (after the header, multiple of 4) · cookie 0x2112A442
    transaction id[12] · attributes: type u16 · length u16 · value · zero pad to 4

The codec: :func:`encode_message` / :func:`binding_request` build messages (with
MESSAGE-INTEGRITY under a short- or long-term key, and FINGERPRINT);
:func:`parse_untrusted` checks the header, walks the attributes, decodes the ones we know
and verifies FINGERPRINT when present, raising :class:`BadFrame` for anything else;
:func:`verify_integrity` checks MESSAGE-INTEGRITY under a key.  :func:`is_stun` is the
node's cheap demultiplexing test (the rule in the WAN design; no parsing).

:class:`StunProber` is the client: one transaction per server, retransmitted with
doubling timeouts, answers matched by transaction id *and* source address; it emits
:class:`Mapped` / :class:`ServerFailed` per server and one :class:`Classified` when every
server is done.  It never reads a clock or touches a socket: the node passes ``now``
(monotonic seconds) and sends what :meth:`StunProber.datagrams_to_send` returns.
Everything unexpected is dropped and counted in ``counters``.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import ipaddress
import os
import stringprep
import struct
import unicodedata
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from p2pd.errors import BadFrame, LocalError
from transports.natclass import Addr, NatClass, Observation, canonical, classify

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER = struct.Struct("!HH4s12s")
HEADER_SIZE = HEADER.size
TRANSACTION_ID_SIZE = 12
ATTR_HEADER = struct.Struct("!HH")
#: The two top bits of every STUN message are zero (RFC 8489 section 5).
TOP_BITS_MASK = 0xC0
#: FINGERPRINT is CRC-32 of the message so far XOR this ("STUN" in ASCII).
FINGERPRINT_XOR = 0x5354554E
FINGERPRINT_SIZE = 4
INTEGRITY_SIZE = 20  # HMAC-SHA1
#: Longest SOFTWARE value allowed (RFC 8489 section 14.14: 763 bytes).
MAX_SOFTWARE = 763

METHOD_BINDING = 0x001


class StunClass(enum.IntEnum):
    """The message class, two bits spread over the type field (RFC 8489 section 5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


ATTR_MAPPED_ADDRESS = 0x0001
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_REALM = 0x0014
ATTR_NONCE = 0x0015
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
ATTR_RESPONSE_ORIGIN = 0x802B
ATTR_OTHER_ADDRESS = 0x802C
#: Attributes that may follow MESSAGE-INTEGRITY; the rest after it are ignored (section 14.5).
_AFTER_INTEGRITY = frozenset({0x001C, ATTR_FINGERPRINT})  # MESSAGE-INTEGRITY-SHA256
_ADDRESS_ATTRS = frozenset(
    {ATTR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS, ATTR_RESPONSE_ORIGIN, ATTR_OTHER_ADDRESS}
)
_XOR_ATTRS = frozenset({ATTR_XOR_MAPPED_ADDRESS})
FAMILY_IPV4, FAMILY_IPV6 = 0x01, 0x02
_ADDRESS_SIZE = {FAMILY_IPV4: 4, FAMILY_IPV6: 16}


def message_type(method: int, cls: StunClass) -> int:
    """The 14-bit type field: method bits M0-M11 interleaved with class bits C0, C1."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def split_type(msg_type: int) -> tuple[int, StunClass]:
    """Inverse of :func:`message_type`."""
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    return method, StunClass(((msg_type >> 4) & 1) | ((msg_type >> 7) & 2))


def is_stun(data: bytes) -> bool:
    """Whether the node should hand ``data`` to STUN: the demultiplexing rule of the WAN design.

    Checked before any p2pd packet type; never true for a p2pd packet (see docs).
    """
    n = len(data)
    return (
        n >= HEADER_SIZE
        and n % 4 == 0
        and data[0] & TOP_BITS_MASK == 0
        and data[4:8] == _COOKIE_BYTES
        and HEADER_SIZE + int.from_bytes(data[2:4], "big") == n
    )


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A parsed STUN message: header fields, raw attributes, and the ones we decode."""

    method: int
    cls: StunClass
    transaction_id: bytes
    #: Every attribute as ``(type, value, offset of its header in raw)``, in order.
    attributes: tuple[tuple[int, bytes, int], ...]
    raw: bytes = field(repr=False)
    #: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 3489 servers), else None.
    mapped: Addr | None = None
    other_address: Addr | None = None
    response_origin: Addr | None = None
    #: ERROR-CODE as ``(code, reason)``.
    error: tuple[int, str] | None = None
    software: str | None = None

    def get(self, attr_type: int) -> bytes | None:
        """The first value of ``attr_type`` (later duplicates are ignored, section 14)."""
        return next((v for t, v, _ in self.attributes if t == attr_type), None)


def _xor_key(attr_type: int, transaction_id: bytes) -> bytes:
    return _COOKIE_BYTES + transaction_id if attr_type in _XOR_ATTRS else bytes(20)


def encode_address(attr_type: int, addr: Addr, transaction_id: bytes) -> bytes:
    """The value of an address attribute (XOR-ed for XOR-MAPPED-ADDRESS)."""
    ip = ipaddress.ip_address(addr[0])
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    key = _xor_key(attr_type, transaction_id)
    port = addr[1] ^ int.from_bytes(key[:2], "big")
    packed = bytes(a ^ b for a, b in zip(ip.packed, key, strict=False))
    return bytes([0, family]) + port.to_bytes(2, "big") + packed


def decode_address_untrusted(attr_type: int, value: bytes, transaction_id: bytes) -> Addr:
    """Inverse of :func:`encode_address`; BadFrame for a bad family or length."""
    if len(value) < 4 or value[1] not in _ADDRESS_SIZE:
        raise BadFrame("stun_address_family")
    size = _ADDRESS_SIZE[value[1]]
    if len(value) != 4 + size:
        raise BadFrame("stun_address_length")
    key = _xor_key(attr_type, transaction_id)
    port = int.from_bytes(value[2:4], "big") ^ int.from_bytes(key[:2], "big")
    packed = bytes(a ^ b for a, b in zip(value[4:], key, strict=False))
    return str(ipaddress.ip_address(packed)), port


def encode_error(code: int, reason: str) -> bytes:
    """An ERROR-CODE value: class (hundreds) and number, then the UTF-8 reason."""
    if not 300 <= code <= 699:
        raise LocalError(f"STUN error code {code} is not in 300..699")
    return bytes([0, 0, code // 100, code % 100]) + reason.encode()


def _pad(n: int) -> int:
    return -n % 4


def encode_message(
    method: int,
    cls: StunClass,
    transaction_id: bytes,
    attributes: Sequence[tuple[int, bytes]] = (),
    *,
    integrity_key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """A STUN message; MESSAGE-INTEGRITY (if a key is given) then FINGERPRINT come last."""
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise LocalError(f"transaction id must be {TRANSACTION_ID_SIZE} bytes")
    body = bytearray()
    for attr_type, value in attributes:
        body += ATTR_HEADER.pack(attr_type, len(value)) + value + bytes(_pad(len(value)))
    head = message_type(method, cls), 0, _COOKIE_BYTES, transaction_id
    msg = bytearray(HEADER.pack(*head)) + body
    if integrity_key is not None:
        struct.pack_into("!H", msg, 2, len(msg) - HEADER_SIZE + 4 + INTEGRITY_SIZE)
        mac = hmac.new(integrity_key, bytes(msg), hashlib.sha1).digest()
        msg += ATTR_HEADER.pack(ATTR_MESSAGE_INTEGRITY, INTEGRITY_SIZE) + mac
    if fingerprint:
        struct.pack_into("!H", msg, 2, len(msg) - HEADER_SIZE + 4 + FINGERPRINT_SIZE)
        crc = (zlib.crc32(msg) ^ FINGERPRINT_XOR).to_bytes(4, "big")
        msg += ATTR_HEADER.pack(ATTR_FINGERPRINT, FINGERPRINT_SIZE) + crc
    struct.pack_into("!H", msg, 2, len(msg) - HEADER_SIZE)
    return bytes(msg)


def binding_request(transaction_id: bytes | None = None, *, fingerprint: bool = True) -> bytes:
    """A Binding request (random transaction id unless given), with FINGERPRINT by default."""
    tid = os.urandom(TRANSACTION_ID_SIZE) if transaction_id is None else transaction_id
    return encode_message(METHOD_BINDING, StunClass.REQUEST, tid, fingerprint=fingerprint)


def parse_untrusted(data: bytes) -> StunMessage:
    """Parse and check a STUN message from the network; BadFrame(reason) if malformed.

    FINGERPRINT, if present, must be last and correct.  MESSAGE-INTEGRITY is not checked
    here (it needs a key: :func:`verify_integrity`).
    """
    if not is_stun(data):
        raise BadFrame("stun_header")
    raw = bytes(data)
    msg_type, _, _, tid = HEADER.unpack_from(raw)
    method, cls = split_type(msg_type)
    attributes: list[tuple[int, bytes, int]] = []
    offset, after_integrity = HEADER_SIZE, False
    while offset < len(raw):
        if offset + ATTR_HEADER.size > len(raw):
            raise BadFrame("stun_attribute_header")
        attr_type, length = ATTR_HEADER.unpack_from(raw, offset)
        end = offset + ATTR_HEADER.size + length
        if end > len(raw):
            raise BadFrame("stun_attribute_length")
        value = raw[offset + ATTR_HEADER.size : end]
        if attributes and attributes[-1][0] == ATTR_FINGERPRINT:
            raise BadFrame("stun_fingerprint_not_last")
        if attr_type == ATTR_FINGERPRINT:
            if length != FINGERPRINT_SIZE:
                raise BadFrame("stun_fingerprint_length")
            crc = zlib.crc32(raw[:offset]) ^ FINGERPRINT_XOR
            if crc != int.from_bytes(value, "big"):
                raise BadFrame("stun_fingerprint")
        if not after_integrity or attr_type in _AFTER_INTEGRITY:
            attributes.append((attr_type, value, offset))
        after_integrity |= attr_type == ATTR_MESSAGE_INTEGRITY
        offset = end + _pad(length)
    if offset != len(raw):
        raise BadFrame("stun_padding")
    return _decode(method, cls, tid, tuple(attributes), raw)


def _decode(
    method: int, cls: StunClass, tid: bytes, attrs: tuple[tuple[int, bytes, int], ...], raw: bytes
) -> StunMessage:
    decoded: dict[int, Addr] = {}
    error, software = None, None
    for attr_type, value, _ in attrs:
        if attr_type in _ADDRESS_ATTRS and attr_type not in decoded:
            decoded[attr_type] = decode_address_untrusted(attr_type, value, tid)
        elif attr_type == ATTR_ERROR_CODE and error is None:
            if len(value) < 4 or not 3 <= value[2] <= 6 or value[3] > 99:
                raise BadFrame("stun_error_code")
            error = (value[2] * 100 + value[3], value[4:].decode(errors="replace"))
        elif attr_type == ATTR_SOFTWARE and software is None:
            if len(value) > MAX_SOFTWARE:
                raise BadFrame("stun_software_length")
            software = value.decode(errors="replace")
    mapped = decoded.get(ATTR_XOR_MAPPED_ADDRESS) or decoded.get(ATTR_MAPPED_ADDRESS)
    return StunMessage(
        method, cls, tid, attrs, raw, mapped,
        decoded.get(ATTR_OTHER_ADDRESS), decoded.get(ATTR_RESPONSE_ORIGIN), error, software,
    )  # fmt: skip


def verify_integrity(msg: StunMessage, key: bytes) -> bool:
    """Whether ``msg`` carries a MESSAGE-INTEGRITY that is valid under ``key`` (HMAC-SHA1).

    The MAC covers the message up to the attribute, with the length field counting up to
    its end (section 14.5); the comparison is constant-time.
    """
    for attr_type, value, offset in msg.attributes:
        if attr_type == ATTR_MESSAGE_INTEGRITY:
            if len(value) != INTEGRITY_SIZE:
                return False
            covered = bytearray(msg.raw[:offset])
            struct.pack_into("!H", covered, 2, offset - HEADER_SIZE + 4 + INTEGRITY_SIZE)
            expected = hmac.new(key, bytes(covered), hashlib.sha1).digest()
            return hmac.compare_digest(expected, value)
    return False


def saslprep(text: str) -> str:
    """The mapping and normalisation steps of SASLprep (RFC 4013), as RFC 5389 keys use.

    Non-ASCII spaces become spaces, "mapped to nothing" characters vanish, then NFKC.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else "" if stringprep.in_table_b1(c) else c for c in text
    )
    return unicodedata.normalize("NFKC", mapped)


def short_term_key(password: str) -> bytes:
    """The HMAC key of the short-term credential mechanism (section 9.1)."""
    return saslprep(password).encode()


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password), the long-term credential key (section 9.2)."""
    joined = f"{username}:{saslprep(realm)}:{saslprep(password)}"
    return hashlib.md5(joined.encode(), usedforsecurity=False).digest()


# --- the prober ---------------------------------------------------------------------------

#: First retransmission timeout, seconds.  RFC 8489 suggests 500 ms for an unknown path and
#: allows less when the RTT is known to be smaller; 250 ms is above most internet RTTs and
#: matches the racer's stagger (RFC 8305), so a lost request costs a quarter second, not half.
RTO = 0.25
#: Transmissions per server before it counts as failed.  RFC 8489's Rc=7 with a final 16xRTO
#: wait takes 39.5 s, built for reliability; we only need an address for an interactive
#: connect and ask several servers at once, so 6 tries bounded by :data:`RTO_MAX` give up
#: after 7.75 s, while a 20 % loss each way still loses all six exchanges only ~5e-5 of times.
MAX_TRIES = 6
#: Longest wait between two transmissions (the doubling stops here), seconds.
RTO_MAX = 2.0
#: Seconds between probing rounds the node starts with :meth:`StunProber.restart`: a home
#: router's public address can change (DHCP lease, carrier-grade NAT), and RFC 4787 (REQ-5)
#: lets an idle UDP mapping expire after 2 minutes and recommends 5; 5 minutes also matches
#: the rendezvous tag epoch, so a fresh address is ready when peers re-register.
REPROBE_INTERVAL = 300.0
#: Destinations added from one OTHER-ADDRESS (RFC 5780): its IP with the server's port and
#: with its own port, so one RFC 5780 server is enough to tell all mapping behaviours apart.
#: Only the first OTHER-ADDRESS of a round is followed: a forged one costs two small datagrams.
MAX_OTHER_PROBES = 2


@dataclass(frozen=True, slots=True)
class Mapped:
    """``server`` saw us at ``mapped``; ``rtt`` from our last transmission (seconds)."""

    server: Addr
    mapped: Addr
    rtt: float


@dataclass(frozen=True, slots=True)
class ServerFailed:
    """``server`` did not answer usefully: ``reason`` is "timeout", "error NNN" or similar."""

    server: Addr
    reason: str


@dataclass(frozen=True, slots=True)
class Classified:
    """Every server of this round answered or failed; ``result`` classifies our NAT."""

    result: NatClass


StunEvent = Mapped | ServerFailed | Classified


@dataclass(slots=True)
class _Transaction:
    server: Addr
    transaction_id: bytes
    request: bytes
    due: float  # when to (re)send if queued, else when the current wait ends
    queued: bool = True
    tries: int = 0
    last_sent: float = 0.0
    done: bool = False


class StunProber:
    """Sans-IO STUN client for one UDP socket; see the module docstring.

    Driver loop: after constructing, ``restart``, ``receive_untrusted`` and ``handle_timer``,
    send every ``datagrams_to_send(now)`` and drain ``next_event()``; call
    ``handle_timer(now)`` once ``now >= get_timer()``.  ``local`` lists our own
    ``(ip, port)`` addresses (to tell "no NAT"); ``rng`` makes transaction ids.
    """

    def __init__(
        self,
        servers: Sequence[Addr],
        now: float,
        *,
        local: Collection[Addr] = (),
        local_port: int | None = None,
        rto: float = RTO,
        max_tries: int = MAX_TRIES,
        rto_max: float = RTO_MAX,
        follow_other_address: bool = True,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if rto <= 0 or rto_max < rto or max_tries < 1:
            raise LocalError("STUN needs rto > 0, rto_max >= rto and max_tries >= 1")
        try:
            self.servers = tuple(dict.fromkeys(canonical(s) for s in servers))
        except ValueError as exc:
            raise LocalError(f"STUN servers must be IP addresses, resolved first: {exc}") from exc
        self.rto, self.max_tries, self.rto_max = rto, max_tries, rto_max
        self.follow_other_address = follow_other_address
        self.local, self.local_port = tuple(local), local_port
        self._rng = rng
        self.counters: collections.Counter[str] = collections.Counter()
        #: The classification of the last finished round (for ``p2pd status``).
        self.result: NatClass | None = None
        self._events: collections.deque[StunEvent] = collections.deque()
        self.restart(now)

    def __repr__(self) -> str:
        return f"StunProber(servers={self.servers}, counters={dict(self.counters)})"

    def restart(self, now: float, *, local: Collection[Addr] | None = None) -> None:
        """Begin a new round: fresh transactions to every server; late answers are dropped."""
        if local is not None:
            self.local = tuple(local)
        self._transactions: dict[bytes, _Transaction] = {}
        self._observations: list[Observation] = []
        self._followed = False
        self._classified = False
        for server in self.servers:
            self._start(server, now)
        self._maybe_finish()

    @property
    def done(self) -> bool:
        """Whether this round has finished (a :class:`Classified` was queued)."""
        return self._classified

    def _start(self, server: Addr, now: float) -> None:
        tid = self._rng(TRANSACTION_ID_SIZE)
        if len(tid) != TRANSACTION_ID_SIZE or tid in self._transactions:
            raise LocalError("rng returned a bad or repeated transaction id")
        self._transactions[tid] = _Transaction(server, tid, binding_request(tid), due=now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        """Requests due now (first transmissions and retransmissions), with destinations."""
        out = []
        for tx in self._transactions.values():
            if tx.queued and not tx.done:
                tx.queued = False
                wait = min(self.rto * 2**tx.tries, self.rto_max)
                tx.tries += 1
                tx.last_sent, tx.due = now, now + wait
                out.append((tx.request, tx.server))
        self.counters["sent"] += len(out)
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` next has work, or None when the round is over."""
        return min((tx.due for tx in self._transactions.values() if not tx.done), default=None)

    def handle_timer(self, now: float) -> None:
        """Queue retransmissions whose wait ended; fail servers out of tries."""
        for tx in self._transactions.values():
            if tx.done or tx.queued or tx.due > now:
                continue
            if tx.tries >= self.max_tries:
                self._fail(tx, "timeout")
            else:
                tx.queued = True
        self._maybe_finish()

    def receive_untrusted(self, data: bytes, addr: Addr, now: float) -> bool:
        """Take a datagram :func:`is_stun` accepted; True if it answered one of our requests.

        Never raises: malformed messages, unknown transaction ids, answers from another
        address than the one asked, non-responses and duplicates are counted and dropped.
        """
        try:
            msg = parse_untrusted(data)
            source = canonical(addr)
        except BadFrame as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            return False
        except (ValueError, TypeError, IndexError):
            self.counters["drop_source_address"] += 1
            return False
        tx = self._transactions.get(msg.transaction_id)
        if tx is None:
            self.counters["drop_unknown_transaction"] += 1
            return False
        if source != tx.server:
            self.counters["drop_wrong_source"] += 1
            return False
        if msg.method != METHOD_BINDING or msg.cls not in (StunClass.SUCCESS, StunClass.ERROR):
            self.counters["drop_not_response"] += 1
            return False
        if tx.done:
            self.counters["drop_duplicate"] += 1
            return False
        if msg.cls == StunClass.ERROR:
            code = msg.error[0] if msg.error else 0
            self._fail(tx, f"error {code}")
        elif msg.mapped is None:
            self._fail(tx, "no mapped address")
        else:
            tx.done = True
            self.counters["mapped"] += 1
            self._observations.append(Observation(tx.server, msg.mapped))
            self._events.append(Mapped(tx.server, canonical(msg.mapped), now - tx.last_sent))
            if msg.other_address is not None:
                self._follow(tx.server, msg.other_address, now)
        self._maybe_finish()
        return True

    def _follow(self, server: Addr, other: Addr, now: float) -> None:
        """Probe OTHER-ADDRESS's IP at the server's port and at its own (RFC 5780 tests II, III)."""
        if not self.follow_other_address or self._followed:
            return
        ip = ipaddress.ip_address(other[0])
        if ip.version != ipaddress.ip_address(server[0]).version or ip.is_unspecified:
            self.counters["other_address_unusable"] += 1
            return
        self._followed = True
        asked = {tx.server for tx in self._transactions.values()}
        for extra in dict.fromkeys([(str(ip), server[1]), (str(ip), other[1])]):
            if extra not in asked and extra[1] != 0:
                self.counters["other_address_probe"] += 1
                self._start(extra, now)

    def _fail(self, tx: _Transaction, reason: str) -> None:
        tx.done = True
        self.counters["failed"] += 1
        self._events.append(ServerFailed(tx.server, reason))

    def _maybe_finish(self) -> None:
        if self._classified or any(not tx.done for tx in self._transactions.values()):
            return
        self._classified = True
        self.result = classify(self._observations, self.local, local_port=self.local_port)
        self._events.append(Classified(self.result))

    def next_event(self) -> StunEvent | None:
        """The next event, oldest first, or None."""
        return self._events.popleft() if self._events else None
