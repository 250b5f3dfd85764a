"""One daemon per state directory: the flock, the token file and ``daemon.json``.

Theory of operation
-------------------
``STATE_DIR/daemon.lock`` is opened and locked with ``fcntl.flock(LOCK_EX | LOCK_NB)``
before the daemon touches anything else; the kernel releases the lock when the process
dies, however it dies, so a crashed daemon never blocks the next one.  The holder writes
its pid into the lock file, so a second daemon can say who holds it even before
``daemon.json`` exists.

While holding the lock the daemon writes, each atomically (a 0600 temporary file created
with ``O_EXCL``, fsynced, then ``rename``d over the target, so a reader sees the old file
or the new one, never half of one, and never a moment where it is readable by others):

* ``api-token``: 32 random bytes as hex, new at every start, so a token leaked from an
  earlier run is worthless;
* ``daemon.json``: ``{"pid", "api", "version"}``, how clients find the API.  It is removed
  at a clean exit; a stale one (its pid dead) is ignored by clients.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Any

from p2pd.errors import StateDirError

#: The file whose flock marks the state directory as owned by a running daemon.
LOCK_FILE = "daemon.lock"
#: Where the running daemon announces its pid and API address.
DAEMON_FILE = "daemon.json"
#: The API bearer token (hex), readable only by the owner.
TOKEN_FILE = "api-token"  # noqa: S105  (a file name, not a secret)
#: Random bytes in a token: 256 bits, beyond guessing through a rate-unlimited local API.
TOKEN_BYTES = 32
#: Mode of every file the daemon writes: owner only.
PRIVATE_MODE = 0o600
#: Bytes of the lock file read to learn the holder's pid (a decimal pid is far shorter).
PID_READ_LIMIT = 32


class AlreadyRunning(StateDirError):
    """Another daemon holds the state directory's lock (exit code 2)."""


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class DaemonLock:
    """The exclusive claim of one daemon on one state directory; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`AlreadyRunning` naming the holder's pid."""
        path = self.state_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_MODE)
        except OSError as exc:
            raise StateDirError(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder is not None else ""
            raise AlreadyRunning(f"a daemon is already running on {self.state_dir}{who}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def write_token(self) -> str:
        """A fresh token, written to ``api-token`` (0600, atomically); returns it."""
        token = secrets.token_hex(TOKEN_BYTES)
        write_private(self.state_dir / TOKEN_FILE, token.encode("ascii") + b"\n")
        return token

    def announce(self, info: dict[str, Any]) -> None:
        """Write ``daemon.json`` (0600, atomically)."""
        data = json.dumps(info, sort_keys=True).encode("utf-8") + b"\n"
        write_private(self.state_dir / DAEMON_FILE, data)

    def release(self) -> None:
        """Remove ``daemon.json`` and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.state_dir / DAEMON_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, PID_READ_LIMIT, 0).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
