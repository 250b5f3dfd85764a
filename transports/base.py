"""What every transport hands the node: candidate addresses, and the interface that finds them.

Theory of operation
-------------------
A transport's only job is discovery: it finds addresses at which a peer *might* answer
(a LAN beacon's source, an mDNS record, a NAT mapping, a relay allocation, an onion
service) and emits each one as a :class:`Candidate`.  It never authenticates anyone; the
node races the candidates (:mod:`transports.racer`) and the Noise handshake on the one UDP
socket decides who is real.  So a forged or stale candidate costs at most a few handshake
packets, never trust.

``path`` names how a candidate was found and fixes its priority in the race, cheapest and
most direct first (:data:`PATHS`).  ``found_at`` is the node's monotonic clock (the trio
clock), never wall time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

from p2pd.errors import LocalError

#: How a candidate was found.
Path = Literal["lan", "mapped", "direct", "punched", "relay", "tcp", "tor"]

#: Every path, best first: the racer tries better paths earlier.  LAN first (one hop, no
#: middlebox), then a port mapping the router granted, a directly configured address, a
#: hole-punched NAT path, then the relayed and tunnelled paths that cost a third party.
PATHS: tuple[Path, ...] = get_args(Path)

#: A path's rank in the race: lower starts first.
PATH_RANK: dict[str, int] = {path: rank for rank, path in enumerate(PATHS)}

#: An IPv4 or IPv6 ``(host, port)`` pair, as the node's socket module uses.
Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Candidate:
    """An address at which a peer may answer, how it was found, and when (monotonic)."""

    addr: Addr
    path: Path
    found_at: float

    def __post_init__(self) -> None:
        if self.path not in PATH_RANK:
            raise LocalError(f"unknown candidate path {self.path!r}; expected one of {PATHS}")

    @property
    def rank(self) -> int:
        """The path's priority: lower is tried first."""
        return PATH_RANK[self.path]


#: What a transport calls for each candidate; synchronous, called from the trio thread.
Emit = Callable[[Candidate], None]


class Transport(Protocol):
    """A source of candidates, run by the node inside its nursery until cancelled."""

    #: Short name for logs and counters (``"lan"``, ``"upnp"``, ``"relay"``...).
    name: str

    async def run(self, emit: Emit) -> None:
        """Discover candidates and ``emit`` each one, until cancelled.

        Must not raise on network trouble (count it and carry on, or return quietly when
        the transport cannot work here); cancellation must release everything promptly.
        """
        ...
