"""Gossip messages: CBOR maps with a type field, their limits, and their untrusted parser.

Theory of operation
-------------------
Every gossip message is one CBOR map whose key ``"t"`` names its type, as in
:mod:`p2pd.messages`.  Items are opaque to gossip: ``blob`` is an envelope's ciphertext,
``id`` its 32-byte content hash, ``a`` its author's 32-byte key and ``s`` the author's
sequence number (1, 2, 3, ...).  Gossip never decrypts; the store's ``put`` decides
whether an item is genuine (signature and hash inside the envelope).

| ``t`` | fields | meaning |
|---|---|---|
| ``push`` | ``i``: ``[[id, a, s, blob], ...]``, ``e``: bool | items; ``e``: pushed unasked |
| ``ihave`` | ``i``: ``[id, ...]`` | lazy announcement: "I have these" |
| ``want`` | ``i``: ``[id, ...]`` | "send me these" (also grafts the sender onto the eager tree) |
| ``digest`` | ``d``: 16 bytes, ``n``: int | anti-entropy probe: a hash of the version vector |
| ``sum`` | ``v``: ``{a: s}``, ``r``: bool | version vector; ``r``: "send me yours" |
| ``prune`` | | "you pushed me a duplicate: announce to me lazily instead" |
| ``peers`` | ``p``: ``[peer, ...]`` | peer exchange: some peers of the sender |

:func:`decode_untrusted` checks sizes and shapes and raises :class:`BadFrame` with a
``gossip_*`` reason for anything else, so a driver can count drops by reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import cbor2

from p2pd.errors import BadFrame

#: Bytes in an item id (a BLAKE2b-256 content hash) and in an author key (Ed25519).
ID_SIZE = 32
#: Bytes in an author key (Ed25519 public key).
AUTHOR_SIZE = 32
#: Largest item blob: an envelope (text message or file manifest); file chunks travel
#: outside gossip, so 64 KiB covers a manifest of ~2,000 chunk hashes.
MAX_BLOB_SIZE = 64 * 1024
#: Most bytes one item adds to a ``push``: the blob, its CBOR head, id, author and seq.
MAX_ITEM_WIRE_SIZE = MAX_BLOB_SIZE + 128
#: Largest gossip message: a few full items, or a version vector of MAX_AUTHORS entries
#: (each ~38 bytes), with headroom.  Anything longer is dropped unparsed.
MAX_MESSAGE_SIZE = 256 * 1024
#: Most ids in one ``ihave`` or ``want`` (40-byte entries: ~40 KiB).
MAX_IDS = 1024
#: Most authors in a version vector: a team space has far fewer devices.
MAX_AUTHORS = 4096
#: Most peers in one ``peers`` message.
MAX_PEERS = 32
#: Largest opaque peer name (a device key, or an address the driver understands).
MAX_PEER_SIZE = 64
#: Bytes of the version-vector digest: 128 bits make an accidental match negligible.
DIGEST_SIZE = 16
#: Sequence numbers are u63 so they fit any SQLite INTEGER.
MAX_SEQ = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Item:
    """One gossiped item: an envelope's ciphertext and its public routing fields."""

    item_id: bytes
    author: bytes
    seq: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class Push:
    items: tuple[Item, ...]
    eager: bool


@dataclass(frozen=True, slots=True)
class IHave:
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Want:
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Digest:
    digest: bytes
    authors: int


@dataclass(frozen=True, slots=True)
class Summary:
    vector: dict[bytes, int]
    reply: bool


@dataclass(frozen=True, slots=True)
class Prune:
    pass


@dataclass(frozen=True, slots=True)
class Peers:
    peers: tuple[bytes, ...]


Message = Push | IHave | Want | Digest | Summary | Prune | Peers


def _item_fields(item: Item) -> list[object]:
    return [item.item_id, item.author, item.seq, item.blob]


