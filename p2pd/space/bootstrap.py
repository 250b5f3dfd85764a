"""Bootstrap peers of ``p2pd space``: addresses tried at every start, kept in the state dir.

A small JSON list of ``"HOST:PORT"`` strings in :data:`BOOTSTRAP_FILE`, written
atomically (temporary file, then rename).  No secret is stored: an address alone lets
nobody into a space.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from p2pd.errors import LocalError
from p2pd.paths import ensure_state_dir

#: File name in the state directory.
BOOTSTRAP_FILE = "space-peers.json"
#: Most bootstrap peers kept: each is raced at every start.
MAX_BOOTSTRAP = 64


def load(state_dir: Path) -> list[str]:
    """The saved addresses, in the order they were added (empty if none)."""
    path = state_dir / BOOTSTRAP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise LocalError(f"cannot read {path}: {exc}; fix or remove it") from None
    if not isinstance(data, list) or not all(isinstance(a, str) for a in data):
        raise LocalError(f"{path} is not a list of HOST:PORT strings; fix or remove it")
    return list(data)


def save(state_dir: Path, addresses: list[str]) -> None:
    ensure_state_dir(state_dir)
    path = state_dir / BOOTSTRAP_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(addresses, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def add(state_dir: Path, address: str) -> bool:
    """Remember ``address``; False if it was already there."""
    addresses = load(state_dir)
    if address in addresses:
        return False
    if len(addresses) >= MAX_BOOTSTRAP:
        raise LocalError(f"at most {MAX_BOOTSTRAP} bootstrap peers; remove one first")
    save(state_dir, [*addresses, address])
    return True


def remove(state_dir: Path, address: str) -> bool:
    """Forget ``address``; False if it was not there."""
    addresses = load(state_dir)
    if address not in addresses:
        return False
    save(state_dir, [a for a in addresses if a != address])
    return True
