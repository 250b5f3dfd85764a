"""NAT-PMP (RFC 6886) and PCP MAP (RFC 6887): a sans-IO client for one port mapping.

Theory of operation
-------------------
A :class:`PortMapCore` asks the default gateway to forward one external port to our
``internal_port`` for ``lifetime`` seconds, keeps it alive and removes it at exit. It takes
bytes and ``now`` (monotonic seconds) and returns bytes and events; the driver
(:mod:`transports.portmap`) owns the socket, connected to ``gateway:5351``, so only the
gateway's datagrams ever reach :meth:`PortMapCore.receive_untrusted`.

States (:data:`TRANSITIONS` lists the legal moves)::

    ADDRESS --(NAT-PMP: external address known)--> MAPPING --(granted)--> MAPPED
    MAPPED --(half the lifetime gone)--> RENEWING --(granted)--> MAPPED
    any live state --close()--> DELETING --(answer or attempts spent)--> CLOSED
    any live state --(error result, no answer, mapping expired)--> FAILED

PCP starts in MAPPING (its MAP response carries the external address). Every request is
retransmitted 250 ms, 500 ms, 1 s, ... (RFC 6886 section 3.1; PCP's RFC 6887 section 8.1.1
IRT of 3 s for PCP) up to a bounded number of attempts, then the core fails with
``"no answer"``, which the driver reads as "no NAT-PMP/PCP gateway here".

Renewal is at half the granted lifetime (RFC 6886 section 3.3, RFC 6887 section 11.2.1),
asking for the same external port. The server's epoch (seconds since its start) is checked
on every answer (RFC 6886 section 3.6, RFC 6887 section 8.5): if it went backwards the
gateway rebooted, so a NAT-PMP core asks the external address again (it may have changed)
and maps again; a PCP MAP answer already carries the address. A PCP answer must echo
our 96-bit nonce; NAT-PMP answers must name our opcode and internal port. Anything else is
`BadFrame`, which the driver counts and drops.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

from p2pd.errors import BadFrame, LocalError

#: The NAT-PMP and PCP server port on the gateway (RFC 6886 section 3.1, RFC 6887 section 19.1).
SERVER_PORT = 5351
#: Version bytes: NAT-PMP is 0, PCP is 2 (RFC 6887 section 9).
NATPMP_VERSION = 0
PCP_VERSION = 2
#: NAT-PMP opcodes (RFC 6886 sections 3.2, 3.3); a response sets the high bit.
OP_EXTERNAL_ADDRESS = 0
OP_MAP = {"udp": 1, "tcp": 2}
RESPONSE_BIT = 0x80
#: PCP's MAP opcode and IANA protocol numbers (RFC 6887 section 11).
PCP_OP_MAP = 1
IANA_PROTOCOL = {"udp": 17, "tcp": 6}
#: Result codes (RFC 6886 section 3.5; RFC 6887 section 7.4).
NATPMP_RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized",
    3: "network failure (the gateway has no usable external address)",
    4: "out of resources",
    5: "unsupported opcode",
}
PCP_RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized",
    3: "malformed request",
    4: "unsupported opcode",
    5: "unsupported option",
    6: "malformed option",
    7: "network failure",
    8: "no resources",
    9: "unsupported protocol",
    10: "user exceeded quota",
    11: "cannot provide external",
    12: "address mismatch",
    13: "excessive remote peers",
}
#: Result code 1 in either protocol: the gateway answered but speaks the other version.
UNSUPPORTED_VERSION = 1

# Wire layouts, network byte order (RFC 6886 sections 3.2-3.3, RFC 6887 sections 7 and 11.1).
_NATPMP_HEADER = struct.Struct("!BBH")  # version, opcode, reserved/result
_NATPMP_ADDRESS_RESPONSE = struct.Struct("!BBHI4s")  # ..., epoch, external IPv4: 12 bytes
_NATPMP_MAP_REQUEST = struct.Struct("!BBHHHI")  # ..., internal, suggested ext., lifetime
_NATPMP_MAP_RESPONSE = struct.Struct("!BBHIHHI")  # ..., epoch, internal, external, lifetime
_NATPMP_ERROR = struct.Struct("!BBHI")  # an error answer needs only the result and epoch
_PCP_REQUEST_HEADER = struct.Struct("!BBHI16s")  # version, R|op, reserved, lifetime, client IP
_PCP_RESPONSE_HEADER = struct.Struct("!BBBBII12x")  # ..., reserved, result, lifetime, epoch
_PCP_MAP = struct.Struct("!12sB3xHH16s")  # nonce, protocol, internal, external port, ext. IP
#: A PCP MAP message is 24 + 36 bytes; answers may carry options after it, up to 1100 bytes.
PCP_MAP_SIZE = _PCP_RESPONSE_HEADER.size + _PCP_MAP.size
PCP_MAX_SIZE = 1100
#: PCP's "no preference" external address (RFC 6887 section 11.1: all zeros).
NO_SUGGESTION = "0.0.0.0"  # noqa: S104 - an address on the wire, never bound
#: PCP's mapping nonce: 96 random bits the driver draws (RFC 6887 section 11.1).
NONCE_SIZE = 12

#: NAT-PMP retransmission (RFC 6886 section 3.1): 250 ms, doubling. The RFC allows 9 tries
#: (about 64 s); 5 (7.75 s in all) is enough on a LAN and lets the driver fall back quickly.
NATPMP_INITIAL_TIMEOUT = 0.25
NATPMP_MAX_ATTEMPTS = 5
#: PCP retransmission (RFC 6887 section 8.1.1): IRT 3 s, doubling; bounded to 3 tries (21 s),
#: and only tried after a gateway answered NAT-PMP, so it rarely waits at all.
PCP_INITIAL_TIMEOUT = 3.0
PCP_MAX_ATTEMPTS = 3
#: A deletion at exit gets two tries: exit must stay quick, and a leftover mapping expires.
DELETE_MAX_ATTEMPTS = 2
#: Seconds of lifetime asked for: 2 hours, RFC 6886 section 3.3's recommended value.
DEFAULT_LIFETIME = 7200
#: Epoch check slack (RFC 6886 section 3.6): the server clock may run 1/8 slow, plus 2 s.
EPOCH_CLOCK_SLACK = 7 / 8
EPOCH_SLACK_SECONDS = 2.0

#: External addresses nobody on the internet can reach: private (RFC 1918), shared/CGNAT
#: (RFC 6598), loopback, link-local, "this network". A gateway reporting one sits behind
#: another NAT, so a mapping on it is useless. TEST-NET (RFC 5737) is deliberately absent: it
#: is the lab's public internet, and it is never routed on the real one anyway.
UNREACHABLE_NETWORKS = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
    )
)
#: The status of a gateway whose external address is not public.
BEHIND_CGNAT = "useless: gateway behind CGNAT"

Method = Literal["natpmp", "pcp"]
Protocol = Literal["udp", "tcp"]
Addr = tuple[str, int]


class State(enum.Enum):
    """Where a mapping stands; see the module docstring."""

    ADDRESS = "address"
    MAPPING = "mapping"
    MAPPED = "mapped"
    RENEWING = "renewing"
    DELETING = "deleting"
    CLOSED = "closed"
    FAILED = "failed"


#: The legal transitions, in one place.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.ADDRESS: frozenset({State.MAPPING, State.DELETING, State.CLOSED, State.FAILED}),
    State.MAPPING: frozenset({State.MAPPED, State.DELETING, State.CLOSED, State.FAILED}),
    State.MAPPED: frozenset({State.RENEWING, State.DELETING, State.FAILED}),
    State.RENEWING: frozenset({State.MAPPED, State.DELETING, State.FAILED}),
    State.DELETING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
    State.FAILED: frozenset({State.CLOSED}),
}


@dataclass(frozen=True, slots=True)
class Mapped:
    """The gateway granted (or renewed) the mapping: ``external`` for ``lifetime`` seconds."""

    external: Addr
    lifetime: int


@dataclass(frozen=True, slots=True)
class Failed:
    """No mapping from this method; ``result`` is the server's code, or None if it never said."""

    reason: str
    result: int | None = None


