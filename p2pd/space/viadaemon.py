"""``p2pd space`` through a running daemon: the same commands over ``/v1/ethersync``.

Why: a daemon on the state directory already runs a node with this device's identity;
a second node with the same static key beside it would confuse both peers' sessions.
So when a daemon runs (and ``--no-daemon`` is not given) ``join``, ``events``, ``send``,
``publish`` and ``get`` join the space in the daemon and follow its event stream.  The
daemon keeps the space afterwards: what was published keeps spreading.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from p2pd.apiclient import DaemonClient, DaemonError
from p2pd.commands import NoPeer, Output
from p2pd.errors import LocalError

BASE = "/v1/ethersync/spaces"


def join(client: DaemonClient, passphrase: str) -> str:
    """Join the space in the daemon; its id."""
    response = client._request("POST", BASE, body={"passphrase": passphrase})
    return str(response.json()["id"])


def events(client: DaemonClient, space_id: str, timeout: float | None) -> Iterator[dict[str, Any]]:
    """The space's events from the start of the daemon's ring (SSE), until ``timeout``.

    The daemon sends a keepalive every 15 s, so the deadline is noticed within that.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with (
            client._client(timeout=timeout) as http,
            http.stream("GET", f"{BASE}/{space_id}/events", params={"since": 0}) as resp,
        ):
            if not resp.is_success:
                resp.read()
                raise DaemonError("bad_request", f"events: HTTP {resp.status_code}", 400)
            for line in resp.iter_lines():
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if line.startswith("data:"):
                    yield dict(json.loads(line[5:].strip()))
    except httpx.TimeoutException:
        return
    except httpx.HTTPError as exc:
        raise LocalError(f"lost the daemon's event stream: {exc}") from None


def run_join(
    client: DaemonClient, passphrase: str, output: Output, timeout: float | None, count: int | None
) -> int:
    space_id = join(client, passphrase)
    seen = 0
    for event in events(client, space_id, timeout):
        shown = event.get("event") in ("message", "file", "saved")
        output.event(event, _text(event), status=not shown)
        if event.get("event") in ("message", "saved") and not event.get("local"):
            seen += 1
            if count is not None and seen >= count:
                return 0
    if count is not None:
        raise NoPeer(f"received {seen} of {count} messages and files before the timeout")
    return 0


def run_send(client: DaemonClient, passphrase: str, text: str, output: Output) -> int:
    space_id = join(client, passphrase)
    answer = client._call("POST", f"{BASE}/{space_id}/messages", body={"text": text})
    output.event(
        {"event": "published", **answer},
        f"p2pd: published message {answer['id'][:16]} through the daemon",
        status=True,
    )
    return 0


def run_publish(
    client: DaemonClient, passphrase: str, path: Path, timeout: float, output: Output
) -> int:
    space_id = join(client, passphrase)
    body = {"path": str(path.resolve())}
    answer = client._call("POST", f"{BASE}/{space_id}/files", body=body)
    output.event(
        {"event": "published", **answer},
        f"published {answer['name']} ({answer['size']} bytes, id {answer['id'][:16]}) "
        "through the daemon",
    )
    for event in events(client, space_id, timeout):
        if event.get("event") == "peer_has_file" and event.get("id") == answer["id"]:
            output.event(event, f"p2pd: {event['peer']} has the whole file", status=True)
            return 0
    raise NoPeer(f"no peer fetched the whole file within {timeout:g} s (the daemon keeps it)")


def run_get(
    client: DaemonClient, passphrase: str, prefix: str, timeout: float, output: Output
) -> int:
    """The daemon fetches every announced file: wait for this one to be saved."""
    space_id = join(client, passphrase)
    for event in events(client, space_id, timeout):
        if event.get("event") == "saved" and str(event.get("id", "")).startswith(prefix.lower()):
            output.event(event, _text(event))
            return 0 if event.get("path") else 1
    raise NoPeer(f"the daemon did not save that file within {timeout:g} s")


def _text(event: dict[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "message":
        return f"{event['author']}: {event['text']}"
    if kind == "file":
        size, short = event["size"], event["id"][:16]
        return f"{event['author']}: file {event['name']} ({size} bytes, id {short})"
    if kind == "saved":
        return f"saved {event['name']} to {event['path']}"
    if kind == "connected":
        return f"p2pd: connected to {event['peer']} via {event['path']} ({event['addr']})"
    if kind == "disconnected":
        return f"p2pd: {event['peer']} left ({event['reason']})"
    return None
