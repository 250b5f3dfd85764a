"""The OpenAPI 3.1 description of the daemon's API (``GET /v1/openapi.json``).

Hand-written, because the API is small and the contract (docs/daemon.md) is the source
of truth; the integration tests check that every route the app serves is described
here and that request bodies have schemas, so fuzzers (schemathesis) can use it.
"""

from __future__ import annotations

from typing import Any

from p2pd import __version__

#: The error codes of the contract, for the Error schema's documentation.
ERROR_CODES = (
    "unauthorized",
    "forbidden_host",
    "not_found",
    "method_not_allowed",
    "bad_request",
    "weak_passphrase",
    "too_large",
    "no_session",
    "no_peer",
    "timeout",
    "limit_reached",
    "not_implemented",
    "internal",
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    common = (401, 403, 413)
    return {str(s): {"$ref": "#/components/responses/Error"} for s in (*statuses, *common)}


_SESSION_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the session's rendezvous id (32 hex digits)",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "one of: " + ", ".join(ERROR_CODES)},
                    "message": {"type": "string"},
                },
            }
        },
    },
    "Peer": {
        "type": "object",
        "required": ["fingerprint", "path", "addr"],
        "properties": {
            "fingerprint": {"type": "string"},
            "path": {"type": "string"},
            "addr": {"type": "string", "description": "ip:port"},
        },
    },
    "Session": {
        "type": "object",
        "required": ["id", "port", "peers", "counters"],
        "properties": {
            "id": {"type": "string"},
            "port": {"type": "integer"},
            "peers": {"type": "array", "items": _ref("Peer")},
            "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
            "wan": {
                "type": "object",
                "description": "NAT type (STUN), port mapping, assists, public addresses",
            },
        },
    },
    "Sessions": {
        "type": "object",
        "required": ["sessions"],
        "properties": {"sessions": {"type": "array", "items": _ref("Session")}},
    },
    "Identity": {
        "type": "object",
        "required": ["fingerprint", "public_key"],
        "properties": {"fingerprint": {"type": "string"}, "public_key": {"type": "string"}},
    },
    "Status": {
        "type": "object",
        "required": ["daemon", "sessions"],
        "properties": {
            "daemon": {
                "type": "object",
                "required": ["pid", "version", "api", "uptime_s"],
                "properties": {
                    "pid": {"type": "integer"},
                    "version": {"type": "string"},
                    "api": {"type": "string"},
                    "uptime_s": {"type": "number"},
                },
            },
            "sessions": {"type": "array", "items": _ref("Session")},
        },
    },
    "JoinRequest": {
        "type": "object",
        "required": ["passphrase"],
        "additionalProperties": False,
        "properties": {
            "passphrase": {
                "type": "string",
                "description": "normalised (NFKC, stripped) and strength-checked; never stored",
            }
        },
    },
    "SendRequest": {
        "type": "object",
        "required": ["text"],
        "additionalProperties": False,
        "properties": {
            "text": {"type": "string", "description": "at most 16 MiB of UTF-8"},
            "peer": {"type": ["string", "null"], "description": "a fingerprint; null: any"},
            "wait_peer": {"type": "number", "minimum": 0, "maximum": 3600, "default": 30},
            "wait_delivery": {"type": "boolean", "default": True},
        },
    },
    "SendResult": {
        "type": "object",
        "required": ["message_id", "peer", "path", "rtt_ms", "delivered"],
        "properties": {
            "message_id": {"type": "integer"},
            "peer": {"type": "string"},
            "path": {"type": "string"},
            "rtt_ms": {"type": ["number", "null"]},
            "delivered": {"type": "boolean"},
        },
    },
    "Metrics": {
        "type": "object",
        "required": ["sessions", "totals"],
        "properties": {
            "sessions": {"type": "object", "additionalProperties": {"type": "object"}},
            "totals": {"type": "object"},
        },
    },
}

_EVENTS_DESCRIPTION = """Server-Sent Events. Each event has `id` (increasing per session),
`event` (connected, message, delivered, disconnected; `overflow` — without an id — ends the
stream of a client that fell more than the buffer behind) and `data` (one JSON object).
`Last-Event-ID: N` or `?since=N` first replays every buffered event with id > N (the last
1000 are kept); without either the stream starts with live events. A `: keepalive` comment
comes every 15 s of silence."""


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict: callers may modify it)."""
    session_path_params = [_SESSION_ID]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "p2pd daemon API",
            "version": __version__,
            "description": "Local API of `p2pd daemon`; see docs/daemon.md.",
        },
        "servers": [{"url": "http://127.0.0.1:3000"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}, **_errors()},
                }
            },
            "/v1/identity": {
                "get": {
                    "summary": "this device's identity",
                    "responses": {"200": _json(_ref("Identity"), "identity"), **_errors()},
                }
            },
            "/v1/status": {
                "get": {
                    "summary": "the daemon and its sessions",
                    "responses": {"200": _json(_ref("Status"), "status"), **_errors()},
                }
            },
            "/v1/metrics": {
                "get": {
                    "summary": "counters per session and in total",
                    "responses": {"200": _json(_ref("Metrics"), "metrics"), **_errors()},
                }
            },
            "/v1/shutdown": {
                "post": {
                    "summary": "stop the daemon cleanly",
                    "responses": {"202": {"description": "stopping"}, **_errors()},
                }
            },
            "/v1/sessions": {
                "get": {
                    "summary": "the sessions",
                    "responses": {"200": _json(_ref("Sessions"), "sessions"), **_errors()},
                },
                "post": {
                    "summary": "join the session of a passphrase (idempotent)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("JoinRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("Session"), "already joined"),
                        "201": _json(_ref("Session"), "joined"),
                        **_errors(400, 429, 500),
                    },
                },
            },
            "/v1/sessions/{id}": {
                "parameters": session_path_params,
                "get": {
                    "summary": "one session",
                    "responses": {"200": _json(_ref("Session"), "session"), **_errors(404)},
                },
                "delete": {
                    "summary": "leave a session",
                    "responses": {"204": {"description": "left"}, **_errors(404)},
                },
            },
            "/v1/sessions/{id}/send": {
                "parameters": session_path_params,
                "post": {
                    "summary": "send a text message to a peer of the session",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("SendRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("SendResult"), "sent (and delivered if waited for)"),
                        **_errors(400, 404, 409, 504),
                    },
                },
            },
            "/v1/sessions/{id}/events": {
                "parameters": [
                    *session_path_params,
                    {"name": "since", "in": "query", "schema": {"type": "integer"}},
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}},
                ],
                "get": {
                    "summary": "the session's events (Server-Sent Events)",
                    "description": _EVENTS_DESCRIPTION,
                    "responses": {
                        "200": {
                            "description": "an event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 404, 429),
                    },
                },
            },
            "/v1/sessions/{id}/offer": {
                "parameters": session_path_params,
                "post": {
                    "summary": "an expiring offer (text) naming this session's node",
                    "requestBody": {
                        "required": False,
                        "description": "optional lifetime in seconds (default 600)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "ttl": {"type": "number", "exclusiveMinimum": 0}
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["offer", "expires_at", "candidates"],
                                "properties": {
                                    "offer": {"type": "string"},
                                    "expires_at": {"type": "integer"},
                                    "candidates": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                            "the offer",
                        ),
                        **_errors(400, 404, 409),
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the hex token in STATE_DIR/api-token (new at each start)",
                }
            },
            "responses": {"Error": _json(_ref("Error"), "an error")},
            "schemas": _SCHEMAS,
        },
    }
