"""Turn a shared passphrase into every parameter two peers need, with nothing exchanged first.

Theory of operation
-------------------
Both peers run the same pure function on the same passphrase and get the same frozen
:class:`Params`: the UDP port they meet on, the Noise pre-shared key, the keys that let a
responder drop foreign packets before any public-key work, the EtherSync space id and key,
and the seed of the onion-service identity.

1. The passphrase is normalised (Unicode NFKC, surrounding whitespace stripped) so that
   the same words typed on two keyboards give the same bytes.
2. A weak passphrase is refused: every public value derived from it (the port, the tags,
   the onion address) lets an observer test guesses offline, so the only defence is a
   passphrase with enough entropy behind a costly KDF.  Strength is estimated with zxcvbn.
3. Argon2id (memory-hard, PyNaCl/libsodium) with a fixed, versioned salt stretches the
   passphrase into a 32-byte master key.  The salt is fixed on purpose: a random salt
   would have to be exchanged, and there is nobody to exchange it with.
4. Keyed BLAKE2b with a distinct ASCII context per purpose splits the master key into
   independent sub-keys, so learning one (a public tag, say) reveals nothing of another.

The exact bytes are specified in docs/protocol.md ("Derivation"); known-answer vectors
live in tests/vectors/derive.json.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import nacl.pwhash.argon2id as _argon2id
import zxcvbn as _zxcvbn

from p2pd.errors import WeakPassphraseError

#: Version of the derivation; changing any constant below means a new version.
DERIVATION_VERSION = 1
#: Fixed 16-byte Argon2id salt (exactly the ASCII bytes below), versioned.
ARGON2_SALT = b"p2pd/v1/argon2id"
#: Argon2id passes: 3 with 128 MiB took about 0.23 s on the reference 2-core machine,
#: inside the 0.1-0.5 s budget (costly for a guesser, bearable at start-up).
ARGON2_OPSLIMIT = 3
#: Argon2id memory: 128 MiB, to make GPU/ASIC guessing expensive.
ARGON2_MEMLIMIT = 128 * 1024 * 1024
#: Length of the Argon2id output (the master key).
MASTER_KEY_SIZE = 32
#: Lowest port of the IANA dynamic range, where the rendezvous port is drawn.
PORT_BASE = 49152
#: Size of the dynamic range 49152-65535.
PORT_SPAN = 65536 - PORT_BASE
#: Shortest passphrase accepted at all, in characters after normalisation.
MIN_PASSPHRASE_LENGTH = 8
#: Least zxcvbn guess estimate accepted, as log10: 10^12 guesses (about 40 bits). At about
#: 0.23 s of one core per Argon2id guess that is thousands of core-years to exhaust.
MIN_GUESSES_LOG10 = 12.0

#: Longest input zxcvbn accepts; longer passphrases are judged on this many characters.
ZXCVBN_MAX_LENGTH = 72

# One ASCII context per sub-key; never reuse one for another purpose.
CTX_PSK = b"p2pd v1 noise psk"
CTX_PORT = b"p2pd v1 port"
CTX_RENDEZVOUS = b"p2pd v1 rendezvous id"
CTX_LAN_KEY = b"p2pd v1 lan beacon key"
CTX_TAG_KEY = b"p2pd v1 tag key"
CTX_MAC1_KEY = b"p2pd v1 mac1 key"
CTX_COOKIE_KEY = b"p2pd v1 cookie key"
CTX_SPACE_ID = b"p2pd v1 space id"
CTX_SPACE_KEY = b"p2pd v1 space key"
CTX_ONION_SEED = b"p2pd v1 onion seed"


@dataclass(frozen=True, slots=True)
class Params:
    """Everything derived from one passphrase. Secret fields never appear in ``repr``."""

    version: int
    port: int
    rendezvous_id: bytes
    space_id: bytes
    psk: bytes = field(repr=False)
    lan_key: bytes = field(repr=False)
    tag_key: bytes = field(repr=False)
    mac1_key: bytes = field(repr=False)
    cookie_key: bytes = field(repr=False)
    space_key: bytes = field(repr=False)
    onion_seed: bytes = field(repr=False)

    def public(self) -> dict[str, Any]:
        """The values that are safe to show or send: no key, no passphrase."""
        return {
            "version": self.version,
            "port": self.port,
            "rendezvous_id": self.rendezvous_id.hex(),
            "space_id": self.space_id.hex(),
        }


def normalize(passphrase: str) -> str:
    """NFKC-normalise and strip surrounding whitespace, as every peer must."""
    return unicodedata.normalize("NFKC", passphrase).strip()


def check_strength(normalized: str) -> None:
    """Raise :class:`WeakPassphraseError` when the passphrase is too easy to guess.

    The message tells the user what to do, never what the passphrase was.
    """
    if not normalized:
        raise WeakPassphraseError("the passphrase is empty")
    if len(normalized) < MIN_PASSPHRASE_LENGTH:
        raise WeakPassphraseError(
            f"the passphrase is too short (at least {MIN_PASSPHRASE_LENGTH} characters); "
            "use four or more random words, e.g. from `p2pd phrase`"
        )
    # zxcvbn refuses inputs over 72 characters; judging the prefix only under-estimates.
    guesses_log10 = float(_zxcvbn.zxcvbn(normalized[:ZXCVBN_MAX_LENGTH])["guesses_log10"])
    if guesses_log10 < MIN_GUESSES_LOG10:
        raise WeakPassphraseError(
            "the passphrase is too easy to guess "
            f"(about 10^{guesses_log10:.0f} guesses, need 10^{MIN_GUESSES_LOG10:.0f}); "
            "anyone who sees the traffic can test guesses offline. "
            "Use four or more random words, e.g. from `p2pd phrase`"
        )


def subkey(master: bytes, context: bytes, size: int = 32) -> bytes:
    """``BLAKE2b(key=master, data=context, digest_size=size)``."""
    return hashlib.blake2b(context, key=master, digest_size=size).digest()


def stretch(normalized: str) -> bytes:
    """Argon2id over the normalised passphrase (UTF-8) with the fixed salt and costs."""
    return bytes(
        _argon2id.kdf(
            MASTER_KEY_SIZE,
            normalized.encode("utf-8"),
            ARGON2_SALT,
            opslimit=ARGON2_OPSLIMIT,
            memlimit=ARGON2_MEMLIMIT,
        )
    )


def params_from_master(master: bytes) -> Params:
    """Split the master key into the parameter set (pure and cheap)."""
    port_word = int.from_bytes(subkey(master, CTX_PORT, 8), "little")
    return Params(
        version=DERIVATION_VERSION,
        port=PORT_BASE + port_word % PORT_SPAN,
        rendezvous_id=subkey(master, CTX_RENDEZVOUS, 16),
        space_id=subkey(master, CTX_SPACE_ID, 16),
        psk=subkey(master, CTX_PSK),
        lan_key=subkey(master, CTX_LAN_KEY),
        tag_key=subkey(master, CTX_TAG_KEY),
        mac1_key=subkey(master, CTX_MAC1_KEY),
        cookie_key=subkey(master, CTX_COOKIE_KEY),
        space_key=subkey(master, CTX_SPACE_KEY),
        onion_seed=subkey(master, CTX_ONION_SEED),
    )


@lru_cache(maxsize=8)
def _derive_normalized(normalized: str) -> Params:
    return params_from_master(stretch(normalized))


def derive(passphrase: str, *, check: bool = True) -> Params:
    """Derive the parameter set of ``passphrase``.

    ``check=False`` skips the strength check; only known-answer tests use it, to pin the
    derivation of deliberately simple inputs.  Results are cached per process so one
    command that needs the parameters twice pays Argon2id once.
    """
    normalized = normalize(passphrase)
    if check:
        check_strength(normalized)
    elif not normalized:
        raise WeakPassphraseError("the passphrase is empty")
    return _derive_normalized(normalized)
