"""What a node tells its application (events), what it is configured with, and what it keeps
per connected peer.

Why a module of its own: the daemon, the commands and the WAN glue all name these types,
and none of them needs the node's loops to do so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from p2pd import messages
from p2pd.reliable import Channel
from p2pd.udp import Addr
from transports.base import Candidate
from transports.torrc import TorrcValue

#: Seconds after start before Tor joins the race (it is the last resort; a node that has
#: no peer by then meets at the onion).  Launching tor starts at once: its bootstrap takes
#: longer than this on the real network.
TOR_AFTER = 5.0


@dataclass(frozen=True, slots=True)
class PeerUp:
    """A peer completed the handshake; ``path`` says how it was reached."""

    peer_id: bytes
    fingerprint: str
    addr: Addr
    path: str
    elapsed: float


@dataclass(frozen=True, slots=True)
class MessageIn:
    peer_id: bytes
    fingerprint: str
    message: messages.AppMessage


@dataclass(frozen=True, slots=True)
class Delivered:
    peer_id: bytes
    fingerprint: str
    message_id: int
    rtt: float
    path: str


@dataclass(frozen=True, slots=True)
class PeerDown:
    peer_id: bytes
    fingerprint: str
    reason: str


@dataclass(frozen=True, slots=True)
class PathChanged:
    """A connected peer is now reached another way (an upgrade, or a fallback)."""

    peer_id: bytes
    fingerprint: str
    old_path: str
    path: str
    addr: Addr


@dataclass(frozen=True, slots=True)
class TorProgress:
    """Tor moved on: ``bootstrapping`` (with ``percent``, each tenth), ``bootstrapped``,
    ``bootstrap_timeout``, ``meeting`` (at the onion), ``met``, ``meet_timeout``; ``elapsed``
    seconds since tor was started (bootstrapping) or the meeting began."""

    state: str
    elapsed: float
    percent: int | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """Nothing happened to a peer; the application asked to be woken (see Node.kick)."""


NodeEvent = PeerUp | MessageIn | Delivered | PeerDown | PathChanged | TorProgress | Tick


@dataclass(slots=True)
class PeerState:
    fingerprint: str
    addr: Addr
    path: str
    channel: Channel
    closed: bool = False
    #: The peer process's random id (see Node.incarnation), once it told us.
    incarnation: bytes | None = None


@dataclass(frozen=True, slots=True)
class TorInvite:
    """An invite's onion (:mod:`p2pd.invite`): the inviter publishes it (``seed`` set) and
    accepts one peer; the joiner connects to ``address``.  No hello on these streams."""

    address: str  # the invite's onion host name (with .onion)
    expires_at: float  # wall clock (unix seconds): the joiner stops trying after it
    seed: bytes | None = field(default=None, repr=False)  # the inviter's onion seed

    @property
    def host(self) -> bool:
        return self.seed is not None


@dataclass(frozen=True, slots=True)
class TorSettings:
    """How a node uses Tor: a tor of its own (``control`` None) or an existing one."""

    control: Addr | None = None  # --tor-control: attach instead of launching
    password: str | None = field(default=None, repr=False)  # control-port password
    cookie_path: Path | None = None
    torrc: Mapping[str, TorrcValue] = field(default_factory=dict)  # --tor-config lines
    only: bool = False  # --tor-only: nothing leaves outside Tor
    state_dir: Path | None = None  # where a launched tor keeps its data directory
    after: float = TOR_AFTER  # seconds before meeting (0 with --tor-only)
    invite: TorInvite | None = None  # an invite's onion instead of the passphrase's


@dataclass(slots=True)
class NodeConfig:
    """What a node listens on and how it discovers peers."""

    port: int | None = None  # None: the derived port (another one if taken)
    interfaces: Sequence[str] | None = None  # None: every interface; ["lo"] in tests
    beacons: bool = True
    mdns: bool = True
    targets: Sequence[Addr] = field(default_factory=tuple)  # explicit candidates (--target)
    stun: Sequence[Addr] = field(default_factory=tuple)  # STUN servers (--stun); none by default
    assists: Sequence[Addr] = field(default_factory=tuple)  # assist relays (--assist)
    portmap: bool = True  # ask the gateway for a port mapping (UPnP, NAT-PMP, PCP)
    tcp: bool = True  # listen on TCP and fall back to it when UDP fails
    offer: Sequence[Candidate] = field(default_factory=tuple)  # from --offer
    #: Only this peer (static public key) is accepted: the hybrid offer's resume token.
    expect_peer: bytes | None = None
    #: Tor as a path (--tor, --tor-control, --tor-only); None: no Tor.
    tor: TorSettings | None = None
