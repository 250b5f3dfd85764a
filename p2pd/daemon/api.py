"""The daemon's local HTTP API (ASGI): routes, and the guard every request passes first.

Theory of operation
-------------------
:class:`Guard` is a pure-ASGI wrapper around the Starlette app.  In order, it:

1. refuses a ``Host`` header that is not loopback (``403 forbidden_host``) — a web page
   that rebinds its DNS name to 127.0.0.1 still sends its own name, so this stops DNS
   rebinding before any credential is even looked at;
2. checks ``Authorization: Bearer TOKEN`` in constant time (``401 unauthorized``);
3. reads the body while counting: past the route's limit it stops keeping bytes and
   answers ``413 too_large``.  Refused bodies are read and *discarded* (up to
   :data:`DRAIN_LIMIT`) before answering, so a client that writes its whole body before
   reading gets the answer instead of a connection reset;
4. runs the app with the buffered body, and turns anything that escapes it into
   ``500 internal`` without a traceback.

Every error is ``{"error": {"code", "message"}}``.  No CORS header is ever sent, and
OPTIONS is simply a method no route allows (405): browsers then refuse cross-origin
calls.  Event streams are in :mod:`.sse`.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from p2pd import __version__

from .logs import event as log_event
from .openapi import document
from .responses import (
    JSON_HEADERS,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    error_response,
)
from .service import Service, ServiceError, Session
from .sse import EventStream, Subscribers

#: Body limit of every route but send: the largest legitimate body is a passphrase.
BODY_LIMIT = 64 * 1024
#: Body limit of send: 16 MiB of text, JSON escaping and the other fields.
SEND_BODY_LIMIT = 17 * 1024 * 1024
#: Largest message text (UTF-8 bytes) accepted by send.
MAX_TEXT_BYTES = 16 * 1024 * 1024
#: Bytes of a refused body read and thrown away so the client can read the answer;
#: beyond this the connection is simply closed.
DRAIN_LIMIT = 64 * 1024 * 1024
#: Send requests buffering a large body at once (each holds up to SEND_BODY_LIMIT).
BIG_BODY_SLOTS = 4
#: Longest ``wait_peer`` a send may ask for.
MAX_WAIT_PEER = 3600.0
#: Default ``wait_peer`` of send.
DEFAULT_WAIT_PEER = 30.0
#: Lifetime of an offer made through the API unless the body says ``ttl`` (as ``p2pd offer``).
DEFAULT_OFFER_TTL = 600.0

_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_SEND_PATH = re.compile(r"/v1/sessions/[^/]+/send")
_LOOPBACK_HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def host_allowed(value: str, extra: frozenset[str]) -> bool:
    """Whether a ``Host`` header names loopback (or a host the user allowed)."""
    value = value.strip().lower()
    if _LOOPBACK_HOST.fullmatch(value):
        return True
    return value in extra or value.rsplit(":", 1)[0] in extra


# -- the guard --------------------------------------------------------------------------


class Guard:
    """Host check, auth, body limits and last-resort errors; see the module docstring."""

    def __init__(self, app: ASGIApp, token: str, extra_hosts: frozenset[str] = frozenset()):
        self.app = app
        self._token = f"Bearer {token}".encode("latin-1")
        self._extra_hosts = extra_hosts
        self._big_bodies = trio.CapacityLimiter(BIG_BODY_SLOTS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: none offered
            await send({"type": "websocket.close", "code": 1008})
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(bytes(name).lower(), bytes(value))
        if not host_allowed(headers.get(b"host", b"").decode("latin-1"), self._extra_hosts):
            await self._refuse(
                scope,
                receive,
                send,
                status=403,
                code="forbidden_host",
                message="the Host header must name loopback (DNS rebinding defence)",
            )
            return
        if not hmac.compare_digest(headers.get(b"authorization", b""), self._token):
            await self._refuse(
                scope,
                receive,
                send,
                status=401,
                code="unauthorized",
                message="missing or wrong bearer token (see STATE_DIR/api-token)",
            )
            return
        big = scope["method"] == "POST" and _SEND_PATH.fullmatch(scope["path"]) is not None
        limit = SEND_BODY_LIMIT if big else BODY_LIMIT
        if big:
            async with self._big_bodies:
                body = await self._read_body(receive, limit, headers.get(b"content-length"))
        else:
            body = await self._read_body(receive, limit, headers.get(b"content-length"))
        if body is None:
            await error_response(413, "too_large", f"the body is larger than {limit} bytes")(
                scope, receive, send
            )
            return
        await self._run(scope, _replay(body, receive), send)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # the edge: whatever escaped becomes a 500, never a crash
            logging.getLogger(__name__).error(
                "internal_error", exc_info=exc, extra={"fields": {"path": scope.get("path")}}
            )
            if not started:
                await error_response(500, "internal", "internal error")(scope, receive, send)

    async def _read_body(
        self, receive: Receive, limit: int, declared: bytes | None
    ) -> bytes | None:
        """The body, or None when it exceeds ``limit`` (then drained, within reason)."""
        try:
            too_large = declared is not None and int(declared) > limit
        except ValueError:
            too_large = False  # the HTTP layer rejects a malformed Content-Length itself
        chunks: list[bytes] = []
        size = 0
        more = True
        while more and not too_large:
            message = await receive()
            if message["type"] != "http.request":
                return b""  # the client left; nothing will be sent anyway
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > limit:
                too_large = True
            else:
                chunks.append(chunk)
        if too_large:
            if more:
                await _drain(receive, DRAIN_LIMIT - size)
            return None
        return b"".join(chunks)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, *, status: int, code: str, message: str
    ) -> None:
        await _drain(receive, DRAIN_LIMIT)
        await error_response(status, code, message)(scope, receive, send)


async def _drain(receive: Receive, budget: int) -> None:
    """Read and discard the rest of the body, at most ``budget`` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the buffered body once, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- request bodies -----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


