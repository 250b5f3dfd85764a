"""``p2pd space join|events|publish|send|get|ls``: a node and a space in-process.

Output discipline as in :mod:`p2pd.commands`: results and messages on stdout (one JSON
object per line with ``--json``), status and progress on stderr, exit code 3
(:class:`~p2pd.commands.NoPeer`) when no peer took what we offered within the timeout.
The passphrase is never printed; authors and peers appear as fingerprints.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ethersync.envelope import KIND_FILE, KIND_MSG, open_untrusted
from ethersync.keys import DeviceKey, SpaceKeys
from ethersync.manifest import manifest_untrusted
from ethersync.store import Retention, Store
from p2pd.commands import CLOSE_LINGER, EXIT_TERMINATED, NoPeer, Output, _with_signals
from p2pd.errors import BadFrame, LocalError, P2pdError
from p2pd.identity import fingerprint
from p2pd.node import Node
from p2pd.space.driver import (
    FileAnnounced,
    FileDone,
    FileProgressed,
    ItemDelivered,
    MessagePosted,
    PeerHasFile,
    Space,
    SpaceEvent,
)
from p2pd.space.events import event_json, event_text
from p2pd.space.progress import Bar

#: Seconds between progress refreshes while publishing (peers' ``have`` bitmaps).
PROGRESS_POLL = 0.25
#: Fewest hex digits of a file id ``get`` accepts.
MIN_PREFIX = 4
#: Sub-directory of the user's download directory that fetched files go to.
DOWNLOAD_SUBDIR = "p2pd"


def default_download_dir() -> Path:
    """Where fetched files go unless told otherwise: ``Downloads/p2pd`` (XDG on Linux)."""
    import platformdirs  # noqa: PLC0415

    return Path(platformdirs.user_downloads_dir()) / DOWNLOAD_SUBDIR


@dataclass(slots=True)
class SpaceSetup:
    """Where a space keeps its store and writes downloads."""

    store_path: Path
    device: DeviceKey
    download_dir: Path | None
    auto_fetch: bool
    #: What the store keeps (the driver prunes at start and every ten minutes).
    retention: Retention | None = None


Body = Callable[[Space], Awaitable[int]]


async def run_space(node: Node, setup: SpaceSetup, body: Body) -> int:
    """Run the node, a :class:`Space` over it and ``body``; SIGTERM ends all three."""

    async def inner() -> int:
        store = Store(setup.store_path, setup.retention)
        try:
            space = Space(
                node,
                store,
                setup.device,
                download_dir=setup.download_dir,
                auto_fetch=setup.auto_fetch,
            )
            failure: list[P2pdError] = []
            result = EXIT_TERMINATED
            async with trio.open_nursery() as nursery:
                await nursery.start(space.run)
                with trio.CancelScope() as body_scope:
                    nursery.start_soon(_watch_signals, body_scope)
                    try:
                        result = await body(space)
                    except P2pdError as exc:  # re-raised bare, not in an ExceptionGroup
                        failure.append(exc)
                await _close_peers(space)
                nursery.cancel_scope.cancel()
            if failure:
                raise failure[0]
            return result
        finally:
            store.close()

    return int(await _with_signals(node, inner))


async def _watch_signals(scope: trio.CancelScope) -> None:
    """SIGTERM ends the command's work but not the clean close that follows it."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _close_peers(space: Space) -> None:
    """Close every channel cleanly (bounded by CLOSE_LINGER).

    A peer that is simply dropped keeps our old channel until it times out, and a
    restart of this device within that time would not be seen as a new session.
    """
    if space.wanted and space.peers:
        # Chunk announcements are batched: let the last one out, so a publisher waiting
        # for us to hold its whole file hears that we do.
        await trio.sleep(space.fetch.config.have_delay * 2)
    for peer_id in list(space.peers.values()):
        space.node.close_peer(peer_id)
    with trio.move_on_after(CLOSE_LINGER):
        while space.peers:
            await space.events.receive()


def _local(event: SpaceEvent) -> bool:
    """Whether ``event`` reports something this device published itself."""
    return isinstance(event, MessagePosted | FileAnnounced) and event.local


def show(output: Output, event: SpaceEvent) -> None:
    shown = event_text(event)
    if output.json_mode:
        output.event(event_json(event), None)
    elif shown is not None:
        output.event({}, shown[0], status=shown[1])


def _ready(space: Space, output: Output) -> None:
    node = space.node
    output.event(
        {
            "event": "listening",
            "port": node.port,
            "fingerprint": node.identity.fingerprint,
            "author": space.device.fingerprint,
            "space": space.space_id.hex(),
        },
        f"p2pd: space {space.space_id.hex()[:16]} on UDP port {node.port} "
        f"as {space.device.fingerprint}",
        status=True,
    )


def join_body(output: Output, timeout: float | None, count: int | None) -> Body:
    """Print every event until ``count`` messages or files from others, or the timeout."""

    async def body(space: Space) -> int:
        _ready(space, output)
        seen = 0
        with trio.move_on_after(math.inf if timeout is None else timeout):
            async for event in space.events:
                show(output, event)
                if isinstance(event, MessagePosted | FileDone) and not _local(event):
                    seen += 1
                    if count is not None and seen >= count:
                        return 0
        if count is not None:
            raise NoPeer(f"received {seen} of {count} messages and files before the timeout")
        return 0

    return body


