"""One error tree for p2pd, split by whose fault it was.

Why: a driver must tell "the network sent garbage" (drop it, count it, carry on)
from "the user or the calling code asked for something impossible" (say so in
one clear line and exit with a code).  As in h11 and wsproto, the *type* says
whose fault it was, so callers never inspect messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class P2pdError(Exception):
    """Root of every error p2pd raises on purpose."""


class LocalError(P2pdError):
    """The local user or calling code misused p2pd; report it, do not retry."""

    exit_code: int = 2


class WeakPassphraseError(LocalError):
    """The passphrase is empty or too easy to guess to protect a rendezvous."""


class PassphraseSourceError(LocalError):
    """No passphrase could be read from the source the user named."""


class StateDirError(LocalError):
    """The state directory or a file in it cannot be used safely."""


class RemoteProtocolError(P2pdError):
    """Bytes from the network are malformed, forged, replayed or unexpected.

    Cores raise it; drivers catch it, count it under :attr:`reason` and drop the
    packet.  It never carries secret material, and what it tells a remote
    attacker is never more than "no".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadFrame(RemoteProtocolError):
    """A packet failed parsing, authentication or a replay/lifetime check."""


@contextlib.contextmanager
def single_errors() -> Iterator[None]:
    """Raise a nursery's lone error (a LocalError, say) as itself, not in a group, so the
    command line reports it in one line; several errors stay grouped."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
