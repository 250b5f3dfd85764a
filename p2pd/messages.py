"""Application messages: CBOR maps with a type field, so features extend one format.

Every message on the reliable channel is one CBOR map whose key ``"t"`` names its type.
Unknown types are ignored by the receiver (forward compatibility: a newer peer may send
kinds an older one does not know); malformed ones are dropped and counted.

| ``t`` | fields | meaning |
|---|---|---|
| ``hello`` | ``v`` (int), ``role`` (``send``/``listen``/``chat``) | first message on a channel |
| ``text`` | ``body`` (str) | a text message from the user |
| ``done`` | | the sender will send no more text (a ``send`` that delivered its message) |
| ``cands`` | ``c``: list of ``[path, host, port]`` | the sender's own addresses (node level) |

``cands`` is the node's, not the application's: right after a handshake each node tells the
other where else it can be reached (a port mapping, its public address, its LAN addresses),
so a session that began relayed or over Tor can move to a direct path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from p2pd.errors import BadFrame

#: Version carried in ``hello``.
APP_VERSION = 1
#: Most candidates one ``cands`` message carries (a node has a handful of addresses).
MAX_CANDIDATES = 16
#: Paths a ``cands`` entry may name (see transports.base.PATHS).
CANDIDATE_PATHS = frozenset({"lan", "mapped", "direct", "punched"})
#: The roles a peer announces in ``hello``.
ROLES = frozenset({"send", "listen", "chat"})


@dataclass(frozen=True, slots=True)
class AppMessage:
    """A decoded application message: its type and its other fields."""

    kind: str
    fields: dict[str, Any]


def encode(kind: str, **fields: Any) -> bytes:
    """The CBOR bytes of a message of type ``kind``."""
    return bytes(cbor2.dumps({"t": kind, **fields}))


def hello(role: str) -> bytes:
    return encode("hello", v=APP_VERSION, role=role)


def text(body: str) -> bytes:
    return encode("text", body=body)


def done() -> bytes:
    return encode("done")


def cands(entries: list[tuple[str, str, int]]) -> bytes:
    return encode("cands", c=[list(entry) for entry in entries[:MAX_CANDIDATES]])


def candidates_untrusted(message: AppMessage) -> list[tuple[str, str, int]]:
    """The ``[path, host, port]`` entries of a ``cands`` message; BadFrame if malformed."""
    entries = message.fields.get("c")
    if not isinstance(entries, list) or len(entries) > MAX_CANDIDATES:
        raise BadFrame("app_cands")
    out: list[tuple[str, str, int]] = []
    for entry in entries:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and entry[0] in CANDIDATE_PATHS
            and isinstance(entry[1], str)
            and len(entry[1]) <= 64
            and isinstance(entry[2], int)
            and 0 < entry[2] < 65536
        ):
            raise BadFrame("app_cands")
        out.append((entry[0], entry[1], entry[2]))
    return out


def decode_untrusted(data: bytes) -> AppMessage:
    """Parse a message from the peer; :class:`BadFrame` for anything malformed."""
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        raise BadFrame("app_cbor") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise BadFrame("app_shape")
    kind = obj.pop("t")
    if kind == "text" and not isinstance(obj.get("body"), str):
        raise BadFrame("app_text")
    if kind == "hello" and obj.get("role") not in ROLES:
        raise BadFrame("app_hello")
    return AppMessage(kind, obj)
