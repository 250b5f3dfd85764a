"""The node's long-term X25519 identity: created once, kept 0600, shown as a fingerprint.

Why: the passphrase authenticates *membership* (anyone who knows it can complete the
handshake); the static key says *which* member is on the other end, so users can compare
fingerprints out of band and notice a new device.  The key is not derived from the
passphrase, so leaking a passphrase does not let anyone impersonate an existing device.

The private key file (``STATE_DIR/identity.key``, 32 raw bytes) is created with
``O_CREAT|O_EXCL`` and mode 0600 in one step, so it is never readable by others, not even
for an instant; a file that is readable by group or others is refused.  The fingerprint is
BLAKE2b-160 of the public key in RFC 4648 base32, in eight groups of four, which is easy to
read aloud and compare.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from p2pd.errors import StateDirError
from p2pd.noise import generate_keypair, keypair_from_private
from p2pd.paths import ensure_state_dir

#: File name of the private key inside the state directory.
IDENTITY_FILE = "identity.key"
#: Size of an X25519 private key.
PRIVATE_KEY_SIZE = 32
#: Bytes of BLAKE2b over the public key shown as the fingerprint (160 bits).
FINGERPRINT_BYTES = 20
#: Characters per group in the printed fingerprint.
FINGERPRINT_GROUP = 4


def fingerprint(public_key: bytes) -> str:
    """``ABCD-EFGH-...``: base32 of BLAKE2b-160(public key), 8 groups of 4."""
    digest = hashlib.blake2b(public_key, digest_size=FINGERPRINT_BYTES).digest()
    text = base64.b32encode(digest).decode("ascii")
    return "-".join(text[i : i + FINGERPRINT_GROUP] for i in range(0, len(text), FINGERPRINT_GROUP))


@dataclass(frozen=True, slots=True)
class Identity:
    """A static X25519 keypair. The private half never appears in ``repr``."""

    private: bytes = field(repr=False)
    public: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    @classmethod
    def from_private(cls, private: bytes) -> Identity:
        priv, pub = keypair_from_private(private)
        return cls(private=priv, public=pub)

    @classmethod
    def generate(cls) -> Identity:
        priv, pub = generate_keypair()
        return cls(private=priv, public=pub)


def _read_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StateDirError(f"cannot read identity {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StateDirError(
                f"identity {path} is accessible by other users; run: chmod 600 {path}"
            )
        data = handle.read(PRIVATE_KEY_SIZE + 1)
    if len(data) != PRIVATE_KEY_SIZE:
        raise StateDirError(f"identity {path} is damaged (expected {PRIVATE_KEY_SIZE} bytes)")
    return data


def _create_key(path: Path) -> bytes | None:
    """Write a new key atomically; ``None`` if another process created one first."""
    identity = Identity.generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.private)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if it exists: never replace an identity
        except FileExistsError:
            return None
    finally:
        tmp.unlink(missing_ok=True)
    return identity.private


def load_or_create_secret(state_dir: Path, file_name: str, what: str) -> bytes:
    """The 32-byte random secret in ``state_dir/file_name``, created (0600) on first use.

    Shared by every per-device key (the node identity, the EtherSync device key): two
    processes racing to create one both end up with the one that was linked first.
    """
    ensure_state_dir(state_dir)
    path = state_dir / file_name
    if not path.exists():
        try:
            created = _create_key(path)
        except OSError as exc:
            raise StateDirError(f"cannot create {what} {path}: {exc.strerror}") from None
        if created is not None:
            return created
    return _read_key(path)


def load_or_create(state_dir: Path) -> Identity:
    """The identity stored in ``state_dir``, creating it on first use."""
    return Identity.from_private(load_or_create_secret(state_dir, IDENTITY_FILE, "identity"))