def send_body(output: Output, text: str, timeout: float) -> Body:
    """Publish ``text``; done when a peer acknowledged a push that carried it."""

    async def body(space: Space) -> int:
        envelope = space.publish_text(text)
        output.event(
            {
                "event": "published",
                "id": envelope.id.hex(),
                "seq": envelope.seq,
                "author": space.device.fingerprint,
            },
            f"p2pd: published message {envelope.id.hex()[:16]} (seq {envelope.seq})",
            status=True,
        )
        with trio.move_on_after(timeout):
            async for event in space.events:
                if not _local(event):
                    show(output, event)
                if isinstance(event, ItemDelivered) and event.envelope_id == envelope.id:
                    return 0
        raise NoPeer(
            f"no peer took the message within {timeout:g} s; it is stored here and "
            "spreads the next time this device joins the space"
        )

    return body


def publish_body(output: Output, path: Path, timeout: float) -> Body:
    """Publish ``path``; done when one peer announced holding every chunk."""

    async def body(space: Space) -> int:
        envelope, manifest = space.publish_file(path)
        file_id = envelope.id
        output.event(
            {
                "event": "published",
                "id": file_id.hex(),
                "name": manifest.name,
                "size": manifest.size,
                "author": space.device.fingerprint,
            },
            f"published {manifest.name} ({manifest.size} bytes, id {file_id.hex()[:16]})",
        )
        bar = Bar(output, "upload", file_id, manifest.name, manifest.size)
        try:
            with trio.move_on_after(timeout):
                while True:
                    with trio.move_on_after(PROGRESS_POLL):
                        event = await space.events.receive()
                        if isinstance(event, PeerHasFile) and event.file_id == file_id:
                            bar.update(manifest.size, force=True)
                            bar.close()
                            show(output, event)
                            return 0
                        if not isinstance(event, FileProgressed) and not _local(event):
                            show(output, event)
                    bar.update(space.peer_bytes(file_id))
        finally:
            bar.close()
        raise NoPeer(
            f"no peer fetched the whole file within {timeout:g} s; it stays published "
            "here and is served the next time this device joins the space"
        )

    return body


def _match(space: Space, prefix: str) -> bytes | None:
    found = [fid for fid in space.manifests if fid.hex().startswith(prefix)]
    if len(found) > 1:
        raise LocalError(f"{prefix!r} matches {len(found)} files; give more of the id")
    return found[0] if found else None


def get_body(output: Output, prefix: str, timeout: float) -> Body:
    """Fetch the file whose id starts with ``prefix`` (waiting for its announcement)."""
    prefix = prefix.lower()
    if len(prefix) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
        raise LocalError(f"a file id prefix is at least {MIN_PREFIX} hex digits")

    async def body(space: Space) -> int:
        bar: Bar | None = None
        file_id = _match(space, prefix)
        try:
            with trio.move_on_after(timeout):
                while file_id is None:
                    event = await space.events.receive()
                    if isinstance(event, FileAnnounced):
                        file_id = _match(space, prefix)
                manifest = space.manifests[file_id]
                if file_id in space.wanted and space.fetch.complete(file_id):
                    space.write_file(file_id)  # already held: just write it out
                else:
                    space.fetch_file(file_id)
                bar = Bar(output, "download", file_id, manifest.name, manifest.size)
                async for event in space.events:
                    if isinstance(event, FileProgressed) and event.file_id == file_id:
                        bar.update(event.verified_bytes)
                    elif isinstance(event, FileDone) and event.file_id == file_id:
                        bar.update(manifest.size, force=True)
                        bar.close()
                        show(output, event)
                        return 0 if event.error is None else 1
        finally:
            if bar is not None:
                bar.close()
        what = "announced" if file_id is None else "fetched"
        raise NoPeer(f"the file was not {what} within {timeout:g} s")

    return body


def list_envelopes(store: Store, keys: SpaceKeys) -> list[dict[str, Any]]:
    """What ``space ls`` shows: every held envelope, oldest first, opened."""
    rows: list[dict[str, Any]] = []
    for meta in store.list_envelopes():
        blob = store.get(meta.id)
        if blob is None:
            continue
        try:
            envelope = open_untrusted(blob, keys)
        except BadFrame:
            continue
        row: dict[str, Any] = {
            "id": meta.id.hex(),
            "author": fingerprint(meta.author),
            "seq": meta.seq,
            "ts": meta.ts,
            "kind": meta.kind,
        }
        if meta.kind == KIND_MSG:
            body = envelope.body
            row["text"] = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
        elif meta.kind == KIND_FILE:
            try:
                manifest = manifest_untrusted(envelope)
            except BadFrame:
                continue
            row["name"] = manifest.name
            row["size"] = manifest.size
            held = len(store.verified_indices(meta.id))
            row["complete"] = held == len(manifest.hashes)
        rows.append(row)
    return rows
