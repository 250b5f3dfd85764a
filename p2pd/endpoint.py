"""The per-node sans-IO endpoint: demultiplexes datagrams, runs handshakes, timers and peers.

Theory of operation
-------------------
One :class:`Endpoint` per passphrase, in the style of aioquic's ``QuicConnection`` and the
WireGuard device: the driver feeds it datagrams and the time, and takes back datagrams,
a timer deadline and events.  It never reads a clock or touches a socket; ``now`` is
monotonic seconds, ``wall_time`` Unix time and used only for the rendezvous tags.

Demultiplexing, cheapest test first (docs/protocol.md, "Handshake"):

* HANDSHAKE_INIT goes through :class:`~p2pd.earlydrop.EarlyDrop` (size, tag, mac1, load and
  cookies, rate) before any Diffie-Hellman; an accepted one starts a responder handshake.
* Every other type names a *local index* (a random u32, unique within the endpoint); the
  index table says what it leads to: a live initiator handshake (RESP, COOKIE_REPLY), a
  pending keypair (the peer's confirming DATA), a responder handshake (FINISH) or a peer
  (DATA).  RESP and FINISH must also carry a valid tag and mac1.

Invariants:

* remote input never raises: every dropped datagram is counted in :attr:`counters` under
  a short reason, and nothing is sent in answer to a failure (only an EarlyDrop cookie
  reply, which needs a valid mac1, i.e. the passphrase);
* a peer is its static key; the index, not the address, finds a session, and the peer's
  address is the source of its last authenticated packet (roaming);
* we seal only under keypairs the peer has proven it holds (see :mod:`p2pd.peer`);
* a handshake with our own static key is aborted (``self``);
* crossing handshakes (both sides initiating at once) converge by the rule in
  docs/protocol.md, "Handshake": a responder that learns at FINISH that it is itself
  initiating towards that peer keeps only one of the two, chosen by comparing static keys.

Timers are WireGuard's (``timers.c``), scanned over the few peers and attempts held;
:meth:`Endpoint.get_timer` gives the earliest, :meth:`Endpoint.handle_timer` runs what is due.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from p2pd import wire
from p2pd.cookie import CookieJar
from p2pd.derive import Params
from p2pd.earlydrop import EarlyDrop, Verdict
from p2pd.errors import BadFrame, LocalError
from p2pd.handshake import InitiatorHandshake, ResponderHandshake
from p2pd.identity import Identity
from p2pd.peer import (
    LOST_AFTER_REJECTS,
    MAX_EARLY_DATA,
    Addr,
    Attempt,
    Confirming,
    ConnectFailed,
    DataReceived,
    Event,
    Initiating,
    Peer,
    PeerAddressChanged,
    PeerConnected,
    PeerLost,
    Rekeyed,
    Responding,
    Slot,
)
from p2pd.session import REKEY_ATTEMPT_TIME, Keypair, NoSessionKeys, Session, SessionLimits

__all__ = [
    "Addr",
    "ConnectFailed",
    "DataReceived",
    "Endpoint",
    "Event",
    "NotConnected",
    "PeerAddressChanged",
    "PeerConnected",
    "PeerLost",
    "Rekeyed",
]

#: Largest random delay added to each handshake retry, so peers do not retry in lockstep
#: (WireGuard's REKEY_TIMEOUT_JITTER_MAX: a third of a second).
REKEY_TIMEOUT_JITTER_MAX: Final = 1 / 3
#: Responder handshakes waiting for FINISH, at most; the oldest is forgotten beyond.
#: Per-source limits (20/s) over their REKEY_TIMEOUT life bound one source to ~100.
MAX_RESPONDING: Final = 1024
#: Deadlines that come from a Session's own age test are reported this much late, so the
#: test (``now - born >= limit``) holds at the deadline despite float rounding.
TIMER_SLACK: Final = 1e-6
#: Session.open_untrusted's reasons, as counter names.
_SESSION_REASONS: Final = {
    "authentication failed": "bad_auth",
    "replayed or too old counter": "replay",
    "keypair expired": "expired",
    "counter past REJECT_AFTER_MESSAGES": "expired",
    "unknown receiver index": "unknown_index",
}
_RECEIVER_AT_REPLY: Final = wire.HEADER_SIZE + wire.INDEX_SIZE


class NotConnected(LocalError):
    """``send`` to a peer that is not connected (never was, lost, or closed)."""


def _index_at(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + wire.INDEX_SIZE], "little")


def _crossed(session: Session, since: float) -> bool:
    """Whether the peer gave us a fresh keypair (as its responder) since ``since``."""
    return any(
        kp is not None and not kp.is_initiator and kp.created_at >= since
        for kp in (session.next, session.current)
    )


class Endpoint:
    """All handshakes and sessions of one node under one passphrase.  Sans-IO."""

    def __init__(
        self,
        params: Params,
        identity: Identity,
        *,
        now: float,
        rng: Callable[[int], bytes] = os.urandom,
        limits: SessionLimits | None = None,
    ) -> None:
        self.params = params
        self.identity = identity
        self.limits = limits if limits is not None else SessionLimits()
        self.early = EarlyDrop(params.tag_key, params.mac1_key, params.cookie_key, rng=rng)
        #: Dropped datagrams and notable happenings, by short reason.
        self.counters: collections.Counter[str] = collections.Counter()
        self._rng = rng
        self._now = now
        self._slots: dict[int, Slot] = {}
        self._peers: dict[bytes, Peer] = {}
        self._attempts: dict[Addr, Attempt] = {}
        self._responding: collections.OrderedDict[int, Responding] = collections.OrderedDict()
        self._self_addrs: set[Addr] = set()
        self._out: list[tuple[bytes, Addr]] = []
        self._events: collections.deque[Event] = collections.deque()

    def __repr__(self) -> str:
        return (
            f"Endpoint(peers={len(self._peers)}, attempts={len(self._attempts)}, "
            f"responding={len(self._responding)})"
        )

    # ----------------------------------------------------------------- driver API

    @property
    def peers(self) -> Mapping[bytes, Peer]:
        """Known peers by static key (read only; ``connected`` says who may be sent to)."""
        return MappingProxyType(self._peers)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self, now: float, wall_time: float) -> list[tuple[bytes, Addr]]:
        """Everything queued for the network, oldest first, as (datagram, address)."""
        self._flush_wanted(now, wall_time)
        out, self._out = self._out, []
        return out

    def connect(self, addr: Addr, now: float, wall_time: float) -> None:
        """Start initiating towards ``addr``; a no-op if already doing so or connected there."""
        self._now = now
        if addr in self._self_addrs:
            self.counters["connect_self"] += 1
            return
        if addr in self._attempts:
            return
        for peer in self._peers.values():
            if peer.connected and peer.addr == addr and peer.session.can_send(now):
                return
        attempt = Attempt(addr, now, self._new_jar())
        self._attempts[addr] = attempt
        self._start_handshake(attempt, now, wall_time)

    def send(self, peer_id: bytes, plaintext: bytes, now: float) -> None:
        """Seal ``plaintext`` to a connected peer and queue it.

        Raises NotConnected for an unknown or lost peer, and NoSessionKeys when its keys
        have expired (a handshake is then started; the datagram is not queued).
        """
        self._now = now
        peer = self._peers.get(peer_id)
        if peer is None or not peer.connected:
            raise NotConnected("no connected peer with this key")
        if not peer.session.can_send(now):
            self._want_handshake(peer, now)
            raise NoSessionKeys("the keys with this peer expired; a handshake was started")
        self._transmit(peer, peer.session.seal(plaintext, now))
        self._maybe_rekey(peer, now)

    def close_peer(self, peer_id: bytes) -> None:
        """Forget a peer and its keys now, without an event (unknown peers are ignored)."""
        peer = self._peers.get(peer_id)
        if peer is not None:
            self._remove_peer(peer, lost=False)

    def receive_datagram(self, data: bytes, addr: Addr, now: float, wall_time: float) -> None:
        """Process one datagram from ``addr``; never raises on what the network sent."""
        self._now = now
        data = bytes(data)
        kind = wire.peek_type(data)
        try:
            if kind == wire.TYPE_HANDSHAKE_INIT:
                self._on_init(data, addr, now, wall_time)
            elif kind == wire.TYPE_HANDSHAKE_RESP:
                self._on_resp(data, addr, now, wall_time)
            elif kind == wire.TYPE_HANDSHAKE_FINISH:
                self._on_finish(data, addr, now, wall_time)
            elif kind == wire.TYPE_DATA:
                self._on_data(data, addr, now)
            elif kind == wire.TYPE_COOKIE_REPLY:
                self._on_cookie(data, now)
            else:
                raise BadFrame("bad_header")
        except BadFrame as exc:
            self.counters[exc.reason] += 1
        self._flush_wanted(now, wall_time)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has work, or None if nothing is pending."""
        limits = self.limits
        deadlines: list[float] = [
            r.created + limits.rekey_timeout for r in self._responding.values()
        ]
        deadlines.extend(a.retry_at for a in self._attempts.values())
        for peer in self._peers.values():
            if peer.handshake_wanted_at is not None:
                deadlines.append(peer.handshake_wanted_at)
            expiry = peer.session.get_timer()
            if expiry is not None:
                deadlines.append(expiry + TIMER_SLACK)
            deadlines.append(peer.last_received + limits.reject_after_time * LOST_AFTER_REJECTS)
            if peer.keepalive_due is not None:
                deadlines.append(peer.keepalive_due)
            rekey = self._rekey_deadline(peer)
            if rekey is not None:
                deadlines.append(rekey + TIMER_SLACK)
        return min(deadlines, default=None)

    def handle_timer(self, now: float, wall_time: float) -> None:
        """Run every timer due at ``now``: retries, expiries, keepalives, rekeys, losses."""
        self._now = now
        for index, responding in list(self._responding.items()):
            if now >= responding.created + self.limits.rekey_timeout:
                self._forget_responding(index)
        for attempt in list(self._attempts.values()):
            if now >= attempt.retry_at:
                if now - attempt.started_at >= REKEY_ATTEMPT_TIME:
                    self._give_up(attempt)
                else:
                    self._start_handshake(attempt, now, wall_time)
        for peer in list(self._peers.values()):
            self._tick_peer(peer, now)
        self._flush_wanted(now, wall_time)

    # ---------------------------------------------------------------- handshakes

    def _on_init(self, data: bytes, addr: Addr, now: float, wall_time: float) -> None:
        verdict, reply = self.early.classify(data, addr, wall_time, now)
        if verdict is Verdict.COOKIE and reply is not None:
            self._out.append((reply, addr))
            self.counters["cookie_sent"] += 1
            return
        if verdict is not Verdict.ACCEPT:
            raise BadFrame(verdict.value)
        index = self._new_index()
        handshake = ResponderHandshake(
            self.params, self.identity, index, data, now=now, wall_time=wall_time, rng=self._rng
        )
        responding = Responding(handshake, addr, now)
        self._slots[index] = responding
        self._responding[index] = responding
        if len(self._responding) > MAX_RESPONDING:
            self._forget_responding(next(iter(self._responding)))
            self.counters["responding_evicted"] += 1
        self._out.append((handshake.resp_packet(), addr))

    def _check_reply(self, data: bytes, size: int, wall_time: float) -> Slot | None:
        """Size and tag of a RESP or FINISH, then what its receiver index leads to."""
        if len(data) != size:
            raise BadFrame("drop_size")
        tag = data[wire.REPLY_TAG_OFFSET : wire.REPLY_TAG_OFFSET + wire.TAG_SIZE]
        if not self.early.tags.accepts(tag, wall_time):
            raise BadFrame("drop_tag")
        return self._slots.get(_index_at(data, _RECEIVER_AT_REPLY))

    def _on_resp(self, data: bytes, addr: Addr, now: float, wall_time: float) -> None:
        slot = self._check_reply(data, wire.HANDSHAKE_RESP_SIZE, wall_time)
        if not isinstance(slot, Initiating) or slot.attempt.handshake is None:
            raise BadFrame("unknown_index")
        attempt, handshake = slot.attempt, slot.attempt.handshake
        try:
            finish, keypair, remote = handshake.consume_resp_untrusted(data, now, wall_time)
        except BadFrame as exc:
            if exc.reason == "self":
                self._self_addrs.add(attempt.addr)
                self._end_attempt(attempt)
                self._events.append(ConnectFailed(attempt.addr, "self"))
            elif handshake.failed:
                self._release(handshake.local_index)
                attempt.handshake = None
            raise
        self._release(handshake.local_index)
        attempt.handshake = None
        attempt.rtt = now - attempt.sent_at
        peer = self._peers.get(remote)
        if attempt.peer_id is not None and attempt.peer_id != remote:
            # The address of the peer we meant to rekey now hosts another node.
            self._mark_rekey_failed(attempt.peer_id)
            self._abandon(attempt, keypair, "wrong_peer")
            return
        if peer is not None and _crossed(peer.session, attempt.started_at):
            self._abandon(attempt, keypair, "crossed")
            return
        self._drop_pending(attempt)
        pending = Session(self.limits)
        pending.install(keypair, now)
        attempt.pending, attempt.pending_peer = pending, remote
        self._slots[keypair.local_index] = Confirming(attempt)
        self._out.append((finish, addr))
        self._out.append((pending.seal(b"", now), addr))
        attempt.retry_at = now + self._retry_delay()

    def _abandon(self, attempt: Attempt, keypair: Keypair, reason: str) -> None:
        keypair.wipe()
        self.counters[reason] += 1
        self._end_attempt(attempt)

    def _on_finish(self, data: bytes, addr: Addr, now: float, wall_time: float) -> None:
        slot = self._check_reply(data, wire.HANDSHAKE_FINISH_SIZE, wall_time)
        if not isinstance(slot, Responding):
            raise BadFrame("unknown_index")
        index = slot.handshake.local_index
        try:
            keypair, remote = slot.handshake.consume_finish_untrusted(data, now)
        except BadFrame:
            if slot.handshake.failed:
                self._forget_responding(index)
            raise
        self._forget_responding(index)
        attempt = self._attempt_towards(remote)
        known = self._peers.get(remote)
        # Crossing handshakes: ours was answered (lately: an older answer whose FINISH or
        # keepalive was lost is dead), or even confirmed, while this one ran.
        pending = attempt.pending_keypair() if attempt is not None else None
        ours_answered = pending is not None and pending.age(now) < self.limits.rekey_timeout
        ours_confirmed = known is not None and known.confirmed_at >= slot.created
        if (ours_answered or ours_confirmed) and self.identity.public > remote:
            keypair.wipe()  # the greater static key's handshake wins; the peer drops its own
            raise BadFrame("crossed")
        if attempt is not None:
            self.counters["crossed"] += 1
            self._end_attempt(attempt)
        peer = self._peer_for(remote, addr, now)
        self._install(peer, keypair, now)
        peer.next_rtt = now - slot.created
        self._authenticated(peer, addr, now)
        for early, early_addr in slot.early:
            try:
                self._on_data(early, early_addr, now)
            except BadFrame as exc:
                self.counters[exc.reason] += 1

    def _on_cookie(self, data: bytes, now: float) -> None:
        if len(data) != wire.COOKIE_REPLY_SIZE:
            raise BadFrame("drop_size")
        slot = self._slots.get(_index_at(data, wire.RECEIVER_INDEX_OFFSET))
        if not isinstance(slot, Initiating):
            raise BadFrame("unknown_index")
        try:
            slot.attempt.jar.consume_reply_untrusted(data, now)
        except BadFrame:
            raise BadFrame("bad_cookie") from None
        self.counters["cookie_received"] += 1

    def _start_handshake(self, attempt: Attempt, now: float, wall_time: float) -> None:
        if attempt.handshake is not None:
            self._release(attempt.handshake.local_index)
        index = self._new_index()
        handshake = InitiatorHandshake(
            self.params,
            self.identity,
            index,
            now=now,
            wall_time=wall_time,
            cookie_jar=attempt.jar,
            rng=self._rng,
        )
        attempt.handshake = handshake
        self._slots[index] = Initiating(attempt)
        attempt.sent_at = now
        attempt.retry_at = now + self._retry_delay()
        self._out.append((handshake.init_packet(), attempt.addr))

    def _give_up(self, attempt: Attempt) -> None:
        self._end_attempt(attempt)
        if attempt.peer_id is None:
            self._events.append(ConnectFailed(attempt.addr, "timeout"))
        else:
            self._mark_rekey_failed(attempt.peer_id)

    def _mark_rekey_failed(self, peer_id: bytes) -> None:
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.rekey_failed = True

    def _end_attempt(self, attempt: Attempt) -> None:
        if self._attempts.get(attempt.addr) is attempt:
            del self._attempts[attempt.addr]
        if attempt.handshake is not None:
            self._release(attempt.handshake.local_index)
            attempt.handshake = None
        self._drop_pending(attempt)

    def _drop_pending(self, attempt: Attempt) -> None:
        keypair = attempt.pending_keypair()
        if keypair is not None:
            self._release(keypair.local_index)
            keypair.wipe()
        attempt.pending = attempt.pending_peer = None

    def _attempt_towards(self, peer_id: bytes) -> Attempt | None:
        for attempt in self._attempts.values():
            if attempt.towards(peer_id):
                return attempt
        return None

    def _attempt_for(self, peer: Peer) -> Attempt | None:
        """An attempt that may rekey ``peer``: towards its key, or to its address."""
        return self._attempt_towards(peer.peer_id) or self._attempts.get(peer.addr)

    def _forget_responding(self, index: int) -> None:
        self._responding.pop(index, None)
        self._release(index)

    # ---------------------------------------------------------------------- data

    def _on_data(self, data: bytes, addr: Addr, now: float) -> None:
        if len(data) < wire.DATA_MIN_SIZE:
            raise BadFrame("drop_size")
        slot = self._slots.get(_index_at(data, wire.RECEIVER_INDEX_OFFSET))
        if isinstance(slot, Peer):
            self._open(slot, data, addr, now)
        elif isinstance(slot, Confirming):
            self._confirm(slot.attempt, data, addr, now)
        elif isinstance(slot, Responding) and len(slot.early) < MAX_EARLY_DATA:
            slot.early.append((data, addr))
            self.counters["early_data"] += 1
        else:
            raise BadFrame("unknown_index")

    def _open(self, peer: Peer, data: bytes, addr: Addr, now: float) -> None:
        session = peer.session
        waiting = session.next
        plaintext = self._open_with(session, data, now)
        self._authenticated(peer, addr, now)
        if waiting is not None and session.current is waiting:
            self._confirmed(peer, initiator=False, rtt=peer.next_rtt)
            # The peer (initiator) waits for our DATA under the new keys: confirm them.
            self._transmit(peer, session.seal(b"", now))
        self._deliver(peer, plaintext, now)
        self._maybe_rekey(peer, now)

    def _confirm(self, attempt: Attempt, data: bytes, addr: Addr, now: float) -> None:
        pending, remote = attempt.pending, attempt.pending_peer
        assert pending is not None and remote is not None  # a Confirming slot has both
        plaintext = self._open_with(pending, data, now)
        keypair = pending.current
        assert keypair is not None
        attempt.pending = attempt.pending_peer = None  # now the peer's: do not wipe it
        self._release(keypair.local_index)
        self._end_attempt(attempt)
        peer = self._peer_for(remote, addr, now)
        self._install(peer, keypair, now)
        peer.confirmed_at = now
        self._authenticated(peer, addr, now)
        self._confirmed(peer, initiator=True, rtt=attempt.rtt)
        self._deliver(peer, plaintext, now)

    @staticmethod
    def _open_with(session: Session, data: bytes, now: float) -> bytes:
        try:
            return session.open_untrusted(data, now)
        except BadFrame as exc:
            raise BadFrame(_SESSION_REASONS.get(exc.reason, "bad_data")) from None

    # --------------------------------------------------------------------- peers

    def _peer_for(self, peer_id: bytes, addr: Addr, now: float) -> Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = Peer(peer_id, addr, Session(self.limits), last_received=now)
            self._peers[peer_id] = peer
        return peer

    def _install(self, peer: Peer, keypair: Keypair, now: float) -> None:
        if keypair.is_initiator and peer.session.next is not None:
            self._drop_unconfirmed_next(peer, now)
        for index in peer.session.install(keypair, now):
            self._release(index)
        self._slots[keypair.local_index] = peer
        peer.rekey_failed = False

    def _drop_unconfirmed_next(self, peer: Peer, now: float) -> None:
        """Forget ``next`` (and ``previous``) but keep ``current``.

        Session.install, as WireGuard, lets an unconfirmed ``next`` outrank ``current`` when
        we install a keypair we initiated, because a WireGuard initiator seals under a new
        keypair at once.  Ours never seals under a keypair before it is confirmed, so an
        unconfirmed ``next`` carries no data while ``current`` still does: keep current.
        Session offers no way to drop ``next`` alone, so rebuild it around ``current``.
        """
        old = peer.session
        fresh = Session(self.limits)
        for keypair in (old.next, old.previous):
            if keypair is not None:
                self._release(keypair.local_index)
                keypair.wipe()
        if old.current is not None:
            # A keypair we responded to lands in fresh.next, and the install that follows
            # moves it to previous: either way it keeps opening the peer's packets.
            fresh.install(old.current, now)
        peer.session = fresh

    def _authenticated(self, peer: Peer, addr: Addr, now: float) -> None:
        peer.last_received = now
        if addr != peer.addr:
            old, peer.addr = peer.addr, addr
            if peer.connected:
                self._events.append(PeerAddressChanged(peer.peer_id, old, addr))

    def _confirmed(self, peer: Peer, *, initiator: bool, rtt: float) -> None:
        if peer.connected:
            self._events.append(Rekeyed(peer.peer_id))
            return
        peer.connected = True
        self._events.append(
            PeerConnected(peer.peer_id, peer.fingerprint, peer.addr, initiator, rtt)
        )

    def _deliver(self, peer: Peer, plaintext: bytes, now: float) -> None:
        if not plaintext:
            return
        self._events.append(DataReceived(peer.peer_id, plaintext))
        if peer.keepalive_due is None:
            peer.keepalive_due = now + self.limits.keepalive_timeout

    def _transmit(self, peer: Peer, packet: bytes) -> None:
        self._out.append((packet, peer.addr))
        peer.keepalive_due = None

    def _tick_peer(self, peer: Peer, now: float) -> None:
        for index in peer.session.expire(now):
            self._release(index)
        silent = now - peer.last_received >= self.limits.reject_after_time * LOST_AFTER_REJECTS
        if silent or (not peer.connected and not peer.keypairs()):
            self._remove_peer(peer, lost=peer.connected)
            return
        if peer.keepalive_due is not None and now >= peer.keepalive_due:
            peer.keepalive_due = None
            if peer.session.can_send(now):
                self._transmit(peer, peer.session.seal(b"", now))
        rekey = self._rekey_deadline(peer)
        if rekey is not None and now >= rekey:
            self._want_handshake(peer, now)

    def _remove_peer(self, peer: Peer, *, lost: bool) -> None:
        for keypair in peer.keypairs():
            self._release(keypair.local_index)
            keypair.wipe()
        while (attempt := self._attempt_towards(peer.peer_id)) is not None:
            self._end_attempt(attempt)
        del self._peers[peer.peer_id]
        if lost:
            self._events.append(PeerLost(peer.peer_id))

    # --------------------------------------------------------------------- rekey

    def _rekey_deadline(self, peer: Peer) -> float | None:
        """When this peer's current keypair is old enough to replace, if we should."""
        session, limits = peer.session, self.limits
        current = session.current
        if current is None or not peer.connected or peer.rekey_failed:
            return None
        if peer.handshake_wanted_at is not None or self._attempt_for(peer) is not None:
            return None
        if current.send_counter >= limits.rekey_after_messages:
            deadline = current.created_at
        elif current.is_initiator:
            deadline = current.created_at + limits.rekey_after_time
        else:
            deadline = current.created_at + limits.responder_rekey_after_time
        if session.next is not None:
            # The peer just rekeyed; give its keypair time to be confirmed.
            deadline = max(deadline, session.next.created_at + limits.rekey_timeout)
        return deadline

    def _maybe_rekey(self, peer: Peer, now: float) -> None:
        deadline = self._rekey_deadline(peer)
        if deadline is not None and now >= deadline and peer.session.needs_rekey(now):
            self._want_handshake(peer, now)

    def _want_handshake(self, peer: Peer, now: float) -> None:
        if peer.handshake_wanted_at is None and self._attempt_for(peer) is None:
            peer.handshake_wanted_at = now

    def _flush_wanted(self, now: float, wall_time: float) -> None:
        for peer in self._peers.values():
            if peer.handshake_wanted_at is None:
                continue
            peer.handshake_wanted_at = None
            if self._attempt_for(peer) is not None:
                continue
            attempt = Attempt(peer.addr, now, self._new_jar(), peer_id=peer.peer_id)
            self._attempts[peer.addr] = attempt
            self._start_handshake(attempt, now, wall_time)

    # ------------------------------------------------------------------- helpers

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._rng(wire.INDEX_SIZE), "little")
            if index not in self._slots:
                return index

    def _release(self, index: int) -> None:
        self._slots.pop(index, None)

    def _new_jar(self) -> CookieJar:
        return CookieJar(self.params.mac1_key, self.params.cookie_key)

    def _retry_delay(self) -> float:
        jitter = int.from_bytes(self._rng(2), "little") / 65536 * REKEY_TIMEOUT_JITTER_MAX
        return self.limits.rekey_timeout + jitter
