"""LAN beacons: tell the local network "a holder of this passphrase listens here", to holders only.

Theory of operation
-------------------
A node broadcasts a small BEACON datagram from its one UDP socket to every subnet it is on.
A neighbour that holds the same passphrase verifies it and takes the datagram's *source
address* (IP and port of the sender's socket) as a candidate to connect to; everybody else
sees 36 random-looking bytes::

    type 0x06 · reserved[3] = 0 · nonce[16] · mac[16]
    mac = BLAKE2b(key=lan_key, data=b"p2pd v1 beacon" || nonce || epoch u64 LE, 16)
    epoch = tags.epoch_of(unix_time)

Invariants and costs:

- The nonce is fresh randomness and the MAC is keyed, so a non-holder learns nothing: two
  beacons of one node are unlinkable to anyone without ``lan_key``, and nothing in a beacon
  depends on the passphrase except through the key.
- Verification is one BLAKE2b per accepted epoch (``e-1, e, e+1``, as the handshake tags,
  so minutes of clock skew pass), no public-key work, and every candidate MAC is compared
  with :func:`hmac.compare_digest` without early exit: same cost whatever the input.
- A node hears its own broadcasts (and its own ``127.0.0.1`` copy).  It remembers the
  nonces of its last :data:`OWN_NONCES_REMEMBERED` beacons and rejects them, so it never
  tries to connect to itself.
- A valid beacon proves knowledge of ``lan_key`` within about +-10 minutes, *not*
  freshness nor that the source address is the sender's: a captured beacon can be replayed
  from a spoofed source.  The result is only a candidate; the handshake authenticates the
  peer, and the node's rate limits bound what a replay can cost.

The schedule (:meth:`BeaconCore.next_delay`) is here too, so the driver only sleeps.
Time: ``wall_time`` is Unix time (the epoch must agree between strangers); ``elapsed`` is
monotonic seconds since the driver started beaconing.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Callable
from hmac import compare_digest

from p2pd.errors import LocalError
from p2pd.tags import TAG_ACCEPT_EPOCHS, epoch_of

#: The packet type byte of a beacon (after the handshake, data and cookie types 0x01-0x05).
TYPE_BEACON = 0x06
#: The type as the one-byte prefix a driver compares ``data[:1]`` with.
BEACON_TYPE = bytes([TYPE_BEACON])
#: Type byte and three reserved zero bytes, as every p2pd packet starts.
HEADER = BEACON_TYPE + bytes(3)
#: Nonce length: 128 random bits never repeat in practice and make beacons unlinkable.
NONCE_SIZE = 16
#: MAC length: 128 bits, as WireGuard's MACs and our tags; unforgeable by brute force.
MAC_SIZE = 16
#: Total size on the wire: 4 + 16 + 16 bytes, small enough for any link.
BEACON_SIZE = len(HEADER) + NONCE_SIZE + MAC_SIZE
#: Size of ``lan_key`` as derive.py produces it.
LAN_KEY_SIZE = 32
#: Domain separation from every other BLAKE2b use of a passphrase-derived key.
BEACON_CONTEXT = b"p2pd v1 beacon"
#: Own nonces remembered: one beacon per round, so this covers copies of our own beacons
#: delayed by up to 16 rounds (16 s at first, 80 s later) - far beyond any LAN delay.
OWN_NONCES_REMEMBERED = 16

#: Seconds between beacons right after start: a new node is found within about a second,
#: because a running neighbour that hears it connects to it at once.
BEACON_FAST_INTERVAL = 1.0
#: Seconds the fast rate lasts (five beacons): enough for one or two lost broadcasts.
BEACON_FAST_PERIOD = 5.0
#: Seconds between beacons afterwards: a peer that arrives later finds us by its own fast
#: beacons, so ours only need to cover a lost datagram; 36 bytes per subnet per 5 s is
#: negligible even on a busy LAN.
BEACON_INTERVAL = 5.0
#: Each delay is shortened by a random fraction up to this, so nodes started together
#: (after a power cut, say) drift apart instead of broadcasting in lockstep.
BEACON_JITTER = 0.2
#: Random bytes drawn per jitter value (a 16-bit fraction is plenty).
JITTER_BYTES = 2

Rng = Callable[[int], bytes]


def beacon_mac(lan_key: bytes, nonce: bytes, epoch: int) -> bytes:
    """The 16-byte MAC of a beacon with ``nonce`` in ``epoch``."""
    data = BEACON_CONTEXT + nonce + epoch.to_bytes(8, "little")
    return hashlib.blake2b(data, key=lan_key, digest_size=MAC_SIZE).digest()


def beacon_interval(elapsed: float, jitter: float) -> float:
    """Seconds to wait before the next beacon, ``elapsed`` seconds into beaconing.

    ``jitter`` in ``[0, 1)`` scales the random shortening (see :data:`BEACON_JITTER`).
    """
    base = BEACON_FAST_INTERVAL if elapsed < BEACON_FAST_PERIOD else BEACON_INTERVAL
    return base * (1.0 - BEACON_JITTER * jitter)


class BeaconCore:
    """Makes our beacons and verifies everybody's; see the module docstring.

    ``counters`` counts verdicts (``accept``, ``drop_size``, ``drop_mac``, ``drop_own``);
    drivers add their own (``sent``, ``send_error``).
    """

    __slots__ = ("_key", "_own", "_rng", "counters")

    def __init__(self, lan_key: bytes, rng: Rng = os.urandom) -> None:
        if len(lan_key) != LAN_KEY_SIZE:
            raise LocalError(f"lan_key must be {LAN_KEY_SIZE} bytes, got {len(lan_key)}")
        self._key = lan_key
        self._rng = rng
        self._own: collections.deque[bytes] = collections.deque(maxlen=OWN_NONCES_REMEMBERED)
        self.counters: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"BeaconCore(counters={dict(self.counters)})"

    def make(self, wall_time: float) -> bytes:
        """A new beacon for the epoch of ``wall_time``; its nonce is remembered as ours."""
        nonce = self._rng(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise LocalError(f"rng returned {len(nonce)} bytes, expected {NONCE_SIZE}")
        self._own.append(nonce)
        return HEADER + nonce + beacon_mac(self._key, nonce, epoch_of(wall_time))

    def verify_untrusted(self, data: bytes, wall_time: float) -> bool:
        """Whether ``data`` is a valid beacon of another holder of ``lan_key``, now.

        Never raises on any input.  Costs three BLAKE2b and three constant-time
        comparisons for every datagram of the right shape, whatever its content.
        """
        if len(data) != BEACON_SIZE or data[: len(HEADER)] != HEADER:
            self.counters["drop_size"] += 1
            return False
        nonce = bytes(data[len(HEADER) : len(HEADER) + NONCE_SIZE])
        mac = bytes(data[len(HEADER) + NONCE_SIZE :])
        epoch = epoch_of(wall_time)
        ok = False
        # Clamp at 0 rather than shrink the window, as tags.py: always the same work.
        for candidate in range(epoch - TAG_ACCEPT_EPOCHS, epoch + TAG_ACCEPT_EPOCHS + 1):
            ok = compare_digest(beacon_mac(self._key, nonce, max(0, candidate)), mac) | ok
        if not ok:
            self.counters["drop_mac"] += 1
            return False
        if nonce in self._own:
            self.counters["drop_own"] += 1
            return False
        self.counters["accept"] += 1
        return True

    def next_delay(self, elapsed: float) -> float:
        """Seconds until the next beacon, ``elapsed`` seconds into beaconing (with jitter)."""
        jitter = int.from_bytes(self._rng(JITTER_BYTES), "little") / (1 << (8 * JITTER_BYTES))
        return beacon_interval(elapsed, jitter)
