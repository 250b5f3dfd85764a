"""The endpoint's state: peers, initiation attempts, the local-index table; the events.

Theory of operation
-------------------
:class:`~p2pd.endpoint.Endpoint` runs the handshakes; what it keeps lives here:

* a :class:`Peer` per remote static key that completed a handshake with us: its
  :class:`~p2pd.session.Session`, its address (the source of its last authenticated
  packet: roaming, as in WireGuard) and its timers (keepalive, rekey, loss);
* an :class:`Attempt` per address we are initiating towards: successive handshakes, each
  retried every ``REKEY_TIMEOUT`` plus jitter, until one is *confirmed* or
  ``REKEY_ATTEMPT_TIME`` runs out;
* a :class:`Responding` per handshake a peer started, alive until its FINISH or
  ``REKEY_TIMEOUT``;
* the index table: what each of our random u32 session indices leads to.

An answered attempt holds its keypair *pending*, alone in a private Session, until the
peer proves it holds the keys by sending DATA under them; only then does the keypair
enter the peer's Session.  Until then the old keypair keeps carrying the traffic, so a
lost FINISH never makes the peer drop data that the network delivered.  Invariant: we
seal application data only under a keypair the peer has shown it holds.

:class:`PeerTable` holds all of it and runs what concerns one peer once keys exist:
opening DATA, confirming a keypair we responded to, keepalives, key expiry and loss.

Events are frozen dataclasses the driver reads with ``Endpoint.next_event()``.  A peer is
named by its 32-byte static public key (``peer_id``); :attr:`PeerConnected.fingerprint`
is the same key as people compare it (:func:`p2pd.identity.fingerprint`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from p2pd import wire
from p2pd.cookie import CookieJar
from p2pd.errors import BadFrame
from p2pd.handshake import InitiatorHandshake, ResponderHandshake
from p2pd.identity import fingerprint
from p2pd.session import Keypair, Session, SessionLimits

#: A UDP address as the driver's socket gives it: (IPv4 or IPv6 literal, port).
Addr = tuple[str, int]

#: A peer heard from by no authenticated packet for REJECT_AFTER_TIME times this is lost:
#: WireGuard zeroes every key of a peer silent that long.
LOST_AFTER_REJECTS: Final = 3
#: Session.open_untrusted's reasons, as counter names.
SESSION_REASONS: Final = {
    "authentication failed": "bad_auth",
    "replayed or too old counter": "replay",
    "keypair expired": "expired",
    "counter past REJECT_AFTER_MESSAGES": "expired",
    "unknown receiver index": "unknown_index",
}
#: Deadlines that come from a Session's own age test are reported this much late, so the
#: test (``now - born >= limit``) holds at the deadline despite float rounding.
TIMER_SLACK: Final = 1e-6
#: A peer roams to a *worse* path (higher :data:`PathRank`) only when its current address
#: has carried no authentic packet for this long: the better path died (a NAT mapping
#: expired, a Wi-Fi link dropped).  Long enough that a peer still sending on the old relayed
#: path while switching does not pull us back; short enough that a dead path costs one RTO.
PATH_STALE_AFTER: Final = 5.0
#: While a peer has a warm standby path (a worse path it left for a better one, kept open
#: as its fallback), each of the two paths carries a packet of ours at least this often: a
#: keepalive on the standby (a Tor stream is idle-closed after 60 s), and one on the current
#: path when nothing else went there, so silence on it means the path died, not that the
#: session is idle (it also keeps the NAT mapping of a punched path open).
STANDBY_KEEPALIVE: Final = 5.0
#: A packet from the standby moves the peer back there once the current path has been
#: silent this long: two and a half keepalive intervals, so one lost keepalive is not a
#: dead path.  A dead direct path thus falls back within about 12.5-17.5 s.
STANDBY_STALE_AFTER: Final = 2.5 * STANDBY_KEEPALIVE
#: DATA packets kept for a responder handshake whose FINISH is late (reordered behind the
#: initiator's first keepalive); replayed once the FINISH arrives.
MAX_EARLY_DATA: Final = 2


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """First keypair with this peer confirmed in both directions: ``send`` now works."""

    peer_id: bytes
    fingerprint: str
    addr: Addr
    initiator: bool
    handshake_rtt: float


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Application plaintext from a peer (keepalives are not reported)."""

    peer_id: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerAddressChanged:
    """The peer's last authenticated packet came from a new address; we now send there."""

    peer_id: bytes
    old_addr: Addr
    addr: Addr


