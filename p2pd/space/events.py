"""Space events as JSON objects and one-line texts, shared by the CLI and the daemon API.

Ids are hex; a file id is its manifest envelope's id.  Peers and authors are named by
fingerprint.  Nothing here carries a key or the passphrase.
"""

from __future__ import annotations

from typing import Any

from p2pd.space.driver import (
    FileAnnounced,
    FileDone,
    FileProgressed,
    ItemDelivered,
    MessagePosted,
    PeerHasFile,
    PeerJoined,
    PeerLeft,
    SpaceEvent,
)


def event_json(event: SpaceEvent) -> dict[str, Any]:
    """The JSON object of ``event``; its ``"event"`` key names the kind."""
    match event:
        case PeerJoined(peer, path, addr):
            return {"event": "connected", "peer": peer, "path": path, "addr": addr}
        case PeerLeft(peer, reason):
            return {"event": "disconnected", "peer": peer, "reason": reason}
        case MessagePosted(envelope_id, author, seq, ts, text, local):
            return {
                "event": "message",
                "id": envelope_id.hex(),
                "author": author,
                "seq": seq,
                "ts": ts,
                "text": text,
                "local": local,
            }
        case FileAnnounced(file_id, author, seq, ts, name, size, local):
            return {
                "event": "file",
                "id": file_id.hex(),
                "author": author,
                "seq": seq,
                "ts": ts,
                "name": name,
                "size": size,
                "local": local,
            }
        case FileProgressed(file_id, name, done, total, rate):
            return {
                "event": "progress",
                "id": file_id.hex(),
                "name": name,
                "bytes": done,
                "total": total,
                "rate": round(rate, 1),
            }
        case FileDone(file_id, name, path, error):
            obj: dict[str, Any] = {"event": "saved", "id": file_id.hex(), "name": name}
            obj["path"] = None if path is None else str(path)
            if error is not None:
                obj["error"] = error
            return obj
        case PeerHasFile(peer, file_id):
            return {"event": "peer_has_file", "peer": peer, "id": file_id.hex()}
        case ItemDelivered(peer, envelope_id):
            return {"event": "delivered", "peer": peer, "id": envelope_id.hex()}


def event_text(event: SpaceEvent) -> tuple[str, bool] | None:
    """(text, is_status) for the human output, or None for events not shown."""
    match event:
        case PeerJoined(peer, path, addr):
            return f"p2pd: connected to {peer} via {path} ({addr})", True
        case PeerLeft(peer, reason):
            return f"p2pd: {peer} left ({reason})", True
        case MessagePosted(_, author, _, _, text, _):
            return f"{author}: {text}", False
        case FileAnnounced(file_id, author, _, _, name, size, _):
            return f"{author}: file {name} ({size} bytes, id {file_id.hex()[:16]})", False
        case FileDone(_, name, path, error):
            if error is not None:
                return f"p2pd: could not save {name}: {error}", True
            return (f"saved {name} to {path}", False) if path is not None else None
        case _:
            return None