def encode(message: Message) -> bytes:
    """The CBOR bytes of ``message`` (local values: no checks beyond the types)."""
    body: dict[str, object]
    match message:
        case Push(items, eager):
            body = {"t": "push", "i": [_item_fields(item) for item in items], "e": eager}
        case IHave(ids):
            body = {"t": "ihave", "i": list(ids)}
        case Want(ids):
            body = {"t": "want", "i": list(ids)}
        case Digest(digest, authors):
            body = {"t": "digest", "d": digest, "n": authors}
        case Summary(vector, reply):
            body = {"t": "sum", "v": vector, "r": reply}
        case Prune():
            body = {"t": "prune"}
        case Peers(peers):
            body = {"t": "peers", "p": list(peers)}
    return bytes(cbor2.dumps(body))


def item_wire_size(item: Item) -> int:
    """Bytes ``item`` adds to a ``push`` message (exact, for packing under the cap)."""
    return len(cbor2.dumps(_item_fields(item)))


def _bytes(value: object, size: int, reason: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise BadFrame(reason)
    return value


def _seq(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_SEQ:
        raise BadFrame("gossip_seq")
    return value


def _list(value: object, limit: int) -> list[object]:
    if not isinstance(value, list) or len(value) > limit:
        raise BadFrame("gossip_list")
    return value


def _item_untrusted(entry: object) -> Item:
    fields = _list(entry, 4)
    if len(fields) != 4:
        raise BadFrame("gossip_item")
    blob = fields[3]
    if not isinstance(blob, bytes) or len(blob) > MAX_BLOB_SIZE:
        raise BadFrame("gossip_blob")
    return Item(
        _bytes(fields[0], ID_SIZE, "gossip_id"),
        _bytes(fields[1], AUTHOR_SIZE, "gossip_author"),
        _seq(fields[2]),
        blob,
    )


def _vector_untrusted(value: object) -> dict[bytes, int]:
    if not isinstance(value, dict) or len(value) > MAX_AUTHORS:
        raise BadFrame("gossip_vector")
    return {_bytes(k, AUTHOR_SIZE, "gossip_author"): _seq(v) for k, v in value.items()}


def _peer_untrusted(value: object) -> bytes:
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_PEER_SIZE:
        raise BadFrame("gossip_peer")
    return value


def decode_untrusted(data: bytes) -> Message:
    """Parse one gossip message from a peer; :class:`BadFrame` for anything malformed."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise BadFrame("gossip_too_big")
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        raise BadFrame("gossip_cbor") from None
    if not isinstance(obj, dict):
        raise BadFrame("gossip_shape")
    kind = obj.get("t")
    if kind == "push":
        eager = obj.get("e")
        if not isinstance(eager, bool):
            raise BadFrame("gossip_push")
        return Push(tuple(_item_untrusted(e) for e in _list(obj.get("i"), MAX_IDS)), eager)
    if kind == "ihave":
        ids = _list(obj.get("i"), MAX_IDS)
        return IHave(tuple(_bytes(e, ID_SIZE, "gossip_id") for e in ids))
    if kind == "want":
        ids = _list(obj.get("i"), MAX_IDS)
        return Want(tuple(_bytes(e, ID_SIZE, "gossip_id") for e in ids))
    if kind == "digest":
        authors = obj.get("n")
        if type(authors) is not int or not 0 <= authors <= MAX_AUTHORS:
            raise BadFrame("gossip_digest")
        return Digest(_bytes(obj.get("d"), DIGEST_SIZE, "gossip_digest"), authors)
    if kind == "sum":
        reply = obj.get("r")
        if not isinstance(reply, bool):
            raise BadFrame("gossip_summary")
        return Summary(_vector_untrusted(obj.get("v")), reply)
    if kind == "prune":
        return Prune()
    if kind == "peers":
        return Peers(tuple(_peer_untrusted(p) for p in _list(obj.get("p"), MAX_PEERS)))
    raise BadFrame("gossip_type")