@dataclass(frozen=True, slots=True)
class Rekeyed:
    """A new keypair with a connected peer is confirmed and now seals our traffic."""

    peer_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """``connect(addr)`` gave up: ``"timeout"`` (no answer within REKEY_ATTEMPT_TIME) or
    ``"self"`` (the address is this node: never try it again)."""

    addr: Addr
    reason: str = "timeout"


@dataclass(frozen=True, slots=True)
class PeerLost:
    """No authenticated packet from this peer for REJECT_AFTER_TIME * LOST_AFTER_REJECTS."""

    peer_id: bytes


Event = PeerConnected | DataReceived | PeerAddressChanged | Rekeyed | ConnectFailed | PeerLost


@dataclass(eq=False, slots=True)
class Peer:
    """What we know of one remote node.  Read it; only the endpoint changes it."""

    peer_id: bytes
    addr: Addr
    session: Session
    last_received: float
    #: PeerConnected was emitted (a keypair was confirmed both ways at least once).
    connected: bool = False
    #: When a passive keepalive is due (we received data and have not sent since).
    keepalive_due: float | None = None
    #: Round trip of the handshake whose keypair waits in ``session.next``.
    next_rtt: float = 0.0
    #: When a keypair we initiated was last confirmed (for the crossing rule).
    confirmed_at: float = float("-inf")
    #: A rekey attempt gave up; do not start another until a keypair is installed or the
    #: application sends.
    rekey_failed: bool = False
    #: A handshake is wanted since then; started as soon as the wall clock is known.
    handshake_wanted_at: float | None = None
    #: Last authentic packet from ``addr`` itself (not from another path of this peer).
    addr_heard: float = float("-inf")
    #: The worse path this peer roamed away from, kept warm as its fallback (None: none).
    standby: Addr | None = None
    #: When the next keepalive goes to ``standby``.
    standby_due: float | None = None
    #: Something went to ``addr`` since the last standby keepalive.
    sent_current: bool = False
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.fingerprint = fingerprint(self.peer_id)

    def keypairs(self) -> list[Keypair]:
        session = self.session
        return [kp for kp in (session.current, session.previous, session.next) if kp is not None]


@dataclass(eq=False, slots=True)
class Attempt:
    """Initiating towards one address: the live handshake and the answered one, if any."""

    addr: Addr
    started_at: float
    jar: CookieJar
    #: The peer a rekey means to reach; None for ``connect`` (nobody known yet).
    peer_id: bytes | None = None
    handshake: InitiatorHandshake | None = None
    sent_at: float = 0.0
    retry_at: float = 0.0
    #: The answered handshake's keypair, alone (as current) in a private Session.
    pending: Session | None = None
    pending_peer: bytes | None = None
    rtt: float = 0.0

    def towards(self, peer_id: bytes) -> bool:
        return peer_id in (self.peer_id, self.pending_peer)

    def pending_keypair(self) -> Keypair | None:
        return self.pending.current if self.pending is not None else None


