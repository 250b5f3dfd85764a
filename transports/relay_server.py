"""The assist relay's sans-IO server core: registrations, rendezvous and bounded forwarding.

Theory of operation
-------------------
The wire format and the reasons for it are in :mod:`transports.relay_wire`.  This core keeps
*registrations*: one per (tag, client endpoint), each with a random u32 slot that stays the
same while the client refreshes it, and that expires ``lifetime`` seconds after its last
refresh.  Registrations are kept in an ordered dict in refresh order; since every
registration lives the same ``lifetime``, that is also expiry order, and expired ones are
collected from its front in amortised O(1).

What it guarantees, whatever arrives:

* **No open relay.**  A SEND is forwarded only from a verified registrant to a slot
  registered under a tag the sender is registered under too, and the DELIVER names the
  sender's slot under that tag.  Nothing crosses tags.
* **No state for unverified sources, no amplification.**  A REGISTER without a valid cookie
  only gets a same-size answer carrying the cookie (:func:`cookie_for`); the cookie is a keyed
  BLAKE2b of the tag and the endpoint under a random secret that rotates every
  ``cookie_rotation`` seconds (the previous secret is still accepted).
* **Bounded memory and work.**  At most ``max_registrations`` registrations and as many
  client records, ``max_per_ip`` client records per IP (per /64 for IPv6), each under at
  most ``max_tags_per_client`` tags, ``max_per_tag`` registrants per tag, ``MAX_QUEUE``
  frames waiting for the driver.
* **Bounded relaying per registrant** (a client endpoint, across its tags): a token bucket of
  ``packets_per_second``, and ``bytes_per_window`` payload bytes per ``byte_window`` (a fixed
  window from the client's first registration).  A client record that relayed bytes outlives
  its registrations until its window ends, so re-registering does not reset its cap.

Every drop is counted in :attr:`RelayServer.counters` as ``drop_<reason>``; nothing raises
on network input.  Endpoints are :class:`Endpoint`: a UDP source, or a TCP connection (the
driver calls :meth:`RelayServer.forget` when it closes).  Time is monotonic seconds.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from hmac import compare_digest

from p2pd.errors import BadFrame, LocalError
from p2pd.ratelimit import TokenBucket, bucket_key
from transports import relay_wire as wire

#: Seconds a registration lives without a refresh: NAT bindings last 30 s or more, and a
#: client refreshing every third of it keeps both the registration and its binding alive.
DEFAULT_LIFETIME = 60
#: Registrations (and client records) kept at most: about 1 KiB each, so a few MiB.
DEFAULT_MAX_REGISTRATIONS = 10_000
#: Client records per source IP (IPv6: per /64): a household behind one NAT, not a botnet.
DEFAULT_MAX_PER_IP = 32
#: Registrants per tag: one passphrase's group, and what one REGISTERED can list.
DEFAULT_MAX_PER_TAG = wire.MAX_LISTED + 1
#: Tags one client endpoint may be registered under: the current and the next epoch's near a
#: boundary, and slack for a restart; without it one source could fill the table with tags.
DEFAULT_MAX_TAGS_PER_CLIENT = 4
#: Relayed packets per second per registrant, and the burst: about 5 MB/s of 1232-byte
#: datagrams, so a 20 MiB transfer takes seconds, while one registrant cannot hog the CPU.
DEFAULT_PACKETS_PER_SECOND = 4000.0
DEFAULT_PACKET_BURST = 1000.0
#: Payload bytes relayed per registrant per window: 256 MiB an hour, so a 20 MiB transfer
#: fits twelve times over, while a relay volunteer's uplink is not someone's free VPN.
DEFAULT_BYTES_PER_WINDOW = 256 * 2**20
DEFAULT_BYTE_WINDOW = 3600.0
#: Seconds between cookie secret rotations: a client refreshes every 20 s by default and the
#: previous secret stays valid, so honest clients never notice; a stolen cookie goes stale.
DEFAULT_COOKIE_ROTATION = 120.0
#: Frames waiting for the driver at most; the driver drains after every input.
MAX_QUEUE = 4096
#: Bytes of the cookie secret.
SECRET_SIZE = 32
#: Domain separation of the cookie MAC.
COOKIE_CONTEXT = b"p2pd v1 relay cookie"
#: Seconds between scans for lingering client records whose byte window ended.
LINGER_SCAN_INTERVAL = 60.0

Addr = wire.Addr
Rng = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a client is: a UDP source address, or a TCP connection from that address."""

    host: str
    port: int
    stream: bool = False

    @property
    def addr(self) -> Addr:
        """The reflexive address: the source the relay saw."""
        return self.host, self.port


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The relay's limits; the defaults suit a volunteer node (see the named constants)."""

    lifetime: int = DEFAULT_LIFETIME
    max_registrations: int = DEFAULT_MAX_REGISTRATIONS
    max_per_ip: int = DEFAULT_MAX_PER_IP
    max_per_tag: int = DEFAULT_MAX_PER_TAG
    max_tags_per_client: int = DEFAULT_MAX_TAGS_PER_CLIENT
    packets_per_second: float = DEFAULT_PACKETS_PER_SECOND
    packet_burst: float = DEFAULT_PACKET_BURST
    bytes_per_window: int = DEFAULT_BYTES_PER_WINDOW
    byte_window: float = DEFAULT_BYTE_WINDOW
    cookie_rotation: float = DEFAULT_COOKIE_ROTATION

    def __post_init__(self) -> None:
        if not 3 <= self.lifetime <= wire.MAX_LIFETIME:
            raise LocalError(f"lifetime must be 3..{wire.MAX_LIFETIME} s, got {self.lifetime}")
        limits = (self.max_registrations, self.max_per_ip, self.max_per_tag)
        if min(*limits, self.max_tags_per_client) < 1:
            raise LocalError("registration limits must be at least 1")
        if self.max_per_tag > DEFAULT_MAX_PER_TAG:
            raise LocalError(f"max_per_tag cannot exceed {DEFAULT_MAX_PER_TAG}")
        if self.bytes_per_window < wire.MAX_PAYLOAD:
            raise LocalError(f"bytes_per_window must be at least {wire.MAX_PAYLOAD}")
        if not self.byte_window > 0 or not self.cookie_rotation > 0:
            raise LocalError("byte_window and cookie_rotation must be positive")
        TokenBucket(self.packets_per_second, self.packet_burst)  # validates both


