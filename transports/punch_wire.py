"""PUNCH frames on the wire: the 44-byte PROBE and PROBE-ACK of :mod:`transports.punch`.

Layout (every integer little-endian, as the rest of p2pd)::

    0x08 · kind (1 PROBE, 2 ACK) · 0x00 0x00 · sender id[8] · txn[8] · echo txn[8] · mac[16]
    mac = BLAKE2b(key=punch_key, data=PUNCH_CONTEXT || frame[0:28] || epoch u64 LE, 16)
    epoch = tags.epoch_of(unix_time)

- ``sender id`` is random per node (per :class:`~transports.punch.PunchCore`), so a node
  recognises and ignores its own probes when a NAT hairpins them or a broadcast echoes them.
- ``txn`` is fresh randomness per PROBE; an ACK carries its own fresh ``txn`` and the
  probe's ``txn`` in ``echo`` (zeros in a PROBE), which is what lets the prober match the
  answer and measure the round trip.
- The size, 44 bytes, is never 20, and bytes 2..3 are zero, so the node's demultiplexer never
  mistakes a frame for STUN (see docs/protocol.md and the WAN design).

Why the epoch is in the MAC: a probe carries no other notion of time.  Without it a probe
captured today could be replayed next month from a spoofed source, and every holder of the
passphrase would answer it with an ACK and take the spoofed address as a candidate.  With
it, a captured frame verifies for at most about three epochs (``e-1, e, e+1``: 10-15
minutes, the same window as the handshake tags and LAN beacons, so minutes of clock skew
pass), and within that window the core's memory of recent ``txn`` values drops exact
repeats.  Verification is three BLAKE2b and three constant-time comparisons whatever the
input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from hmac import compare_digest
from typing import Final

from p2pd.errors import BadFrame, LocalError
from p2pd.tags import TAG_ACCEPT_EPOCHS, epoch_of

#: Packet type of PUNCH frames on the node's socket (after the LAN beacon's 0x06, relay 0x07).
TYPE_PUNCH: Final = 0x08
#: A PROBE: "I am a holder of the passphrase; answer me at the source address".
KIND_PROBE: Final = 1
#: A PROBE-ACK: "your PROBE ``echo`` reached me; this came from my socket".
KIND_ACK: Final = 2
KINDS: Final = frozenset((KIND_PROBE, KIND_ACK))
#: Bytes 2..3: zero, as every p2pd packet's reserved bytes (and so STUN can never match).
RESERVED: Final = bytes(2)
#: Random per node: 64 bits make two nodes' ids collide with odds ~2**-64.
SENDER_ID_SIZE: Final = 8
#: Random per frame: 64 bits, unguessable by an off-path attacker forging an ACK.
TXN_SIZE: Final = 8
#: 128-bit MAC, as beacons and WireGuard's MACs: unforgeable by brute force.
MAC_SIZE: Final = 16
#: Size of ``punch_key``, as :func:`p2pd.subkeys.punch_key` produces it.
PUNCH_KEY_SIZE: Final = 32
#: Domain separation from every other BLAKE2b use of a passphrase-derived key.
PUNCH_CONTEXT: Final = b"p2pd v1 punch"

HEADER_SIZE: Final = 4
_SENDER_AT: Final = HEADER_SIZE
_TXN_AT: Final = _SENDER_AT + SENDER_ID_SIZE
_ECHO_AT: Final = _TXN_AT + TXN_SIZE
_MAC_AT: Final = _ECHO_AT + TXN_SIZE
#: Total frame size: 4 + 8 + 8 + 8 + 16 = 44 bytes.
FRAME_SIZE: Final = _MAC_AT + MAC_SIZE
#: The zero ``echo`` of a PROBE.
NO_ECHO: Final = bytes(TXN_SIZE)


@dataclass(frozen=True, slots=True)
class Frame:
    """A verified PUNCH frame."""

    kind: int
    sender: bytes
    txn: bytes
    echo: bytes


def frame_mac(key: bytes, body: bytes, epoch: int) -> bytes:
    """The MAC of the first 28 bytes ``body`` of a frame in ``epoch``."""
    data = PUNCH_CONTEXT + body + max(0, epoch).to_bytes(8, "little")
    return hashlib.blake2b(data, key=key, digest_size=MAC_SIZE).digest()


def encode(key: bytes, frame: Frame, wall_time: float) -> bytes:
    """The wire bytes of ``frame``, MACed for the epoch of ``wall_time``."""
    if len(key) != PUNCH_KEY_SIZE:
        raise LocalError(f"punch key must be {PUNCH_KEY_SIZE} bytes, got {len(key)}")
    if frame.kind not in KINDS:
        raise LocalError(f"unknown punch frame kind {frame.kind}")
    sizes = (len(frame.sender), len(frame.txn), len(frame.echo))
    if sizes != (SENDER_ID_SIZE, TXN_SIZE, TXN_SIZE):
        raise LocalError(f"punch frame field sizes {sizes} are wrong")
    body = bytes((TYPE_PUNCH, frame.kind)) + RESERVED + frame.sender + frame.txn + frame.echo
    return body + frame_mac(key, body, epoch_of(wall_time))


def decode_untrusted(key: bytes, data: bytes, wall_time: float) -> Frame:
    """Parse and verify a frame, or raise :class:`BadFrame` with the drop reason.

    Reasons: ``size``, ``header`` (type, kind or reserved bytes), ``mac``, ``echo`` (a PROBE
    with a non-zero echo).  The MAC is checked against all accepted epochs without early exit.
    """
    if len(data) != FRAME_SIZE:
        raise BadFrame("size")
    data = bytes(data)
    if data[0] != TYPE_PUNCH or data[1] not in KINDS or data[2:HEADER_SIZE] != RESERVED:
        raise BadFrame("header")
    body, mac = data[:_MAC_AT], data[_MAC_AT:]
    epoch = epoch_of(wall_time)
    ok = False
    for candidate in range(epoch - TAG_ACCEPT_EPOCHS, epoch + TAG_ACCEPT_EPOCHS + 1):
        ok = compare_digest(frame_mac(key, body, candidate), mac) | ok
    if not ok:
        raise BadFrame("mac")
    kind = data[1]
    echo = data[_ECHO_AT:_MAC_AT]
    if kind == KIND_PROBE and echo != NO_ECHO:
        raise BadFrame("echo")
    return Frame(kind, data[_SENDER_AT:_TXN_AT], data[_TXN_AT:_ECHO_AT], echo)
