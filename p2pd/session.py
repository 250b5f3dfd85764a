"""Data-session core: transport keypairs, sealing and opening DATA packets, key rotation.

Theory of operation
-------------------
A completed handshake yields a :class:`Keypair`: one ChaCha20-Poly1305 key per direction,
the two session indices, its birth time and which side initiated.  A :class:`Session`
holds up to three, with WireGuard's rotation (``noise.c``):

* ``current`` seals everything we send and opens what the peer sends under it;
* ``previous`` is the keypair ``current`` replaced; it only opens, so packets sealed
  under it and delivered late after a rekey are still accepted (the grace window),
  until it reaches ``REJECT_AFTER_TIME``;
* ``next`` is a responder's fresh keypair.  The responder cannot know the initiator
  holds it until it sees a DATA packet under it, so ``next`` only opens; the first
  authentic packet under ``next`` confirms it: current -> previous, next -> current.

:meth:`Session.install` applies the rules.  Initiator: the new keypair becomes current
at once; the old current (or an unconfirmed next, if one is pending) becomes previous.
Responder: the new keypair goes to ``next`` and the old previous is dropped.

Invariants:

* a (key, nonce) pair is never used twice: the send counter only grows, and sealing
  stops at ``REJECT_AFTER_MESSAGES``;
* no keypair seals or opens at an age >= ``REJECT_AFTER_TIME``;
* a counter is accepted at most once per keypair, and the replay window only moves
  after the packet authenticated, so forgeries cannot shift it;
* keys never appear in ``repr``; dropped keypairs lose their keys.  (CPython cannot
  zero an immutable ``bytes``: "wiping" drops this session's last reference.)

When to rekey (:meth:`Session.needs_rekey`), after WireGuard's ``timers.c``/``send.c``:
the initiator of the current keypair rekeys once it is ``REKEY_AFTER_TIME`` old; either
side rekeys once it has sent ``REKEY_AFTER_MESSAGES``.  A responder does not rekey by
age until ``REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT`` (165 s), so two
live peers seldom start crossing handshakes: the initiator goes first at 120 s and the
responder only steps in if the initiator has not sent since.  (WireGuard uses the same 165 s
as the initiator's trigger on receive; here it is the responder's backstop.)

Sans-IO: times are monotonic seconds passed in as ``now``; nothing here reads a clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

import nacl.exceptions
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
)

from p2pd import wire
from p2pd.errors import BadFrame, LocalError
from p2pd.replay import ReplayWindow

#: Rekey once this many packets were sent under a keypair (WireGuard: 2**60).
REKEY_AFTER_MESSAGES: Final = 2**60
#: A keypair never seals or opens counter >= this (WireGuard paper: 2**64 - 2**13 - 1),
#: leaving room below 2**64 for the replay window.
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1
#: The initiator rekeys a keypair this old, in seconds (WireGuard).
REKEY_AFTER_TIME: Final = 120.0
#: A keypair this old is dead for sealing and opening (WireGuard).
REJECT_AFTER_TIME: Final = 180.0
#: A handshake unanswered this long is retried (WireGuard); used for the responder margin.
REKEY_TIMEOUT: Final = 5.0
#: Send a keepalive after this long without sending in reply to data (WireGuard).
KEEPALIVE_TIMEOUT: Final = 10.0
#: Give up retrying a handshake after this long (WireGuard); for the peer layer.
REKEY_ATTEMPT_TIME: Final = 90.0

#: Size of each ChaCha20-Poly1305 transport key.
KEY_SIZE: Final = 32
#: The IETF nonce is 4 zero bytes then the counter as u64 LE.
_NONCE_PREFIX: Final = b"\x00\x00\x00\x00"
_COUNTER = struct.Struct("<Q")


class NoSessionKeys(LocalError):
    """There is no current keypair that may still seal: a handshake is needed."""


class InvalidKeypair(LocalError):
    """A keypair was built or installed with bad values (key size, index clash)."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Rekey and reject thresholds; defaults are WireGuard's.  Tests pass small ones."""

    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT

    @property
    def responder_rekey_after_time(self) -> float:
        """Age at which the responder of a keypair asks for a rekey (165 s by default)."""
        return self.reject_after_time - self.keepalive_timeout - self.rekey_timeout


