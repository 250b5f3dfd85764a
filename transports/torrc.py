"""Extra torrc options for the tor p2pd launches (``--tor-config FILE``): bridges, a
pluggable transport, or the lab's private network.

Why its own parser: :class:`transports.tor.TorLauncher` hands stem a mapping, and a user's
file must not quietly replace the options p2pd relies on (its data directory, where tor
writes its control port, cookie authentication, the SOCKS port with extended errors).
Those are refused with one clear line instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from p2pd.errors import LocalError

TorrcValue = str | list[str]

#: Options p2pd sets on the tor it launches (see TorLauncher._launch); a file may not.
RESERVED: Final = frozenset(
    {"datadirectory", "socksport", "controlport", "controlportwritetofile", "cookieauthentication"}
)


def parse_torrc(text: str, *, source: str = "torrc") -> dict[str, TorrcValue]:
    """``Key value`` lines (``#`` comments, blank lines) as a mapping; repeated keys
    become lists in file order.  LocalError names the line of a reserved or bad option."""
    options: dict[str, TorrcValue] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition(" ")
        if not key.isascii() or not key.replace("_", "").isalnum():
            raise LocalError(f"{source}:{number}: not a torrc option: {key!r}")
        if key.lower() in RESERVED:
            raise LocalError(f"{source}:{number}: p2pd sets {key} itself; remove that line")
        value = value.strip()
        existing = options.get(key)
        if existing is None:
            options[key] = value
        elif isinstance(existing, str):
            options[key] = [existing, value]
        else:
            existing.append(value)
    return options


def read_torrc(path: Path) -> dict[str, TorrcValue]:
    """:func:`parse_torrc` of a file; LocalError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalError(f"cannot read tor config {path}: {exc}") from None
    return parse_torrc(text, source=str(path))