def cookie_for(secret: bytes, tag: bytes, endpoint: Endpoint) -> bytes:
    """The cookie proving that ``endpoint`` receives what the relay sends it, for ``tag``."""
    data = COOKIE_CONTEXT + tag + wire.encode_addr(endpoint.addr) + bytes([endpoint.stream])
    return hashlib.blake2b(data, key=secret, digest_size=wire.COOKIE_SIZE).digest()


class _Client:
    """One registrant endpoint: its registrations and its relaying budget."""

    __slots__ = ("bucket", "bytes_used", "endpoint", "ip_key", "regs", "window_start")

    def __init__(self, endpoint: Endpoint, config: RelayConfig, now: float) -> None:
        self.endpoint = endpoint
        self.ip_key = bucket_key(endpoint.host)
        self.regs: dict[bytes, _Registration] = {}
        self.bucket = TokenBucket(config.packets_per_second, config.packet_burst)
        self.window_start = now
        self.bytes_used = 0


class _Registration:
    __slots__ = ("client", "expires", "slot", "tag")

    def __init__(self, slot: int, tag: bytes, client: _Client, expires: float) -> None:
        self.slot = slot
        self.tag = tag
        self.client = client
        self.expires = expires


class RelayServer:
    """The relay's state machine; see the module docstring.  Feed it with
    :meth:`receive_untrusted`, call :meth:`handle_timer` at :meth:`get_timer`, and send what
    :meth:`datagrams_to_send` returns."""

    def __init__(self, config: RelayConfig, now: float, *, rng: Rng = os.urandom) -> None:
        self.config = config
        self._rng = rng
        self._secrets = (self._new_secret(), self._new_secret())
        self._rotated_at = now
        self._next_linger_scan = now + LINGER_SCAN_INTERVAL
        self._by_key: collections.OrderedDict[tuple[bytes, Endpoint], _Registration] = (
            collections.OrderedDict()
        )
        self._slots: dict[int, _Registration] = {}
        self._tags: dict[bytes, dict[int, _Registration]] = {}
        self._clients: dict[Endpoint, _Client] = {}
        self._per_ip: collections.Counter[bytes] = collections.Counter()
        self._out: list[tuple[bytes, Endpoint]] = []
        #: Verdicts and drops by reason; never contains tags, addresses or payloads.
        self.counters: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"RelayServer(registrations={len(self._slots)}, clients={len(self._clients)})"

    @property
    def registrations(self) -> int:
        """Registrations in place."""
        return len(self._slots)

    @property
    def clients(self) -> int:
        """Client records kept, including those lingering for their byte window."""
        return len(self._clients)

    def _new_secret(self) -> bytes:
        secret = self._rng(SECRET_SIZE)
        if len(secret) != SECRET_SIZE:
            raise LocalError(f"rng returned {len(secret)} bytes, expected {SECRET_SIZE}")
        return secret

    # -- time ---------------------------------------------------------------------------

    def get_timer(self) -> float:
        """When :meth:`handle_timer` has work: the next expiry or cookie rotation."""
        deadline = min(self._rotated_at + self.config.cookie_rotation, self._next_linger_scan)
        first = next(iter(self._by_key.values()), None)
        return deadline if first is None else min(deadline, first.expires)

    def handle_timer(self, now: float) -> None:
        """Expire registrations, rotate the cookie secret, forget clients whose window ended."""
        self._rotate(now)
        self._collect(now)
        if now >= self._next_linger_scan:
            self._next_linger_scan = now + LINGER_SCAN_INTERVAL
            for client in [c for c in self._clients.values() if not c.regs]:
                self._maybe_forget_client(client, now)

    def _rotate(self, now: float) -> None:
        elapsed = now - self._rotated_at
        if elapsed >= self.config.cookie_rotation:
            previous = self._secrets[0] if elapsed < 2 * self.config.cookie_rotation else None
            self._secrets = (self._new_secret(), previous or self._new_secret())
            self._rotated_at = now

    def _collect(self, now: float) -> None:
        by_key = self._by_key
        while by_key:
            reg = next(iter(by_key.values()))
            if reg.expires > now:
                return
            self._remove(reg, now)
            self.counters["expired"] += 1

    # -- registrations ------------------------------------------------------------------

    def _remove(self, reg: _Registration, now: float) -> None:
        client = reg.client
        del self._by_key[reg.tag, client.endpoint]
        del self._slots[reg.slot]
        members = self._tags[reg.tag]
        del members[reg.slot]
        if not members:
            del self._tags[reg.tag]
        del client.regs[reg.tag]
        if not client.regs:
            self._maybe_forget_client(client, now)

    def _maybe_forget_client(self, client: _Client, now: float) -> None:
        """Forget a client without registrations unless its byte window still counts."""
        if client.bytes_used and now - client.window_start < self.config.byte_window:
            return
        del self._clients[client.endpoint]
        self._per_ip[client.ip_key] -= 1
        if self._per_ip[client.ip_key] <= 0:
            del self._per_ip[client.ip_key]

    def _new_slot(self) -> int:
        while True:
            slot = int.from_bytes(self._rng(wire.SLOT_SIZE), "big")
            if slot not in self._slots:
                return slot

    def _add(self, tag: bytes, endpoint: Endpoint, now: float) -> _Registration:
        config = self.config
        if len(self._slots) >= config.max_registrations:
            raise BadFrame("registrations_full")
        if len(self._tags.get(tag, ())) >= config.max_per_tag:
            raise BadFrame("tag_full")
        client = self._clients.get(endpoint)
        if client is None:
            key = bucket_key(endpoint.host)
            if len(self._clients) >= config.max_registrations:
                raise BadFrame("clients_full")
            if self._per_ip[key] >= config.max_per_ip:
                raise BadFrame("ip_full")
            client = self._clients[endpoint] = _Client(endpoint, config, now)
            self._per_ip[key] += 1
        elif len(client.regs) >= config.max_tags_per_client:
            raise BadFrame("client_tags_full")
        reg = _Registration(self._new_slot(), tag, client, now + config.lifetime)
        self._by_key[tag, endpoint] = reg
        self._slots[reg.slot] = reg
        self._tags.setdefault(tag, {})[reg.slot] = reg
        client.regs[tag] = reg
        return reg

    def forget(self, endpoint: Endpoint, now: float) -> None:
        """Drop every registration of ``endpoint`` (its TCP connection closed)."""
        client = self._clients.get(endpoint)
        if client is not None:
            for reg in list(client.regs.values()):
                self._remove(reg, now)

    # -- input --------------------------------------------------------------------------

    def receive_untrusted(self, data: bytes, source: Endpoint, now: float) -> None:
        """Handle one frame from ``source``; anything wrong is counted and dropped."""
        self._rotate(now)
        self._collect(now)
        try:
            frame = wire.parse_untrusted(data)
            if isinstance(frame, wire.Register):
                self._on_register(frame, source, now)
            elif isinstance(frame, wire.Send):
                self._on_send(frame, source, now)
            else:
                raise BadFrame("wrong_direction")
        except BadFrame as exc:
            self.counters["drop_" + exc.reason] += 1

    def _cookie_ok(self, frame: wire.Register, source: Endpoint) -> bool:
        ok = False
        for secret in self._secrets:  # no early exit: the same work whichever matches
            ok = compare_digest(cookie_for(secret, frame.tag, source), frame.cookie) | ok
        return ok

    def _on_register(self, frame: wire.Register, source: Endpoint, now: float) -> None:
        lifetime = self.config.lifetime
        cookie = cookie_for(self._secrets[0], frame.tag, source)
        if not self._cookie_ok(frame, source):
            self.counters["challenged"] += 1
            answer = wire.Registered(frame.tag, frame.nonce, cookie, False, lifetime, source.addr)
            self._queue(answer, source)
            return
        reg = self._by_key.get((frame.tag, source))
        if reg is None:
            reg = self._add(frame.tag, source, now)
            self.counters["registered"] += 1
            new = True
        else:
            if not reg.client.bucket.allow(now):
                raise BadFrame("rate")
            reg.expires = now + lifetime
            self._by_key.move_to_end((frame.tag, source))
            self.counters["refreshed"] += 1
            new = False
        others = [r for r in self._tags[frame.tag].values() if r is not reg]
        peers = tuple((r.slot, r.client.endpoint.addr) for r in others[: wire.MAX_LISTED])
        answer = wire.Registered(frame.tag, frame.nonce, cookie, True, lifetime, source.addr, peers)
        self._queue(answer, source)
        if new:
            for other in others:
                self._queue(wire.Peer(frame.tag, reg.slot, source.addr), other.client.endpoint)

    def _on_send(self, frame: wire.Send, source: Endpoint, now: float) -> None:
        client = self._clients.get(source)
        if client is None or not client.regs:
            raise BadFrame("unregistered_sender")
        dest = self._slots.get(frame.slot)
        if dest is None:
            raise BadFrame("unknown_slot")
        mine = client.regs.get(dest.tag)
        if mine is None:
            raise BadFrame("cross_tag")
        if mine is dest:
            raise BadFrame("to_self")
        if not client.bucket.allow(now):
            raise BadFrame("rate")
        if now - client.window_start >= self.config.byte_window:
            client.window_start, client.bytes_used = now, 0
        size = len(frame.payload)
        if client.bytes_used + size > self.config.bytes_per_window:
            raise BadFrame("byte_cap")
        client.bytes_used += size
        self._queue(wire.Deliver(mine.slot, frame.payload), dest.client.endpoint)
        self.counters["relayed"] += 1
        self.counters["relayed_bytes"] += size

    def _queue(self, frame: wire.Frame, dest: Endpoint) -> None:
        if len(self._out) >= MAX_QUEUE:
            raise BadFrame("queue_full")
        self._out.append((wire.encode(frame), dest))

    # -- output -------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Endpoint]]:
        """Every frame to send, with its destination, in order; the queue is emptied."""
        del now  # part of the sans-IO signature; nothing here is time-dependent yet
        out, self._out = self._out, []
        return out