@dataclass(eq=False, slots=True)
class Keypair:
    """Transport keys from one handshake, with their send counter and replay window.

    ``send_key``/``recv_key`` come from the Noise split (initiator: first key sends;
    responder: second key sends).  ``local_index`` is what the peer puts in DATA packets
    it sends us; ``remote_index`` is what we put in packets we send it.
    """

    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    local_index: int
    remote_index: int
    created_at: float
    is_initiator: bool
    send_counter: int = 0
    replay: ReplayWindow = field(default_factory=ReplayWindow, repr=False)

    def __post_init__(self) -> None:
        for key in (self.send_key, self.recv_key):
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                raise InvalidKeypair(f"transport keys must be {KEY_SIZE} bytes")
        for index in (self.local_index, self.remote_index):
            if not 0 <= index <= wire.MAX_INDEX:
                raise InvalidKeypair("session indices must fit in a u32")

    @classmethod
    def from_split(
        cls,
        initiator_to_responder: bytes,
        responder_to_initiator: bytes,
        *,
        is_initiator: bool,
        local_index: int,
        remote_index: int,
        now: float,
    ) -> Keypair:
        """Build from the two Noise ``split()`` keys, in split order, picking directions."""
        if is_initiator:
            send, recv = initiator_to_responder, responder_to_initiator
        else:
            send, recv = responder_to_initiator, initiator_to_responder
        return cls(send, recv, local_index, remote_index, now, is_initiator)

    def age(self, now: float) -> float:
        return now - self.created_at

    def wipe(self) -> None:
        """Drop the keys; the keypair can neither seal nor open afterwards."""
        self.send_key = bytes(KEY_SIZE)
        self.recv_key = bytes(KEY_SIZE)
        self.send_counter = REJECT_AFTER_MESSAGES
        self.created_at = float("-inf")


