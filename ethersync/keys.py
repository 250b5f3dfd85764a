"""Keys of an EtherSync space (from the passphrase) and of a device (random, kept 0600).

Theory of operation
-------------------
Two kinds of key, for two questions:

* **Space keys** answer "is this a member of the space?".  The passphrase derivation
  (:mod:`p2pd.derive`) already yields a public ``space_id`` (16 bytes) and a secret
  ``space_key`` (32 bytes), distinct from every session key.  Keyed BLAKE2b with one
  ASCII context per purpose splits ``space_key`` further, as :mod:`p2pd.subkeys` does for
  ``tag_key``, so one leaked purpose key reveals nothing of another:

  ============== ============================== ==========================================
  field          context                        use
  ============== ============================== ==========================================
  envelope_key   ``ethersync v1 envelope key``  XChaCha20-Poly1305 of envelopes
  frame_tag_key  ``ethersync v1 frame tag key`` early-drop tag of gossip frames
  chunk_key      ``ethersync v1 chunk key``     XChaCha20-Poly1305 of file chunks
  nonce_key      ``ethersync v1 chunk nonce``   keyed BLAKE2b (a PRF) making chunk nonces
  ============== ============================== ==========================================

* **Device keys** answer "which member wrote this?".  Each state directory holds one
  Ed25519 signing key, random and never derived from the passphrase, so knowing the
  passphrase does not let anyone sign as an existing device.  Its 32-byte seed lives in
  ``STATE_DIR/ethersync-device.key``, created and read with the helpers of
  :mod:`p2pd.identity` (``O_CREAT|O_EXCL``, mode 0600, fsync, link-not-replace; a file
  readable by others is refused).  An X25519 private key and an Ed25519 seed are both
  32 uniformly random bytes, so the identity helper's fresh key is a valid seed.
  Authors are shown as :func:`p2pd.identity.fingerprint` of their public key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing

from p2pd.derive import Params, subkey
from p2pd.errors import LocalError
from p2pd.identity import fingerprint, load_or_create_secret

#: Contexts, one per purpose; never reuse one for another purpose.
ENVELOPE_KEY_CONTEXT = b"ethersync v1 envelope key"
FRAME_TAG_KEY_CONTEXT = b"ethersync v1 frame tag key"
CHUNK_KEY_CONTEXT = b"ethersync v1 chunk key"
NONCE_KEY_CONTEXT = b"ethersync v1 chunk nonce"

#: Size of every symmetric key here (XChaCha20-Poly1305 and BLAKE2b keys).
KEY_SIZE = 32
#: Size of the public space id (as :mod:`p2pd.derive` makes it).
SPACE_ID_SIZE = 16
#: Size of an Ed25519 public key and of its private seed.
AUTHOR_SIZE = 32
#: Size of an Ed25519 signature.
SIGNATURE_SIZE = 64
#: File name of the device signing key inside the state directory.
DEVICE_KEY_FILE = "ethersync-device.key"


@dataclass(frozen=True, slots=True)
class SpaceKeys:
    """Everything a member needs to read and write one space. Keys never appear in ``repr``."""

    space_id: bytes
    envelope_key: bytes = field(repr=False)
    frame_tag_key: bytes = field(repr=False)
    chunk_key: bytes = field(repr=False)
    nonce_key: bytes = field(repr=False)

    @classmethod
    def from_space_key(cls, space_id: bytes, space_key: bytes) -> SpaceKeys:
        """Split ``space_key`` by purpose (pure and cheap)."""
        if len(space_id) != SPACE_ID_SIZE:
            raise LocalError(f"a space id must be {SPACE_ID_SIZE} bytes, got {len(space_id)}")
        if len(space_key) != KEY_SIZE:
            raise LocalError(f"a space key must be {KEY_SIZE} bytes, got {len(space_key)}")
        return cls(
            space_id=space_id,
            envelope_key=subkey(space_key, ENVELOPE_KEY_CONTEXT, KEY_SIZE),
            frame_tag_key=subkey(space_key, FRAME_TAG_KEY_CONTEXT, KEY_SIZE),
            chunk_key=subkey(space_key, CHUNK_KEY_CONTEXT, KEY_SIZE),
            nonce_key=subkey(space_key, NONCE_KEY_CONTEXT, KEY_SIZE),
        )

    @classmethod
    def from_params(cls, params: Params) -> SpaceKeys:
        """The space keys of a derived passphrase."""
        return cls.from_space_key(params.space_id, params.space_key)


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """An Ed25519 signing key; the seed never appears in ``repr``."""

    seed: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceKey:
        if len(seed) != AUTHOR_SIZE:
            raise LocalError(f"an Ed25519 seed must be {AUTHOR_SIZE} bytes, got {len(seed)}")
        public = bytes(nacl.signing.SigningKey(seed).verify_key)
        return cls(seed=seed, public=public)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``message``."""
        return bytes(nacl.signing.SigningKey(self.seed).sign(message).signature)


def load_or_create_device(state_dir: Path) -> DeviceKey:
    """The device key stored in ``state_dir``, creating it on first use.

    Two processes racing to create it both end up with the one that was linked first.
    """
    return DeviceKey.from_seed(load_or_create_secret(state_dir, DEVICE_KEY_FILE, "device key"))
