"""Handshake patterns (Noise rev. 34, sections 7 and 9) and protocol-name parsing.

Theory of operation: a pattern is data, not code.  Each entry of :data:`_PATTERNS`
lists the pre-messages of each side and the token sequence of every handshake
message; messages alternate, the initiator's first.  PSK modifiers (``psk0``,
``psk2``, ``psk0+psk2`` ...) are applied to that data when a name is parsed, so the
state machine in ``_state.py`` runs any pattern from the same loop.  The table
covers the one-way patterns (7.4), the fundamental interactive patterns (7.5)
and the deferred patterns (7.6); fallback is not supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from p2pd.errors import LocalError

SUPPORTED_DH = "25519"  # The only DH function implemented here (X25519).
SUPPORTED_CIPHER = "ChaChaPoly"  # The only AEAD implemented here (ChaCha20-Poly1305 IETF).
SUPPORTED_HASH = "BLAKE2b"  # The only hash implemented here (BLAKE2b-512).
_NAME_PARTS = 5  # "Noise", pattern, DH, cipher, hash, separated by "_" (spec 8).

EPHEMERAL = "e"  # Token: send/receive an ephemeral public key in clear.
STATIC = "s"  # Token: send/receive a static public key, encrypted once a key exists.
PSK = "psk"  # Token: mix the next pre-shared key (spec 9).
DH_TOKENS = frozenset({"ee", "es", "se", "ss"})  # Tokens that mix a DH output into the key.
_MESSAGE_TOKENS = DH_TOKENS | {EPHEMERAL, STATIC, PSK}

# name: (initiator pre-message, responder pre-message, messages separated by "|").
_PATTERNS: dict[str, tuple[str, str, str]] = {
    # One-way (7.4): a single message, initiator to responder.
    "N": ("", "s", "e, es"),
    "K": ("s", "s", "e, es, ss"),
    "X": ("", "s", "e, es, s, ss"),
    # Fundamental interactive (7.5).
    "NN": ("", "", "e | e, ee"),
    "NK": ("", "s", "e, es | e, ee"),
    "NX": ("", "", "e | e, ee, s, es"),
    "KN": ("s", "", "e | e, ee, se"),
    "KK": ("s", "s", "e, es, ss | e, ee, se"),
    "KX": ("s", "", "e | e, ee, se, s, es"),
    "XN": ("", "", "e | e, ee | s, se"),
    "XK": ("", "s", "e, es | e, ee | s, se"),
    "XX": ("", "", "e | e, ee, s, es | s, se"),
    "IN": ("", "", "e, s | e, ee, se"),
    "IK": ("", "s", "e, es, s, ss | e, ee, se"),
    "IX": ("", "", "e, s | e, ee, se, s, es"),
    # Deferred (7.6): a "1" defers that side's authentication DH by one message.
    "NK1": ("", "s", "e | e, ee, es"),
    "NX1": ("", "", "e | e, ee, s | es"),
    "X1N": ("", "", "e | e, ee | s | se"),
    "X1K": ("", "s", "e, es | e, ee | s | se"),
    "XK1": ("", "s", "e | e, ee, es | s, se"),
    "X1K1": ("", "s", "e | e, ee, es | s | se"),
    "X1X": ("", "", "e | e, ee, s, es | s | se"),
    "XX1": ("", "", "e | e, ee, s | es, s, se"),
    "X1X1": ("", "", "e | e, ee, s | es, s | se"),
    "K1N": ("s", "", "e | e, ee | se"),
    "K1K": ("s", "s", "e, es | e, ee | se"),
    "KK1": ("s", "s", "e | e, ee, se, es"),
    "K1K1": ("s", "s", "e | e, ee, es | se"),
    "K1X": ("s", "", "e | e, ee, s, es | se"),
    "KX1": ("s", "", "e | e, ee, se, s | es"),
    "K1X1": ("s", "", "e | e, ee, s | se, es"),
    "I1N": ("", "", "e, s | e, ee | se"),
    "I1K": ("", "s", "e, es, s | e, ee | se"),
    "IK1": ("", "s", "e, s | e, ee, se, es"),
    "I1K1": ("", "s", "e, s | e, ee, es | se"),
    "I1X": ("", "", "e, s | e, ee, s, es | se"),
    "IX1": ("", "", "e, s | e, ee, se, s | es"),
    "I1X1": ("", "", "e, s | e, ee, s | se, es"),
}

_PATTERN_RE = re.compile(r"([NKXI]1?(?:[NKX]1?)?)(.*)")
_PSK_RE = re.compile(r"psk(\d+)")


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A parsed pattern: pre-message tokens per side and each message's tokens."""

    name: str
    pre_initiator: tuple[str, ...]
    pre_responder: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]
    psk_count: int

    @property
    def has_psk(self) -> bool:
        return self.psk_count > 0


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _apply_psks(name: str, modifiers: str, messages: list[list[str]]) -> int:
    """Insert psk tokens for ``modifiers`` ("psk0+psk2"); return how many were added."""
    if not modifiers:
        return 0
    seen: set[int] = set()
    for modifier in modifiers.split("+"):
        match = _PSK_RE.fullmatch(modifier)
        if match is None:
            raise LocalError(f"unsupported Noise pattern modifier {modifier!r} in {name!r}")
        position = int(match.group(1))
        if position in seen or position > len(messages):
            raise LocalError(f"invalid psk position {position} in Noise pattern {name!r}")
        seen.add(position)
        if position == 0:
            messages[0].insert(0, PSK)
        else:
            messages[position - 1].append(PSK)
    return len(seen)


@cache
def parse_pattern(name: str) -> HandshakePattern:
    """Parse a pattern name with modifiers, e.g. ``XXpsk3``; LocalError if unknown."""
    match = _PATTERN_RE.fullmatch(name)
    if match is None or match.group(1) not in _PATTERNS:
        raise LocalError(f"unknown Noise handshake pattern {name!r}")
    pre_i, pre_r, body = _PATTERNS[match.group(1)]
    messages = [list(_tokens(m)) for m in body.split("|")]
    assert all(t in _MESSAGE_TOKENS for m in messages for t in m), name
    psk_count = _apply_psks(name, match.group(2), messages)
    return HandshakePattern(
        name=name,
        pre_initiator=_tokens(pre_i),
        pre_responder=_tokens(pre_r),
        messages=tuple(tuple(m) for m in messages),
        psk_count=psk_count,
    )


def parse_protocol_name(protocol_name: str) -> HandshakePattern:
    """Check ``Noise_<pattern>_25519_ChaChaPoly_BLAKE2b`` and return its pattern."""
    parts = protocol_name.split("_")
    if len(parts) != _NAME_PARTS or parts[0] != "Noise":
        raise LocalError(f"malformed Noise protocol name {protocol_name!r}")
    _, pattern, dh_name, cipher_name, hash_name = parts
    for kind, got, want in (
        ("DH function", dh_name, SUPPORTED_DH),
        ("cipher", cipher_name, SUPPORTED_CIPHER),
        ("hash", hash_name, SUPPORTED_HASH),
    ):
        if got != want:
            raise LocalError(f"unsupported Noise {kind} {got!r}: only {want!r} is implemented")
    return parse_pattern(pattern)
