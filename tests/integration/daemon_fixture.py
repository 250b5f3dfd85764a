"""Real ``p2pd daemon`` processes for integration tests, and a client for their API.

``start_daemon(state_dir)`` runs ``python -m p2pd daemon --foreground --api 127.0.0.1:0``
with LAN discovery restricted to ``lo``, waits until ``daemon.json`` names this process
and ``/v1/status`` answers, and returns a :class:`Daemon` handle.  The ``daemons``
fixture is a factory that stops (SIGTERM, then kill) whatever is left at the end of the
test; ``daemon`` is one ready daemon.  Use them from another test module with::

    from tests.integration.daemon_fixture import daemon_fixture, daemons_fixture  # noqa: F401

(the fixtures are registered under the names ``daemon`` and ``daemons``).

Each daemon's log (JSON lines) goes to ``STATE_DIR.log`` beside its state directory, so
a test can read it and a full pipe can never block the daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import LOOPBACK_ONLY

#: Longest wait for a daemon to announce itself and answer.
START_TIMEOUT = 20.0
#: Interval between checks while waiting for the daemon (spent waiting on the process,
#: so a daemon that dies early is noticed at once).
POLL = 0.02
#: Longest wait for a daemon to exit after SIGTERM.
STOP_TIMEOUT = 10.0


@dataclass
class Daemon:
    """A running daemon: its process, state directory, API address and token."""

    proc: subprocess.Popen[bytes]
    state_dir: Path
    base_url: str
    token: str
    log_path: Path
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, *, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """An httpx client with the bearer token (``token=""`` for none); TCP or unix socket."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.base_url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=self.base_url.removeprefix("unix:"))
            client = httpx.Client(
                base_url="http://localhost", headers=headers, timeout=timeout, transport=transport
            )
        else:
            client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.clients.append(client)
        return client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.get(path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.post(path, json=body, **kwargs)

    def join(self, passphrase: str) -> str:
        """Join the passphrase's session; its id."""
        response = self.post("/v1/sessions", {"passphrase": passphrase})
        assert response.status_code in (200, 201), response.text
        return str(response.json()["id"])

    def rss_kib(self) -> int:
        """Resident memory of the daemon process (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the daemon and wait for it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def daemon_command(state_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "p2pd", "daemon", "--foreground",
        "--state-dir", str(state_dir), "--api", "127.0.0.1:0", *LOOPBACK_ONLY, *args,
    ]  # fmt: skip


def _announced(state_dir: Path, pid: int) -> str | None:
    try:
        info = json.loads((state_dir / "daemon.json").read_text())
    except (OSError, ValueError):
        return None
    return str(info["api"]) if info.get("pid") == pid else None


def start_daemon(state_dir: Path, *args: str, timeout: float = START_TIMEOUT) -> Daemon:
    """Start a daemon on ``state_dir`` and wait until its API answers."""
    log_path = state_dir.with_name(state_dir.name + ".log")
    env = {k: v for k, v in os.environ.items() if k != "P2PD_PASSPHRASE"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            daemon_command(state_dir, *args),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            code = proc.wait(timeout=POLL)
        except subprocess.TimeoutExpired:
            pass
        else:
            raise AssertionError(f"daemon exited {code}: {log_path.read_text()}")
        api = _announced(state_dir, proc.pid)
        if api is None:
            continue
        token = (state_dir / "api-token").read_text().strip()
        handle = Daemon(proc, state_dir, api, token, log_path)
        try:
            if handle.get("/v1/status").status_code == 200:
                return handle
        except httpx.TransportError:
            continue
    proc.kill()
    proc.wait()
    raise AssertionError(f"daemon not ready within {timeout} s: {log_path.read_text()}")


class Daemons:
    """Starts daemons in a test's temporary directory and stops them all at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Daemon] = []

    def start(self, name: str = "d", *args: str) -> Daemon:
        handle = start_daemon(self.tmp / name, *args)
        self.started.append(handle)
        return handle

    def close(self) -> None:
        for handle in self.started:
            handle.close()


@pytest.fixture(name="daemons")
def daemons_fixture(tmp_path: Path) -> Iterator[Daemons]:
    """A factory of real daemons (``daemons.start("a")``), stopped at the end."""
    factory = Daemons(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(name="daemon")
def daemon_fixture(daemons: Daemons) -> Daemon:
    """One running daemon."""
    return daemons.start("d")