@dataclass(frozen=True, slots=True)
class Deleted:
    """The core is done; ``confirmed`` if the gateway answered a deletion request."""

    confirmed: bool


Event = Mapped | Failed | Deleted


def external_address_problem(ip: str) -> str | None:
    """Why a gateway's external address makes its mappings useless, or None if usable."""
    if not ip:
        return f"{BEHIND_CGNAT} (it has no public external address)"
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return f"{BEHIND_CGNAT} (external address {ip!r} is not IPv4)"
    if any(address in network for network in UNREACHABLE_NETWORKS):
        return f"{BEHIND_CGNAT} (external address {ip} is not public)"
    return None


# --- wire formats ---------------------------------------------------------------------------


def natpmp_address_request() -> bytes:
    """NAT-PMP "what is your external address" (RFC 6886 section 3.2): two bytes."""
    return bytes([NATPMP_VERSION, OP_EXTERNAL_ADDRESS])


def natpmp_map_request(protocol: Protocol, internal: int, external: int, lifetime: int) -> bytes:
    """NAT-PMP map request (RFC 6886 section 3.3); lifetime 0 (and external 0) deletes."""
    return _NATPMP_MAP_REQUEST.pack(
        NATPMP_VERSION, OP_MAP[protocol], 0, internal, external, lifetime
    )


