"""The endpoint's per-peer records and the events it reports; no logic beyond small helpers.

Theory of operation
-------------------
:class:`~p2pd.endpoint.Endpoint` keeps three kinds of record, all plain data:

* a :class:`Peer` per remote static key that completed a handshake with us: its
  :class:`~p2pd.session.Session`, its address (the source of its last authenticated
  packet: roaming, as in WireGuard) and its timers (keepalive, rekey, loss);
* an :class:`Attempt` per address we are initiating towards: successive handshakes, each
  retried every ``REKEY_TIMEOUT`` plus jitter, until one is *confirmed* or
  ``REKEY_ATTEMPT_TIME`` runs out;
* a :class:`Responding` per handshake a peer started, alive until its FINISH or
  ``REKEY_TIMEOUT``.

An answered attempt holds its keypair *pending*, alone in a private Session, until the
peer proves it holds the keys by sending DATA under them; only then does the keypair
enter the peer's Session.  Until then the old keypair keeps carrying the traffic, so a
lost FINISH never makes the peer drop data that the network delivered.

Events are frozen dataclasses the driver reads with ``Endpoint.next_event()``.  A peer is
named by its 32-byte static public key (``peer_id``); :attr:`PeerConnected.fingerprint`
is the same key as people compare it (:func:`p2pd.identity.fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from p2pd.cookie import CookieJar
from p2pd.handshake import InitiatorHandshake, ResponderHandshake
from p2pd.identity import fingerprint
from p2pd.session import Keypair, Session

#: A UDP address as the driver's socket gives it: (IPv4 or IPv6 literal, port).
Addr = tuple[str, int]

#: A peer heard from by no authenticated packet for REJECT_AFTER_TIME times this is lost:
#: WireGuard zeroes every key of a peer silent that long.
LOST_AFTER_REJECTS: Final = 3
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
