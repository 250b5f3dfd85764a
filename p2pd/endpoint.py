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
    MAX_EARLY_DATA,
    TIMER_SLACK,
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
    PeerTable,
    Rekeyed,
    Responding,
    Slot,
    open_data,
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
_RECEIVER_AT_REPLY: Final = wire.HEADER_SIZE + wire.INDEX_SIZE


class NotConnected(LocalError):
    """``send`` to a peer that is not connected (never was, lost, or closed)."""


def _index_at(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + wire.INDEX_SIZE], "little")


def _same_rank(addr: Addr) -> int:
    """Every address as good as any other: plain WireGuard roaming."""
    return 0


def _never_warm(addr: Addr) -> bool:
    """No standby paths: a path left is left."""
    return False


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
        path_rank: Callable[[Addr], int] | None = None,
        keep_warm: Callable[[Addr], bool] | None = None,
    ) -> None:
        self.params = params
        self.identity = identity
        self.limits = limits if limits is not None else SessionLimits()
        self.early = EarlyDrop(params.tag_key, params.mac1_key, params.cookie_key, rng=rng)
        #: Dropped datagrams and notable happenings, by short reason.
        self.counters: collections.Counter[str] = collections.Counter()
        #: When this endpoint was made (monotonic).
        self.created_at = now
        self._rng = rng
        self._table = PeerTable(
            self.limits,
            rng,
            path_rank or _same_rank,
            keep_warm or _never_warm,
            counters=self.counters,
        )
        self._responding: collections.OrderedDict[int, Responding] = collections.OrderedDict()
        #: Addresses where we found ourselves; never connected to again.
        self._self_addrs: set[Addr] = set()
        #: Peers whose handshake waits for the wall clock (see _want_handshake).
        self._wanted: set[bytes] = set()

    def __repr__(self) -> str:
        return (
            f"Endpoint(peers={len(self._table.peers)}, attempts={len(self._table.attempts)}, "
            f"responding={len(self._responding)})"
        )

    # ----------------------------------------------------------------- driver API

    @property
    def peers(self) -> Mapping[bytes, Peer]:
        """Known peers by static key (read only; ``connected`` says who may be sent to)."""
        return MappingProxyType(self._table.peers)

    def next_event(self) -> Event | None:
        events = self._table.events
        return events.popleft() if events else None

    def datagrams_to_send(self, now: float, wall_time: float) -> list[tuple[bytes, Addr]]:
        """Everything queued for the network, oldest first, as (datagram, address)."""
        self._flush_wanted(now, wall_time)
        out, self._table.out = self._table.out, []
        return out

    def connect(self, addr: Addr, now: float, wall_time: float) -> None:
        """Start initiating towards ``addr``; a no-op if already doing so or connected there."""
        if addr in self._self_addrs:
            self.counters["connect_self"] += 1
            return
        if addr in self._table.attempts:
            return
        for peer in self._table.peers.values():
            if peer.connected and peer.addr == addr and peer.session.can_send(now):
                return
        attempt = Attempt(addr, now, self._new_jar())
        self._table.attempts[addr] = attempt
        self._start_handshake(attempt, now, wall_time)

    def send(self, peer_id: bytes, plaintext: bytes, now: float) -> None:
        """Seal ``plaintext`` to a connected peer and queue it.

        Raises NotConnected for an unknown or lost peer, and NoSessionKeys when its keys
        have expired (a handshake is then started; the datagram is not queued).
        """
        peer = self._table.peers.get(peer_id)
        if peer is None or not peer.connected:
            raise NotConnected("no connected peer with this key")
        if not peer.session.can_send(now):
            self._want_handshake(peer, now)
            raise NoSessionKeys("the keys with this peer expired; a handshake was started")
        self._table.transmit(peer, peer.session.seal(plaintext, now))
        self._maybe_rekey(peer, now)

    def path_closed(self, addr: Addr) -> None:
        """The link behind the virtual address ``addr`` closed: keep nothing warm there."""
        self._table.forget_standby(addr)

    def close_peer(self, peer_id: bytes) -> None:
        """Forget a peer and its keys now, without an event (unknown peers are ignored)."""
        peer = self._table.peers.get(peer_id)
        if peer is not None:
            self._table.remove(peer, lost=False)

    def receive_datagram(self, data: bytes, addr: Addr, now: float, wall_time: float) -> None:
        """Process one datagram from ``addr``; never raises on what the network sent."""
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
        rekey_timeout = self.limits.rekey_timeout
        deadlines = [r.created + rekey_timeout for r in self._responding.values()]
        deadlines.extend(a.retry_at for a in self._table.attempts.values())
        for peer in self._table.peers.values():
            deadlines.extend(self._table.deadlines(peer))
            if peer.handshake_wanted_at is not None:
                deadlines.append(peer.handshake_wanted_at)
            rekey = self._rekey_due(peer)
            if rekey is not None:
                deadlines.append(rekey + TIMER_SLACK)
        return min(deadlines, default=None)

    def handle_timer(self, now: float, wall_time: float) -> None:
        """Run every timer due at ``now``: retries, expiries, keepalives, rekeys, losses."""
        for index, responding in list(self._responding.items()):
            if now >= responding.created + self.limits.rekey_timeout:
                self._forget_responding(index)
        for attempt in list(self._table.attempts.values()):
            if now >= attempt.retry_at:
                if now - attempt.started_at >= REKEY_ATTEMPT_TIME:
                    self._give_up(attempt)
                else:
                    self._start_handshake(attempt, now, wall_time)
        for peer in list(self._table.peers.values()):
            if not self._table.tick(peer, now):
                continue
            rekey = self._rekey_due(peer)
            if rekey is not None and now >= rekey:
                self._want_handshake(peer, now)
        self._flush_wanted(now, wall_time)

    # ---------------------------------------------------------------- handshakes

    def _on_init(self, data: bytes, addr: Addr, now: float, wall_time: float) -> None:
        verdict, reply = self.early.classify(data, addr, wall_time, now)
        if verdict is Verdict.COOKIE and reply is not None:
            self._table.out.append((reply, addr))
            self.counters["cookie_sent"] += 1
            return
        if verdict is not Verdict.ACCEPT:
            raise BadFrame(verdict.value)
        index = self._table.new_index()
        handshake = ResponderHandshake(
            self.params, self.identity, index, data, now=now, wall_time=wall_time, rng=self._rng
        )
        responding = Responding(handshake, addr, now)
        self._table.slots[index] = responding
        self._responding[index] = responding
        if len(self._responding) > MAX_RESPONDING:
            self._forget_responding(next(iter(self._responding)))
            self.counters["responding_evicted"] += 1
        self._table.out.append((handshake.resp_packet(), addr))

    def _check_reply(self, data: bytes, size: int, wall_time: float) -> Slot | None:
        """Size and tag of a RESP or FINISH, then what its receiver index leads to."""
        if len(data) != size:
            raise BadFrame("drop_size")
        tag = data[wire.REPLY_TAG_OFFSET : wire.REPLY_TAG_OFFSET + wire.TAG_SIZE]
        if not self.early.tags.accepts(tag, wall_time):
            raise BadFrame("drop_tag")
        return self._table.slots.get(_index_at(data, _RECEIVER_AT_REPLY))

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
                self._table.end_attempt(attempt)
                self._table.events.append(ConnectFailed(attempt.addr, "self"))
            elif handshake.failed:
                self._table.release(handshake.local_index)
                attempt.handshake = None
            raise
        self._table.release(handshake.local_index)
        attempt.handshake = None
        attempt.rtt = now - attempt.sent_at
        peer = self._table.peers.get(remote)
        if peer is not None:
            self._table.authenticated(peer, addr, now)
        if attempt.peer_id is not None and attempt.peer_id != remote:
            # The address of the peer we meant to rekey now hosts another node.
            self._table.mark_rekey_failed(attempt.peer_id)
            self._abandon(attempt, keypair, "wrong_peer")
            return
        if peer is not None and _crossed(peer.session, attempt.started_at):
            self._abandon(attempt, keypair, "crossed")
            return
        self._table.drop_pending(attempt)
        pending = Session(self.limits)
        pending.install(keypair, now)
        attempt.pending, attempt.pending_peer = pending, remote
        self._table.slots[keypair.local_index] = Confirming(attempt)
        self._table.out.append((finish, addr))
        self._table.out.append((pending.seal(b"", now), addr))
        attempt.retry_at = now + self._retry_delay()

    def _abandon(self, attempt: Attempt, keypair: Keypair, reason: str) -> None:
        keypair.wipe()
        self.counters[reason] += 1
        self._table.end_attempt(attempt)

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
        attempt = self._table.attempt_towards(remote)
        known = self._table.peers.get(remote)
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
            self._table.end_attempt(attempt)
        peer = self._table.peer_for(remote, addr, now)
        self._table.install(peer, keypair, now)
        peer.next_rtt = now - slot.created
        self._table.authenticated(peer, addr, now)
        for early, early_addr in slot.early:
            try:
                self._on_data(early, early_addr, now)
            except BadFrame as exc:
                self.counters[exc.reason] += 1

    def _on_cookie(self, data: bytes, now: float) -> None:
        if len(data) != wire.COOKIE_REPLY_SIZE:
            raise BadFrame("drop_size")
        slot = self._table.slots.get(_index_at(data, wire.RECEIVER_INDEX_OFFSET))
        if not isinstance(slot, Initiating):
            raise BadFrame("unknown_index")
        try:
            slot.attempt.jar.consume_reply_untrusted(data, now)
        except BadFrame:
            raise BadFrame("bad_cookie") from None
        self.counters["cookie_received"] += 1

    def _start_handshake(self, attempt: Attempt, now: float, wall_time: float) -> None:
        if attempt.handshake is not None:
            self._table.release(attempt.handshake.local_index)
        index = self._table.new_index()
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
        self._table.slots[index] = Initiating(attempt)
        attempt.sent_at = now
        attempt.retry_at = now + self._retry_delay()
        self._table.out.append((handshake.init_packet(), attempt.addr))

    def _give_up(self, attempt: Attempt) -> None:
        self._table.end_attempt(attempt)
        if attempt.peer_id is None:
            self._table.events.append(ConnectFailed(attempt.addr, "timeout"))
        else:
            self._table.mark_rekey_failed(attempt.peer_id)

    def _forget_responding(self, index: int) -> None:
        self._responding.pop(index, None)
        self._table.release(index)

    # ---------------------------------------------------------------------- data

    def _on_data(self, data: bytes, addr: Addr, now: float) -> None:
        if len(data) < wire.DATA_MIN_SIZE:
            raise BadFrame("drop_size")
        slot = self._table.slots.get(_index_at(data, wire.RECEIVER_INDEX_OFFSET))
        if isinstance(slot, Peer):
            self._table.open(slot, data, addr, now)
            self._maybe_rekey(slot, now)
        elif isinstance(slot, Confirming):
            self._confirm(slot.attempt, data, addr, now)
        elif isinstance(slot, Responding) and len(slot.early) < MAX_EARLY_DATA:
            slot.early.append((data, addr))
            self.counters["early_data"] += 1
        else:
            raise BadFrame("unknown_index")

    def _confirm(self, attempt: Attempt, data: bytes, addr: Addr, now: float) -> None:
        """DATA under an attempt's pending keypair: the peer holds it; it is ours now."""
        pending, remote = attempt.pending, attempt.pending_peer
        assert pending is not None and remote is not None  # a Confirming slot has both
        plaintext = open_data(pending, data, now)
        keypair = pending.current
        assert keypair is not None
        attempt.pending = attempt.pending_peer = None  # the peer's from now: do not wipe it
        self._table.end_attempt(attempt)
        table = self._table
        peer = table.peer_for(remote, addr, now)
        table.install(peer, keypair, now)
        peer.confirmed_at = now
        table.authenticated(peer, addr, now)
        table.confirmed(peer, initiator=True, rtt=attempt.rtt)
        table.deliver(peer, plaintext, now)

    # --------------------------------------------------------------------- rekey

    def _rekey_due(self, peer: Peer) -> float | None:
        """When to start a rekey of ``peer``, unless one is wanted or running already."""
        if peer.handshake_wanted_at is not None or self._table.attempt_for(peer) is not None:
            return None
        return self._table.rekey_deadline(peer)

    def _maybe_rekey(self, peer: Peer, now: float) -> None:
        deadline = self._rekey_due(peer)
        if deadline is not None and now >= deadline and peer.session.needs_rekey(now):
            self._want_handshake(peer, now)

    def _want_handshake(self, peer: Peer, now: float) -> None:
        """Start a handshake with the peer at the next call that knows the wall clock."""
        if peer.handshake_wanted_at is None and self._table.attempt_for(peer) is None:
            peer.handshake_wanted_at = now
            self._wanted.add(peer.peer_id)

    def _flush_wanted(self, now: float, wall_time: float) -> None:
        while self._wanted:
            peer = self._table.peers.get(self._wanted.pop())
            if peer is None or peer.handshake_wanted_at is None:
                continue
            peer.handshake_wanted_at = None
            if self._table.attempt_for(peer) is None:
                attempt = Attempt(peer.addr, now, self._new_jar(), peer_id=peer.peer_id)
                self._table.attempts[peer.addr] = attempt
                self._start_handshake(attempt, now, wall_time)

    # ------------------------------------------------------------------- helpers

    def _new_jar(self) -> CookieJar:
        return CookieJar(self.params.mac1_key, self.params.cookie_key)

    def _retry_delay(self) -> float:
        jitter = int.from_bytes(self._rng(2), "little") / 65536 * REKEY_TIMEOUT_JITTER_MAX
        return self.limits.rekey_timeout + jitter
