"""The daemon's ``/v1/ethersync`` routes, in-process, with ``p2pd space`` processes as peers.

The routes are mounted on a bare Starlette app here (the daemon's guard is tested with
the daemon); the space under them runs a real node on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import trio
from starlette.applications import Starlette

from p2pd.daemon.api import _service_error
from p2pd.daemon.ethersync_api import Spaces, ethersync_routes
from p2pd.daemon.service import Service, ServiceError
from p2pd.daemon.sse import Subscribers
from p2pd.identity import load_or_create
from p2pd.node import NodeConfig
from tests.integration.conftest import LOOPBACK_ONLY, fresh_passphrase
from tests.integration.test_space_loopback import ENTRY

#: Seconds a peer process may take to connect, sync and exit.
PEER_WAIT = 60.0
FILE_SIZE = 1024 * 1024 + 7


async def space_command(base: Path, phrase: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run ``space ARGS`` as a process with its dirs in ``base``; its exit code and events.

    Each peer process has its own identity: a node that restarts with the same static
    key is not yet seen as a new session by a peer that still holds the old one.
    """
    dirs = ["--state-dir", str(base / "s"), "--data-dir", str(base / "d")]
    dirs += ["--download-dir", str(base / "dl")]
    command = [sys.executable, *ENTRY, "space", *args, "--json", *dirs, *LOOPBACK_ONLY]
    with trio.fail_after(PEER_WAIT):
        done = await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=dict(os.environ, P2PD_PASSPHRASE=phrase),
        )
    lines = done.stdout.decode().splitlines()
    return done.returncode, [json.loads(line) for line in lines]


async def test_join_publish_list_and_stream(tmp_path: Path) -> None:
    phrase = fresh_passphrase()
    state = tmp_path / "daemon"
    identity = load_or_create(state)
    config = NodeConfig(interfaces=["lo"], mdns=False, portmap=False)
    source = tmp_path / "payload.bin"
    data = os.urandom(FILE_SIZE)
    source.write_bytes(data)
    async with trio.open_nursery() as nursery:
        service = Service(identity, config, nursery)
        spaces = Spaces(
            service, nursery, state, data_dir=tmp_path / "data", download_dir=tmp_path / "dl"
        )
        app = Starlette(
            routes=ethersync_routes(spaces, Subscribers()),
            exception_handlers={ServiceError: _service_error},
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            base = "/v1/ethersync/spaces"
            joined = await client.post(base, json={"passphrase": phrase})
            assert joined.status_code == 201
            space_id = joined.json()["id"]
            assert phrase not in joined.text
            again = await client.post(base, json={"passphrase": phrase})
            assert again.status_code == 200 and again.json()["id"] == space_id
            listed = await client.get(base)
            assert [s["id"] for s in listed.json()["spaces"]] == [space_id]
            posted = await client.post(f"{base}/{space_id}/messages", json={"text": "from api"})
            assert posted.status_code == 201

            # A CLI peer sends a message; it arrives at the daemon's space.
            code, events = await space_command(tmp_path / "sender", phrase, "send", "from cli")
            assert code == 0, events
            cli_author = next(e["author"] for e in events if e["event"] == "published")
            with trio.fail_after(PEER_WAIT):
                while True:
                    rows = (await client.get(f"{base}/{space_id}/messages")).json()["messages"]
                    if {r["text"] for r in rows} == {"from api", "from cli"}:
                        break
                    await trio.sleep(0.1)
            assert cli_author in {r["author"] for r in rows}

            # The daemon publishes a file by path; the CLI peer fetches it.
            published = await client.post(f"{base}/{space_id}/files", json={"path": str(source)})
            assert published.status_code == 201
            file_id = published.json()["id"]
            code, events = await space_command(tmp_path / "getter", phrase, "get", file_id[:12])
            assert code == 0, events
            saved = next(e for e in events if e["event"] == "saved")
            assert hashlib.sha256(Path(saved["path"]).read_bytes()).digest() == (
                hashlib.sha256(data).digest()
            )
            files = (await client.get(f"{base}/{space_id}/files")).json()["files"]
            assert [(f["id"], f["complete"]) for f in files] == [(file_id, True)]

            # The event stream replays the space's events from the start.
            text = await read_stream(app, f"{base}/{space_id}/events", "from cli")
            assert "event: message" in text and "from cli" in text

            bad = await client.get(f"{base}/{'0' * 32}/messages")
            assert bad.status_code == 404 and bad.json()["error"]["code"] == "no_space"
            left = await client.delete(f"{base}/{space_id}")
            assert left.status_code == 204
            assert (await client.get(base)).json()["spaces"] == []
        await spaces.close()
        nursery.cancel_scope.cancel()


async def read_stream(app: Starlette, path: str, until: str) -> str:
    """Run the SSE route as raw ASGI (``?since=0``) until ``until`` has been sent."""
    chunks: list[bytes] = []
    seen = trio.Event()

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: MutableMapping[str, Any]) -> None:
        chunks.append(message.get("body", b""))
        if until.encode() in b"".join(chunks):
            seen.set()

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"since=0",
        "headers": [(b"host", b"127.0.0.1")],
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "root_path": "",
        "http_version": "1.1",
    }
    async with trio.open_nursery() as nursery:

        async def run_app() -> None:
            await app(scope, receive, send)

        nursery.start_soon(run_app)
        with trio.fail_after(PEER_WAIT):
            await seen.wait()
        nursery.cancel_scope.cancel()
    return b"".join(chunks).decode()