class Session:
    """The keypairs shared with one peer.  Sans-IO: bytes and ``now`` in, bytes out.

    ``current``, ``previous`` and ``next`` may be read (e.g. for status); change them
    only through :meth:`install`, :meth:`expire` and :meth:`open_untrusted`.
    """

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits if limits is not None else SessionLimits()
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None

    def __repr__(self) -> str:
        return f"Session(current={self.current!r}, previous={self.previous!r}, next={self.next!r})"

    def _keypairs(self) -> tuple[Keypair, ...]:
        return tuple(kp for kp in (self.current, self.previous, self.next) if kp is not None)

    def local_indices(self) -> frozenset[int]:
        """The receiver indices under which DATA for this session may arrive."""
        return frozenset(kp.local_index for kp in self._keypairs())

    def _dead(self, keypair: Keypair, now: float) -> bool:
        return keypair.age(now) >= self.limits.reject_after_time

    def _usable_for_sending(self, now: float) -> Keypair | None:
        kp = self.current
        if kp is None or self._dead(kp, now):
            return None
        if kp.send_counter >= self.limits.reject_after_messages:
            return None
        return kp

    def can_send(self, now: float) -> bool:
        """Whether :meth:`seal` would succeed now."""
        return self._usable_for_sending(now) is not None

    def install(self, keypair: Keypair, now: float) -> list[int]:
        """Add a freshly handshaken keypair; return the local indices now retired.

        Initiator: ``keypair`` becomes current at once.  Responder: it waits in ``next``
        until the peer's first DATA under it arrives (see the module docstring), so the
        initiator should send at least a keepalive right after the handshake.
        """
        if keypair.local_index in self.local_indices():
            raise InvalidKeypair("local_index already in use by this session")
        retired: list[Keypair] = []
        if keypair.is_initiator:
            if self.next is not None:
                # A pending next outranks the old current: keep it to open late packets.
                self._retire(self.previous, retired)
                self._retire(self.current, retired)
                self.previous, self.next = self.next, None
            else:
                self._retire(self.previous, retired)
                self.previous = self.current
            self.current = keypair
        else:
            self._retire(self.next, retired)
            self._retire(self.previous, retired)
            self.next, self.previous = keypair, None
        retired_indices = [kp.local_index for kp in retired]
        retired_indices.extend(self.expire(now))
        return retired_indices

    @staticmethod
    def _retire(keypair: Keypair | None, retired: list[Keypair]) -> None:
        if keypair is not None:
            keypair.wipe()
            retired.append(keypair)

    def expire(self, now: float) -> list[int]:
        """Drop and wipe keypairs past REJECT_AFTER_TIME; return their local indices."""
        retired: list[Keypair] = []
        if self.current is not None and self._dead(self.current, now):
            self._retire(self.current, retired)
            self.current = None
        if self.previous is not None and self._dead(self.previous, now):
            self._retire(self.previous, retired)
            self.previous = None
        if self.next is not None and self._dead(self.next, now):
            self._retire(self.next, retired)
            self.next = None
        return [kp.local_index for kp in retired]

    def get_timer(self) -> float | None:
        """When the next held keypair dies: call :meth:`expire` then.  None if empty."""
        deaths = [kp.created_at + self.limits.reject_after_time for kp in self._keypairs()]
        return min(deaths, default=None)

    def needs_rekey(self, now: float) -> bool:
        """Should this side start a handshake to replace the current keypair?

        Poll it after sending and receiving, as WireGuard does.  It stays True until a
        new keypair is installed; retrying every REKEY_TIMEOUT and giving up after
        REKEY_ATTEMPT_TIME is the handshake layer's job.  Without any current keypair it
        is False: whether to handshake then depends on pending data (:meth:`can_send`).
        """
        kp = self.current
        if kp is None:
            return False
        if kp.send_counter >= self.limits.rekey_after_messages:
            return True
        if kp.is_initiator:
            return kp.age(now) >= self.limits.rekey_after_time
        return kp.age(now) >= self.limits.responder_rekey_after_time

    def seal(self, plaintext: bytes, now: float) -> bytes:
        """Encrypt ``plaintext`` (b"" for a keepalive) into a DATA packet under current."""
        kp = self._usable_for_sending(now)
        if kp is None:
            raise NoSessionKeys("no current keypair may seal; a handshake is needed")
        counter = kp.send_counter
        kp.send_counter = counter + 1
        header = wire.data_header(kp.remote_index, counter)
        nonce = _NONCE_PREFIX + _COUNTER.pack(counter)
        ciphertext = crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(plaintext), header, nonce, kp.send_key
        )
        return wire.DataMessage(kp.remote_index, counter, ciphertext).encode()

    def _find(self, local_index: int) -> Keypair | None:
        for kp in self._keypairs():
            if kp.local_index == local_index:
                return kp
        return None

    def open_untrusted(self, packet: bytes, now: float) -> bytes:
        """Authenticate and decrypt a DATA packet; raise BadFrame(reason) if it fails.

        Returns the plaintext (b"" for a keepalive).  The first authentic packet under
        ``next`` promotes it to current.
        """
        msg = wire.parse_untrusted(packet)
        if not isinstance(msg, wire.DataMessage):
            raise BadFrame("not a DATA packet")
        kp = self._find(msg.receiver_index)
        if kp is None:
            raise BadFrame("unknown receiver index")
        if self._dead(kp, now):
            raise BadFrame("keypair expired")
        if msg.counter >= self.limits.reject_after_messages:
            raise BadFrame("counter past REJECT_AFTER_MESSAGES")
        if not kp.replay.check(msg.counter):
            raise BadFrame("replayed or too old counter")
        nonce = _NONCE_PREFIX + _COUNTER.pack(msg.counter)
        try:
            plaintext = crypto_aead_chacha20poly1305_ietf_decrypt(
                msg.ciphertext, msg.header(), nonce, kp.recv_key
            )
        except nacl.exceptions.CryptoError:
            raise BadFrame("authentication failed") from None
        if not kp.replay.update(msg.counter):
            raise BadFrame("replayed or too old counter")
        if kp is self.next:
            self._confirm_next()
        return plaintext

    def _confirm_next(self) -> None:
        """The peer proved it holds ``next``: rotate it in (WireGuard's received_with_keypair).

        ``previous`` is always None here (installing into ``next`` clears it, and an
        initiator install empties ``next``), so no index is retired by this rotation.
        """
        if self.previous is not None:  # unreachable under install's rules; stay safe
            self.previous.wipe()
        self.previous, self.current, self.next = self.current, self.next, None
