"""SymmetricState and HandshakeState of the Noise Protocol Framework (rev. 34, 5.2-5.3).

Theory of operation: a HandshakeState walks the token table of one pattern
(``_patterns.py``), one message at a time, alternating writer and reader, the
initiator first.  Every token updates the SymmetricState: the chaining key ``ck``
absorbs DH outputs and PSKs, the transcript hash ``h`` absorbs everything sent, so
any change to any byte of any message makes a later decryption fail.  When the
last message has been written or read the handshake is ``complete`` and
:meth:`HandshakeState.split` yields the two transport CipherStates.

Invariants and choices:
- It is always clear whose turn it is; writing or reading out of turn, splitting
  early or twice, or building a state without the keys its pattern needs is the
  caller's fault and raises LocalError before anything changes.
- A message from the network that fails (bad length, failed tag, small-order key)
  raises NoiseError and leaves the state *failed*: every later call raises
  LocalError.  A half-absorbed message cannot be rolled back, and a responder
  should drop the attempt and start a new HandshakeState anyway.
- NoiseError says only that the message was rejected, never which check failed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from p2pd.errors import LocalError
from p2pd.noise._crypto import (
    DHLEN,
    HASHLEN,
    KEYLEN,
    MAX_MESSAGE_LEN,
    PSKLEN,
    TAGLEN,
    CipherState,
    NoiseError,
    Rng,
    dh,
    hash_,
    hkdf,
    keypair_from_private,
)
from p2pd.noise._patterns import EPHEMERAL, PSK, STATIC, parse_protocol_name

_REJECTED = "noise: handshake message rejected"  # The one thing a bad message tells its sender.


class SymmetricState:
    """The chaining key, the transcript hash and the current handshake CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = hash_(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k, _ = hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2, _ = hkdf(self.ck, b"", 2)
        return CipherState(k1[:KEYLEN]), CipherState(k2[:KEYLEN])


def _check_key(what: str, key: bytes | None) -> None:
    if key is not None and (not isinstance(key, bytes) or len(key) != DHLEN):
        raise LocalError(f"noise: {what} must be {DHLEN} bytes")


class HandshakeState:
    """One side of one Noise handshake; see the module docstring for the rules."""

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        s: bytes | None = None,
        e: bytes | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        psks: Sequence[bytes] = (),
        rng: Rng = os.urandom,
    ) -> None:
        pattern = parse_protocol_name(protocol_name)
        for what, key in (("s", s), ("e", e), ("rs", rs), ("re", re)):
            _check_key(what, key)
        if len(psks) != pattern.psk_count:
            raise LocalError(
                f"noise: {pattern.name} needs {pattern.psk_count} PSK(s), got {len(psks)}"
            )
        if any(not isinstance(p, bytes) or len(p) != PSKLEN for p in psks):
            raise LocalError(f"noise: every PSK must be {PSKLEN} bytes")
        self._initiator = initiator
        self._messages = pattern.messages
        self._psk_mode = pattern.has_psk
        self._psks = list(psks)
        self._rng = rng
        self._s = keypair_from_private(s) if s is not None else None
        self._e = keypair_from_private(e) if e is not None else None
        self._rs = rs
        self._re = re
        self._index = 0
        self._failed = False
        self._split_done = False
        self._sym = SymmetricState(protocol_name.encode("ascii"))
        self._sym.mix_hash(prologue)
        # Pre-messages are hashed initiator's first, whichever side we are.
        for token in pattern.pre_initiator:
            self._mix_pre_message(token, local=initiator)
        for token in pattern.pre_responder:
            self._mix_pre_message(token, local=not initiator)
        for i, message in enumerate(self._messages):
            if STATIC in message and self._writes(i) and self._s is None:
                raise LocalError(f"noise: {pattern.name} needs a local static key (s)")

    def _mix_pre_message(self, token: str, *, local: bool) -> None:
        if token == STATIC:
            public = (self._s[1] if self._s else None) if local else self._rs
        else:
            public = (self._e[1] if self._e else None) if local else self._re
        if public is None:
            which = token if local else "r" + token
            raise LocalError(f"noise: this pattern needs the pre-message key {which!r}")
        self._sym.mix_hash(public)
        if token == EPHEMERAL and self._psk_mode:
            self._sym.mix_key(public)

    def _writes(self, index: int) -> bool:
        return (index % 2 == 0) == self._initiator

    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise LocalError("noise: this handshake already failed; start a new one")
        if self._index >= len(self._messages):
            raise LocalError("noise: the handshake is already complete")
        if self._writes(self._index) != writing:
            whose = "the peer's" if writing else "our"
            raise LocalError(f"noise: it is {whose} turn to send")

    @property
    def complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._index >= len(self._messages) and not self._failed

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash ``h`` (channel binding); only once complete."""
        if not self.complete:
            raise LocalError("noise: the handshake hash is only final once complete")
        return self._sym.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once given or received."""
        return self._rs

    def _dh(self, token: str) -> bytes:
        # In "xy", x names the initiator's key and y the responder's.
        local_t, remote_t = (token[0], token[1]) if self._initiator else (token[1], token[0])
        local = self._e if local_t == EPHEMERAL else self._s
        remote = self._re if remote_t == EPHEMERAL else self._rs
        if local is None or remote is None:
            raise LocalError(f"noise: key missing for the {token!r} token")
        return dh(local[0], remote)

    def _message_len(self, payload_len: int) -> int:
        keyed = self._sym.cipher.has_key()
        size = 0
        for token in self._messages[self._index]:
            if token == EPHEMERAL:
                size += DHLEN
                keyed = keyed or self._psk_mode
            elif token == STATIC:
                size += DHLEN + (TAGLEN if keyed else 0)
            else:
                keyed = True
        return size + payload_len + (TAGLEN if keyed else 0)

    def write_message(self, payload: bytes = b"") -> bytes:
        """Return the next handshake message, carrying ``payload``."""
        self._check_turn(writing=True)
        if self._message_len(len(payload)) > MAX_MESSAGE_LEN:
            raise LocalError(f"noise: a handshake message may not exceed {MAX_MESSAGE_LEN} bytes")
        sym = self._sym
        out: list[bytes] = []
        try:
            for token in self._messages[self._index]:
                if token == EPHEMERAL:
                    if self._e is None:
                        self._e = keypair_from_private(self._rng(DHLEN))
                    public = self._e[1]
                    out.append(public)
                    sym.mix_hash(public)
                    if self._psk_mode:
                        sym.mix_key(public)
                elif token == STATIC:
                    assert self._s is not None  # checked in __init__
                    out.append(sym.encrypt_and_hash(self._s[1]))
                elif token == PSK:
                    sym.mix_key_and_hash(self._psks.pop(0))
                else:
                    sym.mix_key(self._dh(token))
            out.append(sym.encrypt_and_hash(payload))
        except NoiseError:
            self._failed = True  # e.g. a small-order rs from the caller
            raise
        self._index += 1
        return b"".join(out)

    def read_message_untrusted(self, message: bytes) -> bytes:
        """Process the peer's next handshake message and return its payload.

        Raises NoiseError if the message is malformed or fails authentication;
        the state is then failed and must be discarded.
        """
        self._check_turn(writing=False)
        try:
            payload = self._read(message)
        except NoiseError:
            self._failed = True
            raise NoiseError(_REJECTED) from None
        self._index += 1
        return payload

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError(_REJECTED)
        if not isinstance(message, bytes):  # a driver's memoryview or bytearray
            message = bytes(message)
        sym = self._sym
        pos = 0
        for token in self._messages[self._index]:
            if token == EPHEMERAL:
                end = pos + DHLEN
                if end > len(message):
                    raise NoiseError(_REJECTED)
                self._re = message[pos:end]
                sym.mix_hash(self._re)
                if self._psk_mode:
                    sym.mix_key(self._re)
                pos = end
            elif token == STATIC:
                end = pos + DHLEN + (TAGLEN if sym.cipher.has_key() else 0)
                if end > len(message):
                    raise NoiseError(_REJECTED)
                self._rs = sym.decrypt_and_hash(message[pos:end])
                pos = end
            elif token == PSK:
                sym.mix_key_and_hash(self._psks.pop(0))
            else:
                sym.mix_key(self._dh(token))
        return sym.decrypt_and_hash(message[pos:] if pos else message)

    def split(self) -> tuple[CipherState, CipherState]:
        """Return (initiator->responder, responder->initiator) CipherStates; once."""
        if not self.complete:
            raise LocalError("noise: split() before the handshake is complete")
        if self._split_done:
            raise LocalError("noise: split() may be called only once (nonce reuse otherwise)")
        self._split_done = True
        pair = self._sym.split()
        self._e = None
        return pair
