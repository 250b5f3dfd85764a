"""EtherSync: passphrase-derived spaces where messages and files spread by gossip.

The data layer: :mod:`ethersync.keys` (space and device keys), :mod:`ethersync.envelope`
(signed, sealed, content-named envelopes), :mod:`ethersync.store` (SQLite, ciphertext
only), :mod:`ethersync.chunks` and :mod:`ethersync.manifest` (files).  See docs/ethersync.md.
"""

from ethersync.chunks import CHUNK_SIZE, sanitize_filename, write_new_file
from ethersync.envelope import (
    KIND_FILE,
    KIND_MSG,
    Envelope,
    SealedEnvelope,
    envelope_id,
    open_untrusted,
    seal,
)
from ethersync.keys import DeviceKey, SpaceKeys, load_or_create_device
from ethersync.manifest import Assembler, Manifest, Offer, manifest_untrusted, publish_file
from ethersync.store import Counts, Retention, Store, StoredEnvelope, default_store_path
from p2pd.identity import fingerprint

__all__ = [
    "CHUNK_SIZE",
    "KIND_FILE",
    "KIND_MSG",
    "Assembler",
    "Counts",
    "DeviceKey",
    "Envelope",
    "Manifest",
    "Offer",
    "Retention",
    "SealedEnvelope",
    "SpaceKeys",
    "Store",
    "StoredEnvelope",
    "default_store_path",
    "envelope_id",
    "fingerprint",
    "load_or_create_device",
    "manifest_untrusted",
    "open_untrusted",
    "publish_file",
    "sanitize_filename",
    "seal",
    "write_new_file",
]