def pcp_map_request(
    protocol: Protocol,
    internal: int,
    *,
    client_ip: str,
    nonce: bytes,
    lifetime: int,
    suggested: Addr | None = None,
) -> bytes:
    """PCP MAP request (RFC 6887 sections 7.1, 11.1); IPv4 addresses go IPv4-mapped."""
    ext_ip, ext_port = suggested or (NO_SUGGESTION, 0)
    header = _PCP_REQUEST_HEADER.pack(PCP_VERSION, PCP_OP_MAP, 0, lifetime, _mapped16(client_ip))
    body = _PCP_MAP.pack(nonce, IANA_PROTOCOL[protocol], internal, ext_port, _mapped16(ext_ip))
    return header + body


def _mapped16(ip: str) -> bytes:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}").packed
    return address.packed


@dataclass(frozen=True, slots=True)
class Answer:
    """A parsed NAT-PMP or PCP answer (fields a given opcode lacks are zero/empty)."""

    version: int
    opcode: int
    result: int
    epoch: int
    external_ip: str = ""
    internal_port: int = 0
    external_port: int = 0
    lifetime: int = 0
    nonce: bytes = b""
    protocol: int = 0


def parse_answer_untrusted(data: bytes) -> Answer:
    """Parse a NAT-PMP or PCP response by its version byte; `BadFrame` if malformed."""
    if len(data) < _NATPMP_ERROR.size:
        raise BadFrame("portmap: short answer")
    if data[0] == NATPMP_VERSION:
        return _parse_natpmp_untrusted(data)
    if data[0] == PCP_VERSION:
        return _parse_pcp_untrusted(data)
    raise BadFrame("portmap: unknown version")


