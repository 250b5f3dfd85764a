"""One p2pd handshake: Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b carried in three wire packets.

Theory of operation
-------------------
::

    initiator                                   responder
    HANDSHAKE_INIT   (e)                  ->
                                          <-    HANDSHAKE_RESP   (e, ee, s, es)
    HANDSHAKE_FINISH (s, se, psk)         ->

The PSK (``params.psk``, from the passphrase) is mixed in at the end of the third
message, so only a holder of the passphrase can finish; the static keys (the nodes'
:class:`~p2pd.identity.Identity`) travel encrypted, so an observer learns neither who is
talking nor, without the passphrase, that p2pd is.  All Noise payloads are empty; the
prologue :data:`PROLOGUE` binds the protocol version.

Each class is one side of one handshake, sans-IO: it is built with ``now``/``wall_time``
and bytes, returns bytes and a :class:`~p2pd.session.Keypair`.  The caller (the endpoint)
has already checked the packet's tag (and for INIT the whole early-drop gate); these
classes check the shape, the receiver index, mac1, and then run Noise.

Invariants:

* any bad input raises :class:`~p2pd.errors.BadFrame` (or its subclass
  :class:`~p2pd.noise.NoiseError`) whose ``reason`` is a counter name; nothing is ever sent
  in answer to a failure, so a peer with another passphrase learns only silence;
* a failure before Noise runs (shape, index, mac1) leaves the handshake usable, so a
  forged or damaged copy cannot kill a genuine exchange; a Noise failure makes it
  :attr:`failed` for good and the caller must discard it;
* a handshake whose peer turns out to be ourselves (same static key) is refused with
  reason ``"self"`` before any key is derived.

Wire detail (docs/protocol.md, "Handshake"): in psk mode Noise appends a 16-byte AEAD tag
to the first message's empty payload.  That tag is computed from public values only (the
protocol name, the prologue and ``e``), so it authenticates nothing; the INIT packet
leaves it off (``noise_msg1`` is the 32-byte ``e``) and the responder recomputes it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from hmac import compare_digest
from typing import Final

from p2pd import wire
from p2pd.cookie import CookieJar, stamp
from p2pd.derive import Params
from p2pd.errors import BadFrame, LocalError
from p2pd.identity import Identity
from p2pd.noise import PROTOCOL_NAME, HandshakeState, NoiseError
from p2pd.noise._state import SymmetricState
from p2pd.session import Keypair
from p2pd.tags import epoch_of, make_tag

#: Noise prologue: both sides hash it first, so another protocol version cannot complete.
PROLOGUE: Final = b"p2pd v1"
#: Poly1305 tag of msg1's empty payload, recomputed by the responder rather than sent.
MSG1_PAYLOAD_TAG_SIZE: Final = 16

Rng = Callable[[int], bytes]


def msg1_payload_tag(ephemeral: bytes) -> bytes:
    """The tag Noise appends to message 1 in psk mode, from public values only."""
    sym = SymmetricState(PROTOCOL_NAME.encode("ascii"))
    sym.mix_hash(PROLOGUE)
    sym.mix_hash(ephemeral)
    sym.mix_key(ephemeral)  # psk mode: "e" also keys the cipher
    return sym.encrypt_and_hash(b"")


def _mac1_ok(params: Params, packet: bytes) -> bool:
    body = packet[: -wire.MACS_SIZE]
    expected = hashlib.blake2b(body, key=params.mac1_key, digest_size=wire.MAC_SIZE).digest()
    return compare_digest(expected, packet[-wire.MACS_SIZE : -wire.MAC_SIZE])


def _tag(params: Params, wall_time: float) -> bytes:
    return make_tag(params.tag_key, epoch_of(wall_time))


def _check_index(local_index: int) -> None:
    if not 0 <= local_index <= wire.MAX_INDEX:
        raise LocalError("local_index must fit in a u32")


def _transport_keys(hs: HandshakeState) -> tuple[bytes, bytes]:
    first, second = hs.split()
    assert first.key is not None and second.key is not None  # split always keys both
    return first.key, second.key


def _noise(identity: Identity, params: Params, *, initiator: bool, rng: Rng) -> HandshakeState:
    return HandshakeState(
        PROTOCOL_NAME,
        initiator=initiator,
        prologue=PROLOGUE,
        s=identity.private,
        psks=[params.psk],
        rng=rng,
    )


class _Side:
    """What both roles share: reading the peer's authenticated Noise message."""

    _params: Params
    _identity: Identity
    _hs: HandshakeState
    failed: bool

    def _read_peer_message(self, packet: bytes, noise_msg: bytes) -> bytes:
        """Check mac1, read the Noise message, refuse ourselves; the peer's static key."""
        if not _mac1_ok(self._params, packet):
            raise BadFrame("drop_mac1")
        try:
            self._hs.read_message_untrusted(noise_msg)
        except NoiseError:
            self.failed = True
            raise NoiseError("bad_handshake") from None
        remote = self._hs.remote_static
        assert remote is not None  # messages 2 and 3 both carry s
        if compare_digest(remote, self._identity.public):
            self.failed = True
            raise BadFrame("self")
        return remote