@dataclass(eq=False, slots=True)
class Responding:
    """A handshake a peer started, waiting for its FINISH."""

    handshake: ResponderHandshake
    addr: Addr
    created: float
    early: list[tuple[bytes, Addr]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Initiating:
    """Index-table entry: the live handshake of an attempt (RESP, COOKIE_REPLY arrive here)."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class Confirming:
    """Index-table entry: the pending keypair of an attempt (the confirming DATA arrives here)."""

    attempt: Attempt


#: What a local index leads to.
Slot = Initiating | Confirming | Responding | Peer


def open_data(session: Session, data: bytes, now: float) -> bytes:
    """``session.open_untrusted`` with its refusal renamed to a counter name."""
    try:
        return session.open_untrusted(data, now)
    except BadFrame as exc:
        raise BadFrame(SESSION_REASONS.get(exc.reason, "bad_data")) from None


class PeerTable:
    """Peers by static key, attempts by address, what each local index leads to, and the
    outgoing queues: the endpoint's state, and what concerns one peer at a time."""

    def __init__(
        self,
        limits: SessionLimits,
        rng: Callable[[int], bytes],
        path_rank: Callable[[Addr], int] = lambda addr: 0,
        keep_warm: Callable[[Addr], bool] = lambda addr: False,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        self.limits = limits
        #: Notable happenings by name (the endpoint's counters when it made this table).
        self.counters: collections.Counter[str] = (
            counters if counters is not None else collections.Counter()
        )
        self._rng = rng
        self._path_rank = path_rank
        self._keep_warm = keep_warm
        self.peers: dict[bytes, Peer] = {}
        #: Initiation attempts by the address they go to.
        self.attempts: dict[Addr, Attempt] = {}
        #: Local index -> what a packet carrying it as receiver_index is for.
        self.slots: dict[int, Slot] = {}
        #: Datagrams for the driver, (data, address), oldest first.
        self.out: list[tuple[bytes, Addr]] = []
        self.events: collections.deque[Event] = collections.deque()

    def new_index(self) -> int:
        """A random u32 not in use (WireGuard's random session indices)."""
        while True:
            index = int.from_bytes(self._rng(wire.INDEX_SIZE), "little")
            if index not in self.slots:
                return index

    def release(self, index: int) -> None:
        self.slots.pop(index, None)

    def attempt_towards(self, peer_id: bytes) -> Attempt | None:
        for attempt in self.attempts.values():
            if attempt.towards(peer_id):
                return attempt
        return None

    def attempt_for(self, peer: Peer) -> Attempt | None:
        """An attempt that may rekey ``peer``: towards its key, or to its address."""
        return self.attempt_towards(peer.peer_id) or self.attempts.get(peer.addr)

    def end_attempt(self, attempt: Attempt) -> None:
        if self.attempts.get(attempt.addr) is attempt:
            del self.attempts[attempt.addr]
        if attempt.handshake is not None:
            self.release(attempt.handshake.local_index)
            attempt.handshake = None
        self.drop_pending(attempt)

    def end_attempts_towards(self, peer_id: bytes) -> None:
        while (attempt := self.attempt_towards(peer_id)) is not None:
            self.end_attempt(attempt)

    def drop_pending(self, attempt: Attempt) -> None:
        keypair = attempt.pending_keypair()
        if keypair is not None:
            self.release(keypair.local_index)
            keypair.wipe()
        attempt.pending = attempt.pending_peer = None

    def mark_rekey_failed(self, peer_id: bytes) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.rekey_failed = True

    def peer_for(self, peer_id: bytes, addr: Addr, now: float) -> Peer:
        peer = self.peers.get(peer_id)
        if peer is None:
            peer = Peer(peer_id, addr, Session(self.limits), last_received=now)
            self.peers[peer_id] = peer
        return peer

    def install(self, peer: Peer, keypair: Keypair, now: float) -> None:
        """Add a confirmed (initiator) or fresh (responder) keypair to the peer's Session."""
        if keypair.is_initiator and peer.session.next is not None:
            self._drop_unconfirmed_next(peer, now)
        for index in peer.session.install(keypair, now):
            self.release(index)
        self.slots[keypair.local_index] = peer
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
                self.release(keypair.local_index)
                keypair.wipe()
        if old.current is not None:
            # A keypair we responded to lands in fresh.next, and the install that follows
            # moves it to previous: either way it keeps opening the peer's packets.
            fresh.install(old.current, now)
        peer.session = fresh

    def authenticated(self, peer: Peer, addr: Addr, now: float) -> None:
        """An authentic packet from ``addr``: the peer is alive, and maybe there (roaming).

        WireGuard roams to the source of the latest authentic packet.  A peer here may be
        reachable over several paths at once (relayed while a punched path opens), so the
        move is ranked: to an equal or better path at once, to a worse one only when the
        current address has been silent for PATH_STALE_AFTER.

        Leaving a worse path that ``keep_warm`` accepts (a Tor stream) makes it the peer's
        standby: :meth:`tick` sends a keepalive on both paths every STANDBY_KEEPALIVE, which
        keeps the standby open and, once the better path has been silent
        STANDBY_STALE_AFTER, moves the other end back onto it; that end answers there at
        once, and the answer moves us.  Moving to a worse path drops the standby (the path
        left is better: re-punching, not keepalives, brings it back).
        """
        peer.last_received = now
        if addr == peer.addr:
            peer.addr_heard = now
            return
        rank = self._path_rank
        worse = rank(addr) > rank(peer.addr)
        stale_after = STANDBY_STALE_AFTER if addr == peer.standby else PATH_STALE_AFTER
        if peer.connected and worse and now - peer.addr_heard < stale_after:
            return
        old, peer.addr = peer.addr, addr
        peer.addr_heard = now
        if not peer.connected:
            return
        self.events.append(PeerAddressChanged(peer.peer_id, old, addr))
        if not worse and rank(addr) < rank(old) and self._keep_warm(old):
            peer.standby, peer.standby_due = old, now + STANDBY_KEEPALIVE
        elif worse or addr == peer.standby:
            peer.standby = peer.standby_due = None
        if worse and peer.session.can_send(now):
            # Fallen back: answer at once on this path, so the other end (still sending on
            # the dead one) hears us here and follows without waiting for our next data.
            self.transmit(peer, peer.session.seal(b"", now))

    def forget_standby(self, addr: Addr) -> None:
        """``addr`` is closed (its link went): no peer keeps it warm any longer."""
        for peer in self.peers.values():
            if peer.standby == addr:
                peer.standby = peer.standby_due = None

    def confirmed(self, peer: Peer, *, initiator: bool, rtt: float) -> None:
        """A new keypair now seals our traffic: PeerConnected the first time, else Rekeyed."""
        if peer.connected:
            self.events.append(Rekeyed(peer.peer_id))
            return
        peer.connected = True
        self.events.append(PeerConnected(peer.peer_id, peer.fingerprint, peer.addr, initiator, rtt))

    def deliver(self, peer: Peer, plaintext: bytes, now: float) -> None:
        if not plaintext:
            return
        self.events.append(DataReceived(peer.peer_id, plaintext))
        if peer.keepalive_due is None:
            peer.keepalive_due = now + self.limits.keepalive_timeout

    def transmit(self, peer: Peer, packet: bytes) -> None:
        self.out.append((packet, peer.addr))
        peer.keepalive_due = None
        peer.sent_current = True

    def open(self, peer: Peer, data: bytes, addr: Addr, now: float) -> None:
        """DATA under one of the peer's keypairs; the first under ``next`` confirms it."""
        session = peer.session
        waiting = session.next
        plaintext = open_data(session, data, now)
        self.authenticated(peer, addr, now)
        if waiting is not None and session.current is waiting:
            self.confirmed(peer, initiator=False, rtt=peer.next_rtt)
            # The initiator holds these keys back until our DATA proves we have them.
            self.transmit(peer, session.seal(b"", now))
        self.deliver(peer, plaintext, now)

    def tick(self, peer: Peer, now: float) -> bool:
        """Expire keys, declare loss, send a due keepalive; False if the peer is gone."""
        for index in peer.session.expire(now):
            self.release(index)
        silent = now - peer.last_received >= self.limits.reject_after_time * LOST_AFTER_REJECTS
        if silent or (not peer.connected and not peer.keypairs()):
            self.remove(peer, lost=peer.connected)
            return False
        if peer.keepalive_due is not None and now >= peer.keepalive_due:
            peer.keepalive_due = None
            if peer.session.can_send(now):
                self.transmit(peer, peer.session.seal(b"", now))
        if peer.standby is not None and peer.standby_due is not None and now >= peer.standby_due:
            peer.standby_due = now + STANDBY_KEEPALIVE
            if peer.session.can_send(now):
                if not peer.sent_current:  # first, so it is heard before the standby's
                    self.transmit(peer, peer.session.seal(b"", now))
                self.out.append((peer.session.seal(b"", now), peer.standby))
                self.counters["standby_keepalives"] += 1
            peer.sent_current = False
        return True

    def remove(self, peer: Peer, *, lost: bool) -> None:
        self.end_attempts_towards(peer.peer_id)
        for keypair in peer.keypairs():
            self.release(keypair.local_index)
            keypair.wipe()
        del self.peers[peer.peer_id]
        if lost:
            self.events.append(PeerLost(peer.peer_id))

    def rekey_deadline(self, peer: Peer) -> float | None:
        """When the peer's current keypair is due for replacement (Session.needs_rekey)."""
        session, limits = peer.session, self.limits
        current = session.current
        if current is None or not peer.connected or peer.rekey_failed:
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

    def deadlines(self, peer: Peer) -> list[float]:
        """Every time :meth:`tick` has work for this peer (rekey excluded)."""
        out = [peer.last_received + self.limits.reject_after_time * LOST_AFTER_REJECTS]
        expiry = peer.session.get_timer()
        if expiry is not None:
            out.append(expiry + TIMER_SLACK)
        if peer.keepalive_due is not None:
            out.append(peer.keepalive_due)
        if peer.standby_due is not None:
            out.append(peer.standby_due)
        return out