def _parse_natpmp_untrusted(data: bytes) -> Answer:
    version, opcode, result, epoch = _NATPMP_ERROR.unpack_from(data)
    if not opcode & RESPONSE_BIT:
        raise BadFrame("portmap: not a response")
    request_op = opcode & ~RESPONSE_BIT
    if result != 0:
        return Answer(version, opcode, result, epoch)
    if request_op == OP_EXTERNAL_ADDRESS:
        if len(data) != _NATPMP_ADDRESS_RESPONSE.size:
            raise BadFrame("portmap: bad address answer size")
        *_, raw_ip = _NATPMP_ADDRESS_RESPONSE.unpack(data)
        return Answer(
            version, opcode, result, epoch, external_ip=str(ipaddress.IPv4Address(raw_ip))
        )
    if request_op in OP_MAP.values():
        if len(data) != _NATPMP_MAP_RESPONSE.size:
            raise BadFrame("portmap: bad map answer size")
        _, _, _, _, internal, external, lifetime = _NATPMP_MAP_RESPONSE.unpack(data)
        return Answer(version, opcode, result, epoch, "", internal, external, lifetime)
    raise BadFrame("portmap: unknown opcode")


def _parse_pcp_untrusted(data: bytes) -> Answer:
    if len(data) > PCP_MAX_SIZE or len(data) % 4:
        raise BadFrame("portmap: bad PCP size")
    if len(data) < _PCP_RESPONSE_HEADER.size:
        raise BadFrame("portmap: short PCP answer")
    version, opcode, _, result, lifetime, epoch = _PCP_RESPONSE_HEADER.unpack_from(data)
    if opcode != RESPONSE_BIT | PCP_OP_MAP:
        raise BadFrame("portmap: not a MAP response")
    if len(data) < PCP_MAP_SIZE:
        if result == 0:
            raise BadFrame("portmap: short PCP answer")
        # An error such as "unsupported version" may come without the MAP body.
        return Answer(version, opcode, result, epoch, lifetime=lifetime)
    nonce, protocol, internal, external, raw_ip = _PCP_MAP.unpack_from(
        data, _PCP_RESPONSE_HEADER.size
    )
    address = ipaddress.IPv6Address(raw_ip)
    external_ip = str(address.ipv4_mapped or address)
    return Answer(
        version, opcode, result, epoch, external_ip, internal, external, lifetime, nonce, protocol
    )


# --- the client core ------------------------------------------------------------------------


