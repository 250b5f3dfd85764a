"""The node's side of an assist relay, sans-IO: register, refresh, learn peers, wrap and unwrap.

Theory of operation
-------------------
A :class:`RelayClient` talks to one relay (over UDP or a TCP connection: the bytes are the
same, see :mod:`transports.relay_wire`).  At wall time ``wall`` it keeps a registration under
the relay tag (:func:`p2pd.subkeys.relay_tag`) of every epoch that touches
``[wall - SKEW_MARGIN, wall + SKEW_MARGIN]``: normally one, two near an epoch boundary.  Two
peers whose clocks differ by less than ``SKEW_MARGIN`` therefore always share a tag, and a
tag that stops being wanted is simply no longer refreshed (the relay expires it).

Per tag: REGISTER (zero cookie) -> REGISTERED unverified with a cookie -> REGISTER with the
cookie, sent at once -> REGISTERED verified, listing the peers.  Unanswered REGISTERs are
repeated with exponential backoff (``RETRY_INITIAL`` doubling up to ``RETRY_MAX``); once
verified, the client refreshes every third of the lifetime the relay announced, and starts
over if the relay did not confirm within a lifetime.  Answers count only when they echo
the nonce of one of the last ``NONCES_KEPT`` requests for their tag.

Events (returned by :meth:`RelayClient.receive_untrusted`):

* :class:`Registered` - the relay confirmed us; ``reflexive_addr`` is our address as it saw
  it (emitted the first time and whenever it changes).
* :class:`PeerSeen` - a registrant of one of our tags, by ``slot``, at its reflexive
  address: punch to ``addr``, and offer the relayed path through ``slot``.  Emitted when a
  slot is new or its address changed.
* :class:`Delivered` - ``payload`` relayed from ``slot``.

The driver passes only bytes that came from the relay, sends what
:meth:`RelayClient.datagrams_to_send` returns (after every call into the core), and calls
:meth:`RelayClient.handle_timer` at :meth:`RelayClient.get_timer`.  ``now`` is monotonic,
``wall`` Unix time (only for epochs).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass

from p2pd.errors import BadFrame, LocalError
from p2pd.subkeys import relay_tag
from p2pd.tags import TAG_EPOCH_SECONDS, epoch_of
from transports import relay_wire as wire

#: Clock skew between peers that still lets them meet: near an epoch boundary both tags are
#: registered for this long on either side.  Well under half an epoch.
SKEW_MARGIN = 60.0
#: First retry of an unanswered REGISTER, doubling up to RETRY_MAX while unanswered.
RETRY_INITIAL = 1.0
RETRY_MAX = 30.0
#: A registration is refreshed this many times per lifetime (so two lost refreshes pass).
REFRESHES_PER_LIFETIME = 3
#: Shortest lifetime taken from a relay: guards against a refresh storm.
MIN_LIFETIME = 3
#: Requests per tag whose answers are still accepted (a retry must not orphan a late answer).
NONCES_KEPT = 4
#: Peer slots remembered at most (a hostile relay could push endless PEER frames).
MAX_PEERS = 4 * (wire.MAX_LISTED + 1)

Addr = wire.Addr
Rng = Callable[[int], bytes]
assert SKEW_MARGIN < TAG_EPOCH_SECONDS / 2


@dataclass(frozen=True, slots=True)
class Registered:
    """The relay registered us; it sees us at ``reflexive_addr``."""

    reflexive_addr: Addr


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """A peer registered under one of our tags: ``slot`` at the relay, ``addr`` reflexive."""

    slot: int
    addr: Addr


@dataclass(frozen=True, slots=True)
class Delivered:
    """``payload`` (a p2pd datagram) relayed from the registrant ``slot``."""

    slot: int
    payload: bytes


Event = Registered | PeerSeen | Delivered


def wanted_epochs(wall: float, margin: float = SKEW_MARGIN) -> list[int]:
    """The epochs whose tags a client registers at ``wall``, oldest first."""
    return sorted({epoch_of(max(0.0, wall + shift)) for shift in (-margin, 0.0, margin)})


class _TagState:
    __slots__ = (
        "confirmed_at",
        "cookie",
        "lifetime",
        "next_send",
        "requests",
        "retries",
        "tag",
        "verified",
    )

    def __init__(self, tag: bytes, now: float) -> None:
        self.tag = tag
        self.cookie = wire.NO_COOKIE
        self.requests: collections.deque[tuple[bytes, bytes]] = collections.deque(
            maxlen=NONCES_KEPT
        )
        self.verified = False
        self.confirmed_at = now
        self.lifetime = MIN_LIFETIME
        self.next_send = now
        self.retries = 0


class RelayClient:
    """Registration and framing for one relay; see the module docstring."""

    def __init__(
        self, relay_addr: Addr, tag_key: bytes, now: float, wall: float, *, rng: Rng = os.urandom
    ) -> None:
        self.relay_addr = relay_addr
        self._tag_key = tag_key
        relay_tag(tag_key, 0)  # validates the key now rather than at the first timer
        self._rng = rng
        self._states: dict[bytes, _TagState] = {}
        self._peers: collections.OrderedDict[int, tuple[bytes, Addr]] = collections.OrderedDict()
        self._reflexive: Addr | None = None
        self._out: list[bytes] = []
        self._tags_change_at = now
        #: Verdicts and drops by reason (``drop_<reason>``).
        self.counters: collections.Counter[str] = collections.Counter()
        self.handle_timer(now, wall)

    def __repr__(self) -> str:
        return f"RelayClient(tags={len(self._states)}, peers={len(self._peers)})"

    @property
    def reflexive_addr(self) -> Addr | None:
        """Our address as the relay last reported it."""
        return self._reflexive

    @property
    def registered(self) -> bool:
        """Whether at least one registration is confirmed."""
        return any(state.verified for state in self._states.values())

    @property
    def peers(self) -> dict[int, Addr]:
        """Known peer slots and their reflexive addresses."""
        return {slot: addr for slot, (_tag, addr) in self._peers.items()}

    # -- time ---------------------------------------------------------------------------

    def get_timer(self) -> float:
        """The next ``now`` at which :meth:`handle_timer` has work."""
        deadline = self._tags_change_at
        for state in self._states.values():
            deadline = min(deadline, state.next_send)
            if state.verified:
                deadline = min(deadline, state.confirmed_at + state.lifetime)
        return deadline

    def handle_timer(self, now: float, wall: float) -> None:
        """Follow the epochs, send due REGISTERs, notice registrations the relay dropped."""
        self._update_tags(now, wall)
        for state in self._states.values():
            if state.verified and now >= state.confirmed_at + state.lifetime:
                state.verified = False
                state.retries = 0
                state.next_send = now
                self.counters["registration_lost"] += 1
            if now >= state.next_send:
                self._send_register(state, now)

    def _update_tags(self, now: float, wall: float) -> None:
        epochs = wanted_epochs(wall)
        tags = {relay_tag(self._tag_key, epoch): epoch for epoch in epochs}
        for tag in list(self._states):
            if tag not in tags:
                del self._states[tag]
                for slot in [s for s, (t, _a) in self._peers.items() if t == tag]:
                    del self._peers[slot]
        for tag in tags:
            if tag not in self._states:
                self._states[tag] = _TagState(tag, now)
        # The wanted set changes when wall +- margin crosses an epoch boundary.
        epoch = epoch_of(wall)
        boundaries = (epoch * TAG_EPOCH_SECONDS, (epoch + 1) * TAG_EPOCH_SECONDS)
        changes = [b + shift for b in boundaries for shift in (-SKEW_MARGIN, SKEW_MARGIN)]
        next_change = min(c for c in changes if c > wall)
        self._tags_change_at = now + (next_change - wall)

    def _send_register(self, state: _TagState, now: float) -> None:
        nonce = self._rng(wire.NONCE_SIZE)
        if len(nonce) != wire.NONCE_SIZE:
            raise LocalError(f"rng returned {len(nonce)} bytes, expected {wire.NONCE_SIZE}")
        state.requests.append((nonce, state.cookie))
        self._out.append(wire.encode(wire.Register(state.tag, nonce, state.cookie)))
        self.counters["register_sent"] += 1
        if state.verified:
            state.next_send = now + state.lifetime / REFRESHES_PER_LIFETIME
        else:
            state.next_send = now + min(RETRY_MAX, RETRY_INITIAL * 2**state.retries)
            state.retries += 1

    # -- input --------------------------------------------------------------------------

    def receive_untrusted(self, data: bytes, now: float, wall: float) -> list[Event]:
        """Events from one frame the relay sent; anything wrong is counted and dropped."""
        del wall  # epochs move only on the timer; kept for a uniform driver interface
        try:
            frame = wire.parse_untrusted(data)
            if isinstance(frame, wire.Registered):
                return self._on_registered(frame, now)
            if isinstance(frame, wire.Peer):
                state = self._states.get(frame.tag)
                if state is None or not state.verified:
                    raise BadFrame("unknown_tag")
                return self._seen(frame.tag, [(frame.slot, frame.addr)])
            if isinstance(frame, wire.Deliver):
                if not self.registered:
                    raise BadFrame("unregistered")
                self.counters["delivered"] += 1
                return [Delivered(frame.slot, frame.payload)]
            raise BadFrame("wrong_direction")
        except BadFrame as exc:
            self.counters["drop_" + exc.reason] += 1
            return []

    def _on_registered(self, frame: wire.Registered, now: float) -> list[Event]:
        state = self._states.get(frame.tag)
        if state is None:
            raise BadFrame("unknown_tag")
        sent_cookie = next((c for n, c in state.requests if n == frame.nonce), None)
        if sent_cookie is None:
            raise BadFrame("unknown_nonce")
        state.cookie = frame.cookie
        if not frame.verified:
            self.counters["challenged"] += 1
            if state.verified:
                state.verified = False
                state.retries = 0
            if sent_cookie != frame.cookie:
                self._send_register(state, now)
            return []
        state.verified = True
        state.confirmed_at = now
        state.lifetime = max(MIN_LIFETIME, frame.lifetime)
        state.retries = 0
        state.next_send = now + state.lifetime / REFRESHES_PER_LIFETIME
        self.counters["registered"] += 1
        events: list[Event] = []
        if frame.reflexive != self._reflexive:
            self._reflexive = frame.reflexive
            events.append(Registered(frame.reflexive))
        return events + self._seen(frame.tag, list(frame.peers))

    def _seen(self, tag: bytes, peers: list[tuple[int, Addr]]) -> list[Event]:
        events: list[Event] = []
        for slot, addr in peers:
            known = self._peers.get(slot)
            if known is not None and known[1] == addr:
                continue
            self._peers[slot] = (tag, addr)
            self._peers.move_to_end(slot)
            if len(self._peers) > MAX_PEERS:
                self._peers.popitem(last=False)
            events.append(PeerSeen(slot, addr))
        return events

    # -- output -------------------------------------------------------------------------

    def wrap(self, slot: int, datagram: bytes) -> bytes:
        """A SEND frame carrying ``datagram`` to ``slot``; LocalError if it cannot be relayed."""
        return wire.encode(wire.Send(slot, datagram))

    def datagrams_to_send(self) -> list[bytes]:
        """Frames for the relay, in order; the queue is emptied."""
        out, self._out = self._out, []
        return out
