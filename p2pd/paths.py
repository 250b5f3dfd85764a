"""Where p2pd keeps its state, so several nodes can run side by side on one host.

Order of precedence: an explicit ``--state-dir``, then ``P2PD_STATE_DIR``, then the XDG
state directory (``$XDG_STATE_HOME/p2pd``, usually ``~/.local/state/p2pd``).  The
directory is created 0700: it holds the identity key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

from p2pd.errors import StateDirError

#: Environment variable naming the state directory.
STATE_DIR_ENV = "P2PD_STATE_DIR"
#: Permission bits of the state directory: only its owner may enter it.
STATE_DIR_MODE = 0o700


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The state directory to use, without creating it."""
    if explicit:
        return Path(explicit).expanduser()
    from_env = os.environ.get(STATE_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path(platformdirs.user_state_dir("p2pd", appauthor=False))


def ensure_state_dir(path: Path) -> Path:
    """Create ``path`` 0700 if needed and refuse one that others can write to."""
    try:
        path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise StateDirError(f"cannot use state directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"state directory {path} is not a directory")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(
            f"state directory {path} is writable by other users; run: chmod 700 {path}"
        )
    return path
