"""A session's events as Server-Sent Events, served straight over ASGI.

Theory of operation
-------------------
The stream is a cursor into the session's :class:`~p2pd.daemon.ring.EventRing`: it
sends the event after the cursor, or waits for the session to change (sending a
``: keepalive`` comment every :data:`KEEPALIVE` seconds of silence).  A client that
reads too slowly to keep up with the ring gets ``event: overflow`` and the end of the
stream, never an ever-growing queue.  The stream ends when the client leaves, the
session is left or the daemon stops.  At most :data:`MAX_SUBSCRIBERS` streams run at
once, counted exactly (the count is taken when the response runs, not when the request
arrives, and given back however the stream ends).

Each event is ``id: N`` / ``event: NAME`` / ``data: JSON`` (ASCII-only JSON, so no line
separator a client might split on can appear inside it).  A first comment
(``: stream open``) is sent at once, so a client knows it is subscribed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import trio
from starlette.responses import Response

from .responses import Receive, Scope, Send, error_response
from .ring import Overflow
from .service import Service, ServiceError, Session

#: Concurrent Server-Sent Events clients.
MAX_SUBSCRIBERS = 32
#: Seconds between keepalive comments on an idle event stream (proxies drop silent ones).
KEEPALIVE = 15.0


@dataclass(slots=True)
class Subscribers:
    """How many event streams run now."""

    count: int = 0


class EventStream(Response):
    """See the module docstring."""

    def __init__(
        self, service: Service, subscribers: Subscribers, session: Session, cursor: int
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self.service = service
        self.subscribers = subscribers
        self.session = session
        self.cursor = cursor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.subscribers.count >= MAX_SUBSCRIBERS:
            response = error_response(
                429, "limit_reached", f"at most {MAX_SUBSCRIBERS} event streams at once"
            )
            await response(scope, receive, send)
            return
        self.subscribers.count += 1
        ended = False  # by us, not by the client leaving
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                await self._stream(send)
                ended = True
                nursery.cancel_scope.cancel()
        finally:
            self.subscribers.count -= 1
        if ended:
            # Outside the watcher's scope: ending the response makes the server signal
            # http.disconnect, which must not cancel the server's own close sequence.
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        session = self.session
        await _chunk(send, b": stream open\n\n")
        while not (session.closing or self.service.closing):
            try:
                ev = session.events.after(self.cursor)
            except Overflow:
                data = json.dumps({"event": "overflow", "after": self.cursor})
                await _chunk(send, f"event: overflow\ndata: {data}\n\n".encode())
                return
            if ev is not None:
                text = f"id: {ev.id}\nevent: {ev.name}\ndata: {ev.data}\n\n"
                await _chunk(send, text.encode("ascii"))
                self.cursor = ev.id
                continue
            with trio.move_on_after(KEEPALIVE) as idle:
                try:
                    await session.wait_changed()
                except ServiceError:  # the session closed
                    return
            if idle.cancelled_caught:
                await _chunk(send, b": keepalive\n\n")


async def _chunk(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
