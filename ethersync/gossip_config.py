"""Every tunable of the gossip core, with its reason.

None of these are protocol constants: two peers with different settings interoperate.
Wire limits (message, blob and list sizes) are in :mod:`ethersync.gossip_wire`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ethersync.gossip_wire import MAX_ITEM_WIRE_SIZE, MAX_MESSAGE_SIZE
from p2pd.errors import LocalError

#: Peers a new item is first pushed to in full; the eager tree then prunes itself.  Three
#: reaches ~94 % of a random graph by push alone (1 - e^-3x = x); ids cover the rest.
FANOUT = 3
#: Eager links a node keeps even when they bring duplicates.  A pure Plumtree tree (0)
#: is shaped by whoever published first and is deep for everyone else; in simulation
#: (200 nodes, 20 authors, seed 1) keeping 2 cut delivery p50/p99 from 0.87/2.01 s to
#: 0.75/1.81 s for a byte ratio of 1.94 instead of 1.91; keeping 3, to 0.55/0.99 s at 2.08.
MIN_EAGER = 2
#: Lazy peers told of a new item by id.  Plumtree tells all; ids cost ~70 bytes each, so
#: telling every one of ~10 peers would add ~70 % of a 1 KiB item.  A few announcers per
#: node still reach everyone, and anti-entropy catches the rest.
LAZY_FANOUT = 4
#: Seconds between anti-entropy rounds (jittered 0.5x-1.5x): a digest is ~30 bytes, so
#: an in-sync node spends ~200 bytes a minute on it, and a stray gap heals within ~10 s.
ANTI_ENTROPY_INTERVAL = 10.0
#: Seconds (jittered) before a freshly started node's first anti-entropy round: long
#: enough for its driver to have connected to a few peers.
STARTUP_ANTI_ENTROPY = 1.0
#: Seconds between peer-exchange messages piggybacked on an anti-entropy round.
PEER_EXCHANGE_INTERVAL = 60.0
#: Peers named in one peer-exchange message.
PEERS_PER_EXCHANGE = 8
#: Seconds ids wait to be batched into one ``ihave`` per peer.
IHAVE_DELAY = 0.2
#: Seconds to wait for the eager copy of an announced item before asking for it: a few
#: hops of WAN latency, so a healthy tree is never second-guessed.
WANT_DELAY = 0.5
#: Seconds before asking the next announcer when a ``want`` went unanswered.
WANT_TIMEOUT = 2.0
#: Items heard of but not yet fetched: 4096 x ~200 bytes, bounded whatever peers claim.
MAX_PENDING_WANTS = 4096
#: Announcers remembered per wanted item: enough to route around a few dead peers.
MAX_ANNOUNCERS = 4
#: Peers gossiped with at once; also bounds per-peer state.
MAX_PEERS = 64
#: Bytes per second we send to one peer, and its burst: a backlog of MiBs drains at
#: this rate instead of flooding a slow link; the burst fits two largest messages.
SEND_RATE = 1024 * 1024.0
SEND_BURST = 2.0 * MAX_MESSAGE_SIZE
#: Bytes per second we accept from one peer (twice what an honest peer sends us).
RECV_RATE = 2 * SEND_RATE
RECV_BURST = 4.0 * MAX_MESSAGE_SIZE
#: Bytes queued for one peer behind its rate limit; beyond that, anti-entropy recovers.
MAX_QUEUE_BYTES = 8 * 1024 * 1024
#: Items read from the store at a time for a peer that is catching up: the backlog
#: streams from the store as the send queue drains, never all at once.
CATCHUP_BATCH = 32
#: Target size of one ``push`` message (several small items share one message).
PUSH_BYTES = 60 * 1024


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Local tunables; the defaults are the constants above."""

    fanout: int = FANOUT
    min_eager: int = MIN_EAGER
    lazy_fanout: int = LAZY_FANOUT
    anti_entropy_interval: float = ANTI_ENTROPY_INTERVAL
    startup_anti_entropy: float = STARTUP_ANTI_ENTROPY
    peer_exchange_interval: float = PEER_EXCHANGE_INTERVAL
    peers_per_exchange: int = PEERS_PER_EXCHANGE
    ihave_delay: float = IHAVE_DELAY
    want_delay: float = WANT_DELAY
    want_timeout: float = WANT_TIMEOUT
    max_pending_wants: int = MAX_PENDING_WANTS
    max_announcers: int = MAX_ANNOUNCERS
    max_peers: int = MAX_PEERS
    send_rate: float = SEND_RATE
    send_burst: float = SEND_BURST
    recv_rate: float = RECV_RATE
    recv_burst: float = RECV_BURST
    max_queue_bytes: int = MAX_QUEUE_BYTES
    catchup_batch: int = CATCHUP_BATCH
    push_bytes: int = PUSH_BYTES

    def __post_init__(self) -> None:
        intervals = (self.anti_entropy_interval, self.startup_anti_entropy)
        if min(*intervals, self.peer_exchange_interval) <= 0:
            raise LocalError("gossip intervals must be positive")
        if min(self.ihave_delay, self.want_delay, self.want_timeout) <= 0:
            raise LocalError("gossip delays must be positive")
        if min(self.max_pending_wants, self.max_announcers, self.max_peers) < 1:
            raise LocalError("gossip bounds must be at least 1")
        if self.send_burst < MAX_MESSAGE_SIZE or self.recv_burst < MAX_MESSAGE_SIZE:
            raise LocalError("rate-limit bursts must fit the largest message")
        if self.max_queue_bytes < MAX_MESSAGE_SIZE or self.push_bytes > MAX_MESSAGE_SIZE:
            raise LocalError("queue must fit, and pushes must stay under, the largest message")
        if self.max_queue_bytes < 2 * self.catchup_batch * MAX_ITEM_WIRE_SIZE:
            raise LocalError("max_queue_bytes must fit two catch-up batches of largest items")
        if self.catchup_batch < 1 or min(self.fanout, self.lazy_fanout, self.min_eager) < 0:
            raise LocalError("catchup_batch must be positive, fanouts non-negative")
        if self.peers_per_exchange < 0:
            raise LocalError("peers_per_exchange must be non-negative")