async def _json_object(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    body = await request.body()
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ServiceError(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ServiceError(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ServiceError(400, "bad_request", f"unknown field {unknown[0][:64]!r}")
    return obj


def _field(obj: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any = ...) -> Any:
    if name not in obj:
        if default is ...:
            raise ServiceError(400, "bad_request", f"missing field {name!r}")
        return default
    value = obj[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ServiceError(400, "bad_request", f"field {name!r} must be {names}")
    return value


def _utf8(value: str, name: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceError(400, "bad_request", f"field {name!r} is not valid Unicode") from None


# -- the routes ---------------------------------------------------------------------------


@dataclass(slots=True)
class DaemonInfo:
    """What status reports about the daemon itself."""

    api: str = ""
    started: float = field(default_factory=time.monotonic)


class Api:
    """The endpoints of the contract, over one :class:`Service`."""

    def __init__(self, service: Service, info: DaemonInfo, stop: Callable[[], None]) -> None:
        self.service = service
        self.info = info
        self.stop = stop
        self.subscribers = Subscribers()

    def _session(self, request: Request) -> Session:
        session_id = str(request.path_params["id"])
        if not _SESSION_ID.fullmatch(session_id):
            raise ServiceError(404, "no_session", "no session with that id")
        return self.service.session(session_id)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(document(), headers=JSON_HEADERS)

    async def identity(self, request: Request) -> Response:
        ident = self.service.identity
        return JSONResponse(
            {"fingerprint": ident.fingerprint, "public_key": ident.public.hex()},
            headers=JSON_HEADERS,
        )

    async def status(self, request: Request) -> Response:
        daemon = {
            "pid": os.getpid(),
            "version": __version__,
            "api": self.info.api,
            "uptime_s": round(time.monotonic() - self.info.started, 3),
        }
        sessions = [s.describe() for s in self.service.sessions.values() if not s.closing]
        return JSONResponse({"daemon": daemon, "sessions": sessions}, headers=JSON_HEADERS)

    async def list_sessions(self, request: Request) -> Response:
        sessions = [s.describe() for s in self.service.sessions.values() if not s.closing]
        return JSONResponse({"sessions": sessions}, headers=JSON_HEADERS)

    async def join(self, request: Request) -> Response:
        obj = await _json_object(request, frozenset({"passphrase"}))
        passphrase = _field(obj, "passphrase", (str,))
        session, created = await self.service.join(passphrase)
        return JSONResponse(
            session.describe(), status_code=201 if created else 200, headers=JSON_HEADERS
        )

    async def get_session(self, request: Request) -> Response:
        return JSONResponse(self._session(request).describe(), headers=JSON_HEADERS)

    async def leave(self, request: Request) -> Response:
        await self.service.leave(self._session(request).id)
        return Response(status_code=204)

    async def send(self, request: Request) -> Response:
        session = self._session(request)
        obj = await _json_object(request, frozenset({"text", "peer", "wait_peer", "wait_delivery"}))
        text = _field(obj, "text", (str,))
        if len(_utf8(text, "text")) > MAX_TEXT_BYTES:
            raise ServiceError(413, "too_large", f"text is longer than {MAX_TEXT_BYTES} bytes")
        peer = _field(obj, "peer", (str, type(None)), None)
        wait_peer = float(_field(obj, "wait_peer", (int, float), DEFAULT_WAIT_PEER))
        if not (math.isfinite(wait_peer) and 0 <= wait_peer <= MAX_WAIT_PEER):
            raise ServiceError(
                400, "bad_request", f"wait_peer must be between 0 and {MAX_WAIT_PEER:g} seconds"
            )
        wait_delivery = _field(obj, "wait_delivery", (bool,), True)
        result = await self.service.send(session.id, text, peer, wait_peer, wait_delivery)
        return JSONResponse(result, headers=JSON_HEADERS)

    async def offer(self, request: Request) -> Response:
        """A fresh offer for this session's node (the hybrid form: it names this node)."""
        from p2pd.offer import MAX_TTL, OfferError, make_offer  # noqa: PLC0415

        session = self._session(request)
        obj = await _json_object(request, frozenset({"ttl"}))
        ttl = float(_field(obj, "ttl", (int, float), DEFAULT_OFFER_TTL))
        if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
            raise ServiceError(400, "bad_request", f"ttl must be between 0 and {MAX_TTL:g} s")
        node = session.node
        candidates = node.own_candidates()
        now = time.time()
        try:
            text = make_offer(
                node.params.tag_key, candidates, now_wall=now, ttl=ttl,
                resume=node.identity.public,
            )  # fmt: skip
        except OfferError as exc:
            raise ServiceError(409, "no_candidates", str(exc)) from None
        body = {
            "offer": text,
            "expires_at": round(now + ttl),
            "candidates": [f"{c.path} {c.addr[0]}:{c.addr[1]}" for c in candidates],
        }
        return JSONResponse(body, headers=JSON_HEADERS)

    async def events(self, request: Request) -> Response:
        session = self._session(request)
        return event_stream(self.service, self.subscribers, session, request)

    async def metrics(self, request: Request) -> Response:
        return JSONResponse(self.service.metrics(), headers=JSON_HEADERS)

    async def shutdown(self, request: Request) -> Response:
        log_event(logging.INFO, "shutdown_requested")

        async def stop_after_answering() -> None:  # async: Starlette runs sync ones in a thread
            self.stop()

        return JSONResponse(
            {"stopping": True}, status_code=202, background=BackgroundTask(stop_after_answering)
        )


# -- assembly -----------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "bad_request")
    message = {
        404: "no such endpoint",
        405: f"method {request.method} not allowed here",
    }.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.code, exc.message)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal", "internal error")


Endpoint = Callable[[Request], Awaitable[Response]]


def event_stream(
    service: Service, subscribers: Subscribers, session: Session, request: Request
) -> Response:
    """SSE of a session's events from ``Last-Event-ID``/``since`` (sessions and spaces)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("since")
    since: int | None = None
    if raw is not None:
        try:
            since = int(raw)
        except ValueError:
            raise ServiceError(
                400, "bad_request", "Last-Event-ID and since must be integers"
            ) from None
    if request.method == "HEAD":
        return Response(media_type="text/event-stream")
    return EventStream(service, subscribers, session, session.events.cursor(since))


def by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    """One endpoint for a path that several methods share (so 405's Allow lists them all)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


def build_app(
    api: Api,
    token: str,
    extra_hosts: frozenset[str] = frozenset(),
    extra_routes: Sequence[Route] = (),
) -> Guard:
    """The whole ASGI application: :class:`Guard` around the routes."""
    table: dict[str, dict[str, Endpoint]] = {
        "/v1/openapi.json": {"GET": api.openapi},
        "/v1/identity": {"GET": api.identity},
        "/v1/status": {"GET": api.status},
        "/v1/metrics": {"GET": api.metrics},
        "/v1/shutdown": {"POST": api.shutdown},
        "/v1/sessions": {"GET": api.list_sessions, "POST": api.join},
        "/v1/sessions/{id}": {"GET": api.get_session, "DELETE": api.leave},
        "/v1/sessions/{id}/send": {"POST": api.send},
        "/v1/sessions/{id}/events": {"GET": api.events},
        "/v1/sessions/{id}/offer": {"POST": api.offer},
    }
    routes = [Route(path, by_method(h), methods=list(h)) for path, h in table.items()]
    routes += extra_routes
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            ServiceError: _service_error,
            Exception: _internal_error,
        },
    )
    return Guard(app, token, extra_hosts)
