"""EtherSync spaces in the daemon: ``/v1/ethersync/spaces...`` routes and their event streams.

Theory of operation
-------------------
:class:`Spaces` runs one :class:`~p2pd.space.driver.Space` per joined passphrase, each
over its own :class:`~p2pd.node.Node` (a space's node carries EtherSync frames only, so
it is separate from the passphrase's plain session, whose node events the session pump
owns).  A space is a :class:`~p2pd.daemon.service.Session` too: its event ring, change
signal and cancel scope are reused as they are, so :class:`~p2pd.daemon.sse.EventStream`
serves ``/events`` with the same cursor, overflow and keepalive rules as a session's.

Routes (under the daemon's guard: Host check, bearer token, 64 KiB bodies):

* ``POST /v1/ethersync/spaces`` ``{"passphrase"}`` joins (201, or 200 if joined already);
  ``GET`` lists the spaces.
* ``GET /v1/ethersync/spaces/{id}`` describes one; ``DELETE`` leaves it.
* ``GET|POST /v1/ethersync/spaces/{id}/messages``: list the messages / publish ``{"text"}``.
* ``GET|POST /v1/ethersync/spaces/{id}/files``: list the files / publish ``{"path"}`` (a
  file on this machine, read by the daemon).
* ``GET /v1/ethersync/spaces/{id}/events``: Server-Sent Events, as for sessions.

A space id is the passphrase's 16-byte space id in hex; the passphrase itself is never
kept, logged or returned.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ethersync.envelope import KIND_FILE, KIND_MSG
from ethersync.keys import load_or_create_device
from ethersync.store import Retention, Store, default_store_path
from p2pd.errors import LocalError
from p2pd.node import Node
from p2pd.space.commands import list_envelopes
from p2pd.space.driver import Space
from p2pd.space.events import event_json

from .api import BODY_LIMIT, Endpoint, _field, _json_object, _utf8, by_method, event_stream
from .logs import event as log_event
from .responses import JSON_HEADERS
from .service import Service, ServiceError, Session
from .sse import Subscribers

#: Spaces one daemon runs at once (each is a node, a socket and an SQLite store).
MAX_SPACES = 64
#: What a space store keeps in the daemon: the ``p2pd space`` defaults (30 days, 1 GiB).
DEFAULT_RETENTION = Retention(max_age_ms=30 * 86_400_000, max_bytes=1 << 30)
#: Largest message text (UTF-8 bytes): the body limit less JSON framing; an envelope
#: holds at most 64 KiB sealed in any case.
MAX_SPACE_TEXT = BODY_LIMIT - 1024

_SPACE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(slots=True)
class _Entry:
    session: Session
    space: Space | None = None
    ready: trio.Event = field(default_factory=trio.Event)


class Spaces:
    """The daemon's spaces; their tasks live in ``nursery`` (the sessions' nursery)."""

    def __init__(
        self,
        service: Service,
        nursery: trio.Nursery,
        state_dir: Path,
        *,
        data_dir: Path | None = None,
        download_dir: Path | None = None,
        retention: Retention = DEFAULT_RETENTION,
    ) -> None:
        self.service = service
        self.retention = retention
        self.state_dir = state_dir
        self.data_dir = data_dir
        self.download_dir = download_dir
        self.entries: dict[str, _Entry] = {}
        self._nursery = nursery

    def get(self, space_id: str) -> Space:
        entry = self.entries.get(space_id) if _SPACE_ID.fullmatch(space_id) else None
        if entry is None or entry.space is None or entry.session.closing:
            raise ServiceError(404, "no_space", "no space with that id")
        return entry.space

    async def join(self, passphrase: str) -> tuple[_Entry, bool]:
        """The space of ``passphrase`` and whether it is new (idempotent)."""
        if self.service.closing:
            raise ServiceError(404, "no_space", "the daemon is stopping")
        params = await self.service.derive(passphrase)
        space_id = params.space_id.hex()
        existing = self.entries.get(space_id)
        if existing is not None and not existing.session.closing:
            await existing.ready.wait()
            self.get(space_id)
            return existing, False
        if len(self.entries) >= MAX_SPACES:
            raise ServiceError(429, "limit_reached", f"at most {MAX_SPACES} spaces at once")
        node = Node(params, self.service.identity, self.service.node_config)
        entry = _Entry(Session(space_id, node))
        self.entries[space_id] = entry
        try:
            await self._nursery.start(self._run, entry)
        except (OSError, LocalError) as exc:
            raise ServiceError(500, "internal", f"cannot start the space: {exc}") from None
        log_event(logging.INFO, "space_joined", space=space_id, port=entry.session.port)
        return entry, True

    async def leave(self, space_id: str) -> None:
        self.get(space_id)
        entry = self.entries[space_id]
        entry.session.scope.cancel()
        await entry.session.done.wait()
        log_event(logging.INFO, "space_left", space=space_id)

    async def close(self) -> None:
        for entry in list(self.entries.values()):
            entry.session.scope.cancel()
        for entry in list(self.entries.values()):
            await entry.session.done.wait()

    async def _run(
        self, entry: _Entry, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        session = entry.session
        store: Store | None = None
        started = False
        try:
            path = default_store_path(entry.session.node.params.space_id, self.data_dir)
            store = Store(path, self.retention)
            device = load_or_create_device(self.state_dir)
            with session.scope:
                async with trio.open_nursery() as nursery:
                    session.port = await nursery.start(session.node.run)
                    space = Space(
                        session.node,
                        store,
                        device,
                        download_dir=self.download_dir,
                        auto_fetch=self.download_dir is not None,
                    )
                    await nursery.start(space.run)
                    entry.space = space
                    nursery.start_soon(_pump, session, space)
                    entry.ready.set()
                    task_status.started()
                    started = True
        except Exception as exc:  # the driver's edge: one space must not take the daemon down
            if not started:
                raise
            logging.getLogger(__name__).error(
                "space_failed", exc_info=exc, extra={"fields": {"space": session.id}}
            )
        finally:
            session.closing = True
            if self.entries.get(session.id) is entry:
                del self.entries[session.id]
            if store is not None:
                store.close()
            entry.ready.set()
            session.done.set()
            session.wake()


async def _pump(session: Session, space: Space) -> None:
    async for event in space.events:
        data = event_json(event)
        session.record(str(data.pop("event")), data)
        session.wake()


def describe(space: Space) -> dict[str, Any]:
    counts = space.store.counts()
    return {
        "id": space.space_id.hex(),
        "port": space.node.port,
        "author": space.device.fingerprint,
        "peers": sorted(space.peers),
        "envelopes": counts.envelopes,
        "counters": space.stats(),
    }


class SpacesApi:
    """The endpoints, over one :class:`Spaces`."""

    def __init__(self, spaces: Spaces, subscribers: Subscribers) -> None:
        self.spaces = spaces
        self.subscribers = subscribers

    def _space(self, request: Request) -> Space:
        return self.spaces.get(str(request.path_params["id"]))

    async def list_spaces(self, request: Request) -> Response:
        found = [e.space for e in self.spaces.entries.values() if e.space is not None]
        return _json({"spaces": [describe(space) for space in found]})

    async def join(self, request: Request) -> Response:
        obj = await _json_object(request, frozenset({"passphrase"}))
        entry, created = await self.spaces.join(_field(obj, "passphrase", (str,)))
        assert entry.space is not None
        return _json(describe(entry.space), 201 if created else 200)

    async def get_space(self, request: Request) -> Response:
        return _json(describe(self._space(request)))

    async def leave(self, request: Request) -> Response:
        await self.spaces.leave(str(request.path_params["id"]))
        return Response(status_code=204)

    async def messages(self, request: Request) -> Response:
        space = self._space(request)
        rows = list_envelopes(space.store, space.keys)
        return _json({"messages": [row for row in rows if row["kind"] == KIND_MSG]})

    async def post_message(self, request: Request) -> Response:
        space = self._space(request)
        obj = await _json_object(request, frozenset({"text"}))
        text = _field(obj, "text", (str,))
        if len(_utf8(text, "text")) > MAX_SPACE_TEXT:
            raise ServiceError(400, "bad_request", f"text is over {MAX_SPACE_TEXT} bytes")
        envelope = space.publish_text(text)
        return _json({"id": envelope.id.hex(), "seq": envelope.seq, "ts": envelope.ts}, 201)

    async def files(self, request: Request) -> Response:
        space = self._space(request)
        rows = list_envelopes(space.store, space.keys)
        return _json({"files": [row for row in rows if row["kind"] == KIND_FILE]})

    async def post_file(self, request: Request) -> Response:
        space = self._space(request)
        obj = await _json_object(request, frozenset({"path", "name"}))
        path = Path(_field(obj, "path", (str,))).expanduser()
        name = _field(obj, "name", (str, type(None)), None)
        if not path.is_absolute() or not path.is_file():
            raise ServiceError(400, "bad_request", "path must be an absolute path to a file")
        try:
            envelope, manifest = space.publish_file(path, name)
        except LocalError as exc:
            raise ServiceError(400, "bad_request", str(exc)) from None
        body = {"id": envelope.id.hex(), "name": manifest.name, "size": manifest.size}
        return _json(body, 201)

    async def events(self, request: Request) -> Response:
        self._space(request)
        session = self.spaces.entries[str(request.path_params["id"])].session
        return event_stream(self.spaces.service, self.subscribers, session, request)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers=JSON_HEADERS)


def ethersync_routes(spaces: Spaces, subscribers: Subscribers) -> list[Route]:
    """The ``/v1/ethersync`` routes, for the daemon's app to mount beside its own."""
    api = SpacesApi(spaces, subscribers)
    base = "/v1/ethersync/spaces"
    table: dict[str, dict[str, Endpoint]] = {
        base: {"GET": api.list_spaces, "POST": api.join},
        base + "/{id}": {"GET": api.get_space, "DELETE": api.leave},
        base + "/{id}/messages": {"GET": api.messages, "POST": api.post_message},
        base + "/{id}/files": {"GET": api.files, "POST": api.post_file},
        base + "/{id}/events": {"GET": api.events},
    }
    return [Route(path, by_method(h), methods=list(h)) for path, h in table.items()]