class InitiatorHandshake(_Side):
    """Our side of a handshake we start: INIT out, RESP in, FINISH out."""

    __slots__ = (
        "_hs",
        "_identity",
        "_init",
        "_jar",
        "_params",
        "failed",
        "local_index",
        "started_at",
    )

    def __init__(
        self,
        params: Params,
        identity: Identity,
        local_index: int,
        *,
        now: float,
        wall_time: float,
        cookie_jar: CookieJar,
        rng: Rng = os.urandom,
    ) -> None:
        _check_index(local_index)
        self._params = params
        self._identity = identity
        self._jar = cookie_jar
        self.local_index = local_index
        self.started_at = now
        #: True once Noise rejected a reply: discard this handshake.
        self.failed = False
        self._hs = _noise(identity, params, initiator=True, rng=rng)
        msg1 = self._hs.write_message()
        body = wire.HandshakeInit(
            local_index, _tag(params, wall_time), msg1[: wire.NOISE_MSG1_SIZE]
        )
        self._init = cookie_jar.stamp(body.encode(), now)

    def __repr__(self) -> str:
        return f"InitiatorHandshake(local_index={self.local_index}, failed={self.failed})"

    def init_packet(self) -> bytes:
        """The HANDSHAKE_INIT datagram, stamped with mac1 (and mac2 if a cookie is held)."""
        return self._init

    def consume_resp_untrusted(
        self, packet: bytes, now: float, wall_time: float
    ) -> tuple[bytes, Keypair, bytes]:
        """Process a HANDSHAKE_RESP: return (FINISH datagram, keypair, remote static key)."""
        if self.failed or self._hs.complete:
            raise LocalError("this handshake is finished or failed; start a new one")
        msg = wire.parse_untrusted(packet)
        if not isinstance(msg, wire.HandshakeResp):
            raise BadFrame("not_resp")
        if msg.receiver_index != self.local_index:
            raise BadFrame("unknown_index")
        remote = self._read_peer_message(packet, msg.noise_msg)
        msg3 = self._hs.write_message()
        keys = _transport_keys(self._hs)
        keypair = Keypair.from_split(
            *keys,
            is_initiator=True,
            local_index=self.local_index,
            remote_index=msg.sender_index,
            now=now,
        )
        finish = wire.HandshakeFinish(
            self.local_index, msg.sender_index, _tag(self._params, wall_time), msg3
        )
        return self._jar.stamp(finish.encode(), now), keypair, remote


class ResponderHandshake(_Side):
    """Our side of a handshake a peer started: built from an INIT that passed early drop."""

    __slots__ = (
        "_hs",
        "_identity",
        "_params",
        "_resp",
        "failed",
        "local_index",
        "remote_index",
        "started_at",
    )

    def __init__(
        self,
        params: Params,
        identity: Identity,
        local_index: int,
        init_packet: bytes,
        *,
        now: float,
        wall_time: float,
        rng: Rng = os.urandom,
    ) -> None:
        _check_index(local_index)
        msg = wire.parse_untrusted(init_packet)
        if not isinstance(msg, wire.HandshakeInit):
            raise BadFrame("not_init")
        self._params = params
        self._identity = identity
        self.local_index = local_index
        self.remote_index = msg.sender_index
        self.started_at = now
        self.failed = False
        self._hs = _noise(identity, params, initiator=False, rng=rng)
        try:
            self._hs.read_message_untrusted(msg.noise_msg + msg1_payload_tag(msg.noise_msg))
            msg2 = self._hs.write_message()  # ee/es: NoiseError for a small-order e
        except NoiseError:
            self.failed = True
            raise NoiseError("bad_handshake") from None
        resp = wire.HandshakeResp(local_index, msg.sender_index, _tag(params, wall_time), msg2)
        self._resp = stamp(resp.encode(), params.mac1_key, None)

    def __repr__(self) -> str:
        return f"ResponderHandshake(local_index={self.local_index}, failed={self.failed})"

    def resp_packet(self) -> bytes:
        """The HANDSHAKE_RESP datagram, stamped with mac1 (mac2 zero)."""
        return self._resp

    def consume_finish_untrusted(self, packet: bytes, now: float) -> tuple[Keypair, bytes]:
        """Process a HANDSHAKE_FINISH (tag checked by the caller): (keypair, remote static)."""
        if self.failed or self._hs.complete:
            raise LocalError("this handshake is finished or failed; start a new one")
        msg = wire.parse_untrusted(packet)
        if not isinstance(msg, wire.HandshakeFinish):
            raise BadFrame("not_finish")
        if msg.receiver_index != self.local_index:
            raise BadFrame("unknown_index")
        if msg.sender_index != self.remote_index:
            raise BadFrame("index_mismatch")
        remote = self._read_peer_message(packet, msg.noise_msg)
        keys = _transport_keys(self._hs)
        keypair = Keypair.from_split(
            *keys,
            is_initiator=False,
            local_index=self.local_index,
            remote_index=self.remote_index,
            now=now,
        )
        return keypair, remote