class PortMapCore:
    """One mapping of ``protocol`` ``internal_port`` through NAT-PMP or PCP; sans-IO.

    The driver sends what :meth:`datagrams_to_send` returns to ``gateway:SERVER_PORT``,
    feeds every datagram from there to :meth:`receive_untrusted`, calls :meth:`handle_timer`
    at :meth:`get_timer`, and drains :meth:`next_event`. PCP needs the address our packets
    leave with (``client_ip``: the server checks it) and a fresh random ``nonce``.
    """

    def __init__(
        self,
        method: Method,
        protocol: Protocol,
        internal_port: int,
        *,
        now: float,
        client_ip: str = "",
        nonce: bytes = b"",
        lifetime: int = DEFAULT_LIFETIME,
    ) -> None:
        if method not in ("natpmp", "pcp") or protocol not in OP_MAP:
            raise LocalError(f"unknown port mapping method/protocol {method!r}/{protocol!r}")
        if not 0 < internal_port < 1 << 16 or lifetime <= 0:
            raise LocalError(f"bad port {internal_port} or lifetime {lifetime}")
        if method == "pcp" and (len(nonce) != NONCE_SIZE or not client_ip):
            raise LocalError(f"PCP needs a {NONCE_SIZE}-byte nonce and the client's address")
        self.method: Method = method
        self.protocol: Protocol = protocol
        self.internal_port = internal_port
        self.lifetime = lifetime
        self._client_ip = client_ip
        self._nonce = nonce
        self._initial = NATPMP_INITIAL_TIMEOUT if method == "natpmp" else PCP_INITIAL_TIMEOUT
        self._events: collections.deque[Event] = collections.deque()
        self.external_ip = ""
        #: The external port we hold (or hope for: the internal one, as UPnP asks for).
        self.external_port = internal_port
        #: Seconds the gateway granted last (it may differ from ``lifetime``, which we ask).
        self.granted = 0
        self.expires_at = 0.0
        self.renew_at = 0.0
        #: How often the gateway was seen to reboot (its epoch went backwards).
        self.reboots = 0
        self._epoch: tuple[int, float] | None = None
        self._pending = b""
        self._sent = 0
        self._max_attempts = 0
        self._due = now
        self.state = State.CLOSED  # Replaced at once below, through the transition table.
        if method == "natpmp":
            self.state = State.ADDRESS
            self._request(natpmp_address_request(), now)
        else:
            self.state = State.MAPPING
            self._request(self._map_request(self.lifetime), now)

    # --- driver interface -----------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The request to (re)send now, if one is due."""
        if not self._pending or self._sent >= self._max_attempts or now < self._due:
            return []
        self._sent += 1
        self._due = now + self._initial * 2 ** (self._sent - 1)
        return [self._pending]

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` (or :meth:`datagrams_to_send`) has work, or None."""
        if self.state in (State.CLOSED, State.FAILED):
            return None
        if self.state is State.RENEWING:
            return min(self._due, self.expires_at)
        if self._pending:
            return self._due
        return min(self.renew_at, self.expires_at)

    def handle_timer(self, now: float) -> None:
        """Give up on an unanswered request, start a renewal, or notice an expired mapping."""
        if self._pending and self._sent >= self._max_attempts and now >= self._due:
            self._no_answer(now)
        if self.state in (State.MAPPED, State.RENEWING) and now >= self.expires_at:
            self._fail("mapping expired without a renewal", None)
        elif self.state is State.MAPPED and now >= self.renew_at:
            self._move(State.RENEWING)
            self._request(self._map_request(self.lifetime), now)

    def receive_untrusted(self, data: bytes, now: float) -> None:
        """Take one datagram from the gateway; `BadFrame` if it is not an answer we await."""
        if not self._pending:
            raise BadFrame("portmap: unexpected answer")
        answer = parse_answer_untrusted(data)
        self._check_matches(answer)
        rebooted = self._check_epoch(answer.epoch, now)
        if self.state is State.DELETING:
            self._close(confirmed=True)
            return
        if answer.result != 0:
            table = NATPMP_RESULTS if answer.version == NATPMP_VERSION else PCP_RESULTS
            name = table.get(answer.result, f"result {answer.result}")
            self._fail(f"{self.method}: {name}", answer.result)
            return
        asked_address = self.method == "natpmp" and self._pending[1] == OP_EXTERNAL_ADDRESS
        self._pending = b""
        if asked_address:
            self.external_ip = answer.external_ip
            if self.state is State.ADDRESS:
                self._move(State.MAPPING)
            self._request(self._map_request(self.lifetime), now)
            return
        if answer.lifetime == 0:
            self._fail(f"{self.method}: the gateway granted no lifetime", None)
            return
        if self.method == "pcp":
            self.external_ip = answer.external_ip
        self.external_port = answer.external_port
        self.granted = answer.lifetime
        self.expires_at = now + answer.lifetime
        self.renew_at = now + answer.lifetime / 2
        self._move(State.MAPPED)
        self._events.append(Mapped((self.external_ip, self.external_port), answer.lifetime))
        if rebooted and self.method == "natpmp":
            # After a reboot the external address may have changed: learn it again.
            self._move(State.RENEWING)
            self._request(natpmp_address_request(), now)

    def close(self, now: float) -> None:
        """Ask the gateway to delete the mapping (lifetime 0); ends in a `Deleted` event."""
        if self.state in (State.MAPPING, State.MAPPED, State.RENEWING):
            self._move(State.DELETING)
            if self.method == "natpmp":
                # RFC 6886 section 3.4: a deletion suggests external port 0.
                packet = natpmp_map_request(self.protocol, self.internal_port, 0, 0)
            else:
                packet = self._map_request(0)
            self._request(packet, now, DELETE_MAX_ATTEMPTS)
        elif self.state is not State.DELETING and self.state is not State.CLOSED:
            self._close()

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    @property
    def external(self) -> Addr | None:
        """The mapped external address while the mapping is held."""
        if self.state in (State.MAPPED, State.RENEWING):
            return (self.external_ip, self.external_port)
        return None

    # --- internals ------------------------------------------------------------------------

    def _move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise LocalError(f"portmap: illegal transition {self.state.value} -> {new.value}")
        self.state = new

    def _request(self, packet: bytes, now: float, attempts: int | None = None) -> None:
        self._pending = packet
        self._sent = 0
        self._due = now
        default = NATPMP_MAX_ATTEMPTS if self.method == "natpmp" else PCP_MAX_ATTEMPTS
        self._max_attempts = attempts or default

    def _map_request(self, lifetime: int) -> bytes:
        if self.method == "natpmp":
            return natpmp_map_request(
                self.protocol, self.internal_port, self.external_port, lifetime
            )
        suggested = (self.external_ip or NO_SUGGESTION, self.external_port)
        return pcp_map_request(
            self.protocol,
            self.internal_port,
            client_ip=self._client_ip,
            nonce=self._nonce,
            lifetime=lifetime,
            suggested=suggested,
        )

    def _check_matches(self, answer: Answer) -> None:
        if self.method == "pcp" and answer.version == NATPMP_VERSION:
            if answer.result != UNSUPPORTED_VERSION:
                raise BadFrame("portmap: NAT-PMP answer to PCP")
            return  # A NAT-PMP-only gateway refusing PCP: a real answer (RFC 6887 section 9).
        expected_version = NATPMP_VERSION if self.method == "natpmp" else PCP_VERSION
        if answer.version != expected_version:
            if answer.result == UNSUPPORTED_VERSION:
                return
            raise BadFrame("portmap: wrong version")
        if self.method == "natpmp":
            request_op = self._pending[1]
            if answer.opcode != RESPONSE_BIT | request_op:
                raise BadFrame("portmap: answer to another request")
            mapped = answer.result == 0 and request_op != OP_EXTERNAL_ADDRESS
            if mapped and answer.internal_port != self.internal_port:
                raise BadFrame("portmap: answer for another port")
            return
        if answer.nonce and answer.nonce != self._nonce:
            raise BadFrame("portmap: PCP nonce mismatch")
        if answer.result == 0 and (
            answer.protocol != IANA_PROTOCOL[self.protocol]
            or answer.internal_port != self.internal_port
        ):
            raise BadFrame("portmap: PCP answer for another mapping")

    def _check_epoch(self, epoch: int, now: float) -> bool:
        """Record the server's epoch; True if it went backwards (the gateway rebooted)."""
        previous = self._epoch
        self._epoch = (epoch, now)
        if previous is None:
            return False
        old_epoch, old_now = previous
        expected = old_epoch + (now - old_now) * EPOCH_CLOCK_SLACK - EPOCH_SLACK_SECONDS
        if epoch < expected:
            self.reboots += 1
            return True
        return False

    def _no_answer(self, now: float) -> None:
        self._pending = b""
        if self.state is State.DELETING:
            self._close()
        elif self.state is State.RENEWING and now < self.expires_at:
            # Try again halfway to expiry; handle_timer fails the mapping when it expires.
            self._move(State.MAPPED)
            self.renew_at = now + (self.expires_at - now) / 2
        elif self.state in (State.ADDRESS, State.MAPPING):
            self._fail(f"{self.method}: no answer", None)

    def _fail(self, reason: str, result: int | None) -> None:
        self._pending = b""
        self._move(State.FAILED)
        self._events.append(Failed(reason, result))

    def _close(self, *, confirmed: bool = False) -> None:
        self._pending = b""
        self._move(State.CLOSED)
        self._events.append(Deleted(confirmed))
