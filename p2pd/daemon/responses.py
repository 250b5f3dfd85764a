"""ASGI types shared by the API modules, and the one shape of every error response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Headers of every JSON answer: nothing the API says is cacheable.
JSON_HEADERS = {"cache-control": "no-store"}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """``{"error": {"code", "message"}}`` with ``status`` (the contract's error shape)."""
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={**JSON_HEADERS, **(headers or {})},
    )
