"""The command line's view of a running daemon: find it, authenticate, call its API.

Why: when a daemon runs on a state directory, ``p2pd send``, ``listen`` and ``status``
go through it (one node per passphrase on the machine, shared sessions and counters)
instead of starting a node of their own.  The daemon announces itself in
``STATE_DIR/daemon.json`` and writes its bearer token to ``STATE_DIR/api-token`` (0600);
only a user who can read the state directory can drive it.  The API contract is in
docs/daemon.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from p2pd.errors import LocalError, P2pdError

#: File in which a running daemon announces its pid and API address.
DAEMON_FILE = "daemon.json"
#: File holding the API bearer token.
TOKEN_FILE = "api-token"  # noqa: S105  (a file name, not a secret)
#: The status of a POST that created the session (an existing one answers 200).
HTTP_CREATED = 201
#: Seconds to wait for an API answer that does not wait on the network.
API_TIMEOUT = 10.0


class DaemonError(P2pdError):
    """The daemon answered with an error; ``code`` is its stable error code."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.exit_code = 3 if code in {"no_peer", "timeout"} else 2 if status < 500 else 1


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text("ascii")
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass(slots=True)
class DaemonClient:
    """A connection to the daemon of one state directory."""

    api: str
    token: str
    pid: int

    @classmethod
    def discover(cls, state_dir: Path) -> DaemonClient | None:
        """The running daemon of ``state_dir``, or None when there is none."""
        try:
            info = json.loads((state_dir / DAEMON_FILE).read_text("utf-8"))
            token = (state_dir / TOKEN_FILE).read_text("utf-8").strip()
            pid, api = int(info["pid"]), str(info["api"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not alive(pid):
            return None
        return cls(api=api, token=token, pid=pid)

    def _client(self, timeout: float | None = API_TIMEOUT) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.api.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=self.api[len("unix:") :])
            return httpx.Client(
                base_url="http://localhost", headers=headers, transport=transport, timeout=timeout
            )
        return httpx.Client(base_url=self.api, headers=headers, timeout=timeout)

    def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = API_TIMEOUT,
        body: dict[str, Any] | None = None,
    ) -> Any:
        try:
            with self._client(timeout) as client:
                response = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise LocalError(f"cannot reach the daemon at {self.api}: {exc}") from None
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "internal", f"the daemon answered HTTP {response.status_code}"
        raise DaemonError(code, message, response.status_code)

    def _call(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = API_TIMEOUT,
        body: dict[str, Any] | None = None,
    ) -> Any:
        response = self._request(method, path, timeout=timeout, body=body)
        return response.json() if response.content else None

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/status"))

    def join(self, passphrase: str) -> tuple[dict[str, Any], bool]:
        """Join (idempotently) the session of ``passphrase``: (session, newly created)."""
        response = self._request("POST", "/v1/sessions", body={"passphrase": passphrase})
        return dict(response.json()), response.status_code == HTTP_CREATED

    def send(self, session_id: str, text: str, wait_peer: float) -> dict[str, Any]:
        body = {"text": text, "wait_peer": wait_peer, "wait_delivery": True}
        return dict(
            self._call("POST", f"/v1/sessions/{session_id}/send", body=body, timeout=wait_peer + 60)
        )

    def shutdown(self) -> None:
        self._call("POST", "/v1/shutdown")

    def events(self, session_id: str, since: int | None = None) -> Iterator[dict[str, Any]]:
        """The session's events as they come (Server-Sent Events), from after ``since``."""
        headers = {"Last-Event-ID": str(since)} if since is not None else {}
        try:
            with (
                self._client(timeout=None) as client,
                client.stream("GET", f"/v1/sessions/{session_id}/events", headers=headers) as resp,
            ):
                if not resp.is_success:
                    resp.read()
                    raise DaemonError(
                        "bad_request", f"events: HTTP {resp.status_code}", resp.status_code
                    )
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        yield dict(json.loads(line[5:].strip()))
        except httpx.HTTPError as exc:
            raise LocalError(f"lost the daemon's event stream: {exc}") from None
