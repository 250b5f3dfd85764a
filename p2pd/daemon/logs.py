"""Structured logs: one JSON object per line on stderr, never a secret.

Every record is ``{"time", "level", "event", ...fields}``: ``event`` is a stable
snake_case name (``session_joined``, ``message_received``) and the fields are plain
values the caller chose.  Callers log lengths, ids and fingerprints — never a
passphrase, a key, the API token or message text.  Exceptions are logged as their type
and the frames' locations only: an exception's message can quote the input that caused
it, and that input may be secret.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

#: The logger every daemon module logs through (children: ``p2pd.daemon.api`` ...).
LOGGER_NAME = "p2pd.daemon"
#: Innermost frames kept when logging an exception's location.
TRACE_FRAMES = 6

log = logging.getLogger(LOGGER_NAME)


def event(level: int, name: str, **fields: Any) -> None:
    """Log the event ``name`` with ``fields`` (which must hold no secret)."""
    log.log(level, name, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """See the module docstring."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage() if record.args else str(record.msg),
        }
        if record.name != LOGGER_NAME:
            out["logger"] = record.name
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["exc_type"] = type(exc).__name__
            frames = traceback.extract_tb(exc.__traceback__)[-TRACE_FRAMES:]
            out["exc_where"] = [f"{f.filename}:{f.lineno}:{f.name}" for f in frames]
        return json.dumps(out, default=str, sort_keys=False)


def setup(level: str) -> None:
    """Send the daemon's and Hypercorn's records to stderr as JSON at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
